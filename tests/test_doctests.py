"""Every ``>>>`` example in rnnkit's docstrings runs, and prints what it says (``doctest``).

Each module's examples run in the module's own namespace plus ``torch`` and ``rnnkit``, from a scratch
directory (examples that save files write there), with a fixed seed. A module without examples is no test.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest
import torch

import rnnkit


def _modules() -> list[str]:
    names = ["rnnkit"]
    for info in pkgutil.walk_packages(rnnkit.__path__, "rnnkit."):
        if info.name.endswith("__main__"):
            continue  # (running it is the CLI: `python -m rnnkit`)
        names.append(info.name)
    return sorted(names)


def _tests(name: str) -> list[doctest.DocTest]:
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    return [t for t in finder.find(module, name, extraglobs={"torch": torch, "rnnkit": rnnkit}) if t.examples]


WITH_EXAMPLES = [name for name in _modules() if _tests(name)]


def test_the_examples_are_found():
    # The engine's and the layers' docstrings hold examples: finding none means the finder is broken.
    assert {"rnnkit.engine", "rnnkit.layers.lstm", "rnnkit.runners"} <= set(WITH_EXAMPLES)


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    failures = []
    for test in _tests(name):
        runner.run(test, out=failures.append)
    assert not failures, "".join(failures)
