"""The README's layout table matches the folders.

The table is the one under ``## Layout``; its first column names paths in backticks. Rule:

* every path it names exists (a name ending in ``/`` is a folder, any other a file), relative to the repository;
* every top-level package (a folder with an ``__init__.py``) and every public top-level module (``*.py`` not
  starting with ``_``) under ``src/rnnkit`` is named. ``__init__.py``, ``__main__.py`` and private single modules
  (``_version.py``, ...) need no row, though the table may name them; then they must exist.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "rnnkit"


def _layout_paths() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## Layout\n(.*?)(?=^## |\Z)", readme, re.S | re.M)
    assert section, "README.md has no '## Layout' section"
    rows = [line for line in section.group(1).splitlines() if line.startswith("|")][2:]  # after header and rule
    assert rows, "the layout section has no table"
    return [path for row in rows for path in re.findall(r"`([^`]+)`", row.split("|")[1])]


def _required() -> set[str]:
    names = set()
    for entry in PACKAGE.iterdir():
        if entry.is_dir() and (entry / "__init__.py").exists():
            names.add(f"src/rnnkit/{entry.name}/")
        elif entry.suffix == ".py" and not entry.name.startswith("_"):
            names.add(f"src/rnnkit/{entry.name}")
    return names


def test_the_table_is_read():
    paths = _layout_paths()
    assert "src/rnnkit/cells/" in paths and "tests/" in paths


def test_every_path_the_table_names_exists():
    missing = [p for p in _layout_paths() if not ((ROOT / p).is_dir() if p.endswith("/") else (ROOT / p).is_file())]
    assert missing == [], f"README's layout names paths that do not exist: {missing}"


def test_every_top_level_package_and_public_module_has_a_row():
    absent = sorted(_required() - set(_layout_paths()))
    assert absent == [], f"README's layout table lacks a row for: {absent}"
