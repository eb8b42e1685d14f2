"""The README's "Adding a cell", followed to the letter: its cell file and its one table entry, copied from the page.

The cell file goes into a scratch folder added to the ``rnnkit.cells`` package's path (so that it is a module of
the package, as a file under ``src/rnnkit/cells/`` would be) and the package's own discovery imports it; the
table entry runs in the namespace of ``rnnkit/engine/lowering.py``, where the README says it goes. Then the new
cell must resolve through the TF1 namespace, ``rnnkit.cells``, ``rnnkit`` and the CLI's parser, route to the fused
kernels, and equal the reference loop over its own ``call`` (float64, 1e-10; outputs, final state and gradients)
and the hand-written step ``relu([x, h] @ kernel + bias)``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

import rnnkit
from cell_registry import temporary_cells
from rnnkit import engine
from rnnkit.cli.tf_expr import parse_cell
from rnnkit.engine import lowering

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks() -> tuple[str, str]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Adding a cell") :]
    section = section[: section.index("\n## ", 1)] if "\n## " in section[1:] else section
    cell_file, table_entry = re.findall(r"```\n(.*?)```", section, flags=re.S)[:2]
    return cell_file, table_entry


@pytest.fixture
def elman(tmp_path):
    cell_file, table_entry = _blocks()
    assert cell_file.startswith("# src/rnnkit/cells/elman.py") and "src/rnnkit/engine/lowering.py" in table_entry
    (tmp_path / "elman.py").write_text(cell_file, encoding="utf-8")
    rnnkit.cells.__path__.append(str(tmp_path))
    before = dict(lowering.LOWERINGS)
    try:
        with temporary_cells():
            rnnkit.cells._import_cell_modules()
            exec(compile(table_entry, "README: Adding a cell", "exec"), dict(vars(lowering)))
            yield rnnkit.cells.ElmanCell
    finally:
        lowering.LOWERINGS.clear()
        lowering.LOWERINGS.update(before)
        rnnkit.cells.__path__.remove(str(tmp_path))
        sys.modules.pop("rnnkit.cells.elman", None)
        if hasattr(rnnkit.cells, "elman"):
            delattr(rnnkit.cells, "elman")


def test_the_new_cell_is_everywhere_the_registry_reaches(elman):
    assert elman.__module__ == "rnnkit.cells.elman"
    assert rnnkit.contrib.rnn.ElmanCell is elman and rnnkit.ElmanCell is elman
    assert not hasattr(rnnkit.nn.rnn_cell, "ElmanCell")  # it declared contrib.rnn only
    assert type(parse_cell("tf.contrib.rnn.ElmanCell(6)")) is elman
    assert type(lowering.lowering_for(elman(6, input_size=3))).__name__ == "RNNSpec"


def test_the_new_cell_runs_fused_and_equals_the_reference_loop(elman):
    torch.manual_seed(0)
    cell = elman(6, input_size=3, dtype=torch.float64)
    x = torch.randn(5, 4, 3, dtype=torch.float64)
    lengths = torch.tensor([5, 2, 0, 4])
    assert engine.explain(cell, x, lengths) == ["fused"]

    def run(backend):
        with engine.use(backend):
            out, h = rnnkit.dynamic_rnn(cell, x, sequence_length=lengths, time_major=True)
        grads = torch.autograd.grad(out.pow(2).sum() + h.sum(), [cell.kernel, cell.bias])
        return [out, h, *grads]

    for got, want in zip(run("fused"), run("reference"), strict=True):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)

    # the step by hand: h' = relu([x, h] @ kernel + bias), zero outputs and a held state past each length
    out, h = run("fused")[:2]
    state = torch.zeros(4, 6, dtype=torch.float64)
    for t in range(5):
        new = torch.relu(torch.cat([x[t], state], 1) @ cell.kernel + cell.bias)
        valid = (t < lengths).unsqueeze(1)
        torch.testing.assert_close(out[t], torch.where(valid, new, 0.0), atol=1e-12, rtol=1e-12)
        state = torch.where(valid, new, state)
    torch.testing.assert_close(h, state, atol=1e-12, rtol=1e-12)
