"""The layering the README promises, checked on the source: no import circle, no private name reached across
packages, small modules.

The import graph is read from the source with ``ast`` (every ``import`` and ``from ... import``, at any depth of
the module, since a function-level import closes a circle as surely as a top-level one). An edge goes to the
module named, or to the submodule when ``from package import name`` names one. Privacy follows Python's
convention: a name or module starting with ``_`` belongs to the package that holds it, and may be imported
from anywhere inside that package (``rnnkit._structure`` by all of ``rnnkit``; ``rnnkit.engine._ext`` by
``rnnkit.engine`` only).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = SRC / "rnnkit"
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not _is_package(importer):
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(name: str) -> list[tuple[str, str | None, int]]:
    """``(module imported, name taken from it or None, line)`` for every import of an rnnkit module in ``name``."""
    tree = ast.parse(MODULES[name].read_text(), str(MODULES[name]))
    # A module-level __getattr__ (PEP 562) that resolves a moved public name on first use is the one import allowed
    # to point back: it keeps old code working (``rnnkit.convert.save``, now ``rnnkit.saving.save``) without making
    # the package depend on the new one when it loads. Anything else it did would still be read.
    body = [n for n in tree.body if not (isinstance(n, ast.FunctionDef) and n.name == "__getattr__" and _aliases(n))]
    out = []
    for node in (n for top in body for n in ast.walk(top)):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names if a.name.split(".")[0] == "rnnkit"]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(name, node)
            if target.split(".")[0] != "rnnkit":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.append((sub, None, node.lineno) if sub in MODULES else (target, alias.name, node.lineno))
    return out


def _aliases(fn: ast.FunctionDef) -> bool:
    """Whether ``fn`` only imports and returns attributes (a lazy alias), nothing else."""
    allowed = (ast.If, ast.Return, ast.Raise, ast.ImportFrom, ast.Import, ast.Expr)
    return all(isinstance(n, allowed) for n in ast.walk(fn) if isinstance(n, ast.stmt) and n is not fn)


def _graph() -> dict[str, set[str]]:
    """Module -> the modules its imports run: each one named, and, for one in another package, the packages above
    it that the importer is not inside (importing ``a.b.c`` runs ``a/b/__init__`` first)."""
    graph = {}
    for name in MODULES:
        here = _package(name)
        edges = set()
        for target, _, _ in _imports(name):
            if target not in MODULES:
                continue
            edges.add(target)
            parts = target.split(".")
            for k in range(1, len(parts)):
                package = ".".join(parts[:k])
                if not (here == package or here.startswith(package + ".")):
                    edges.add(package)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), or of one importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def _owner(module: str, name: str | None) -> str | None:
    """The package a private module or name belongs to, or ``None`` when it is public."""
    parts = module.split(".")
    for k, part in enumerate(parts[1:], start=1):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:k])
    if name and name.startswith("_") and not name.startswith("__"):
        return module if _is_package(module) else ".".join(parts[:-1])
    return None


def _package(name: str) -> str:
    return name if _is_package(name) else name.rpartition(".")[0]


def test_the_graph_reader_sees_a_known_edge_and_a_private_import():
    # The checks below are only as good as the reader: it must see these two imports of the engine.
    assert "rnnkit.plan" not in MODULES and "rnnkit.engine.plan" in MODULES
    assert "rnnkit._structure" in _graph()["rnnkit.runners"]
    # importing rnnkit.convert.tf_cells from rnnkit.saving runs rnnkit/convert/__init__ first
    assert {"rnnkit.convert", "rnnkit.convert.tf_cells"} <= _graph()["rnnkit.saving._file"]
    assert _owner("rnnkit.engine._ext", "load") == "rnnkit.engine"
    assert _owner("rnnkit.cells.lstm", "_clip") == "rnnkit.cells"
    assert _owner("rnnkit._structure", "flatten") == "rnnkit"
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_no_import_circle():
    assert _cycles(_graph()) == []


def test_no_private_name_imported_across_packages():
    offenders = []
    for name in MODULES:
        here = _package(name)
        for target, imported, line in _imports(name):
            owner = _owner(target, imported)
            if owner is not None and not (here == owner or here.startswith(owner + ".")):
                what = f"{target}.{imported}" if imported else target
                offenders.append(f"{MODULES[name].relative_to(SRC)}:{line} imports {what} (private to {owner})")
    assert offenders == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_is_small(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name].relative_to(SRC)} has {lines} lines (at most {MAX_LINES})"


def test_no_module_is_named_like_a_package():
    # A newcomer looking for "the layers" or "the cells" should find one room: a module elsewhere named after a
    # package (as engine/layers.py beside layers/ was) says otherwise.
    packages = {name.rpartition(".")[2] for name in MODULES if _is_package(name)}
    clashes = [
        str(MODULES[name].relative_to(SRC))
        for name in MODULES
        if not _is_package(name) and name.rpartition(".")[2] in packages
    ]
    assert clashes == []


def test_import_rnnkit_leaves_the_compiler_s_heavy_imports_for_a_compile():
    # torch.fx's symbolic shapes import sympy (about 0.3 s and 40,000 objects, which every later garbage collection
    # walks): only tracing a user's cell needs them, so `import rnnkit` must not load them.
    import subprocess
    import sys

    heavy = ("sympy", "torch.fx.experimental.symbolic_shapes")
    code = f"import sys, rnnkit; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
