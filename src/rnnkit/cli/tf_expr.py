"""Parse a TF1 cell expression such as ``MultiRNNCell([BasicLSTMCell(128), BasicLSTMCell(128)])`` safely.

The text is parsed with ``ast`` and interpreted node by node; nothing is ever ``eval``-ed. Allowed:

* calls of the rnnkit cell constructors (every cell, stack and wrapper of the cell registry:
  ``BasicRNNCell``, ``BasicLSTMCell``, ``LSTMCell``, ``GRUCell``, ``LayerNormBasicLSTMCell``, ``MultiRNNCell``,
  ``DropoutWrapper``, ``ResidualWrapper``, ...), also spelled with a module path (``tf.nn.rnn_cell.BasicLSTMCell``,
  ``tf.contrib.rnn.LSTMCell``, ``rnnkit.GRUCell``);
* literal arguments: numbers, strings (``activation="relu"``), ``True``/``False``/``None``, lists and tuples;
* ``[cell(...) for _ in range(n)]`` to repeat a fresh cell ``n`` times, and ``[cell(...)] * n`` for one cell
  object repeated (its layers share weights, as in TF1).

Example::

    >>> cell = parse_cell("MultiRNNCell([BasicLSTMCell(128) for _ in range(2)])")
    >>> cell.state_size
    (LSTMStateTuple(c=128, h=128), LSTMStateTuple(c=128, h=128))
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from typing import Any

from .. import cells

__all__ = ["parse_cell", "CONSTRUCTORS"]


class _Constructors(Mapping[str, type]):
    """The cell classes an expression may call, by name: the registry's cells, stacks and wrappers, read at
    lookup time (a cell registered after import is callable too)."""

    KINDS = ("leaf", "stack", "wrapper")

    def _entries(self) -> dict[str, type]:
        return {e.name: e.cls for e in cells.cell_entries(self.KINDS)}

    def __getitem__(self, name: str) -> type:
        return self._entries()[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries()

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries())

    def __len__(self) -> int:
        return len(self._entries())

    def __repr__(self) -> str:
        return f"CONSTRUCTORS({sorted(self)})"


CONSTRUCTORS: Mapping[str, type] = _Constructors()

# Module paths under which TF code names the cells: tf.nn.rnn_cell.X, tf.contrib.rnn.X, tf.compat.v1.nn.rnn_cell.X.
_PATH_PARTS = {"tf", "rnnkit", "rk", "nn", "rnn_cell", "contrib", "rnn", "compat", "v1"}
_MAX_REPEAT = 1000


class _Interpreter:
    def __init__(self, text: str):
        self.text = text

    def fail(self, node: ast.AST, what: str) -> ValueError:
        col = getattr(node, "col_offset", 0)
        return ValueError(f"cell expression: {what} at column {col + 1}: {ast.get_source_segment(self.text, node)!r}")

    def constructor(self, node: ast.expr) -> Any:
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            raise self.fail(node, "expected a cell constructor name")
        parts.append(node.id)
        name, *path = parts
        if name not in CONSTRUCTORS or any(p not in _PATH_PARTS for p in path):
            raise self.fail(
                node, f"unknown cell constructor {'.'.join(reversed(parts))!r} (known: {sorted(CONSTRUCTORS)})"
            )
        return CONSTRUCTORS[name]

    def value(self, node: ast.expr) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool, type(None))):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = self.value(node.operand)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise self.fail(node, "a sign applies to numbers only")
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [self.value(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.Call):
            fn = self.constructor(node.func)
            if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
                raise self.fail(node, "*args and **kwargs are not supported")
            args = [self.value(a) for a in node.args]
            kwargs = {k.arg: self.value(k.value) for k in node.keywords}
            try:
                return fn(*args, **kwargs)
            except (TypeError, ValueError) as err:
                raise ValueError(f"cell expression: {ast.get_source_segment(self.text, node)}: {err}") from None
        if isinstance(node, ast.ListComp):
            return self.repeat(node)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            return self.times(node)
        raise self.fail(node, f"unsupported syntax ({type(node).__name__}); only constructors and literals")

    def times(self, node: ast.BinOp) -> list:
        """``[cell] * n``: one cell object repeated, whose layers share weights (as in TF1, which warns)."""
        items, n = self.value(node.left), self.value(node.right)
        if not isinstance(items, list) or isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= _MAX_REPEAT:
            raise self.fail(node, f"only [Cell(...)] * n is supported, with an int n in 1..{_MAX_REPEAT}")
        return items * n

    def repeat(self, node: ast.ListComp) -> list:
        gen = node.generators[0] if len(node.generators) == 1 else None
        ok = (
            gen is not None
            and not gen.ifs
            and isinstance(gen.target, ast.Name)
            and isinstance(gen.iter, ast.Call)
            and isinstance(gen.iter.func, ast.Name)
            and gen.iter.func.id == "range"
            and len(gen.iter.args) == 1
            and not gen.iter.keywords
        )
        if not ok:
            raise self.fail(node, "only [Cell(...) for _ in range(n)] comprehensions are supported")
        n = self.value(gen.iter.args[0])
        if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= _MAX_REPEAT:
            raise self.fail(node, f"range(n) needs an int n in 1..{_MAX_REPEAT}")
        return [self.value(node.elt) for _ in range(n)]


def parse_cell(text: str) -> cells.RNNCell:
    """Build the rnnkit cell that ``text`` describes; ``ValueError`` naming the offending part otherwise."""
    if len(text) > 10_000:
        raise ValueError(f"cell expression: at most 10,000 characters, got {len(text):,}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise ValueError(f"cell expression: not a Python expression ({err.msg}, column {err.offset})") from None
    interpreter = _Interpreter(text.strip())
    cell = interpreter.value(tree.body)
    if not isinstance(cell, cells.RNNCell):
        raise ValueError(f"cell expression: expected a cell such as BasicLSTMCell(128), got {type(cell).__name__}")
    return cell
