"""Parameter formulas: the shape of every recurrent parameter tensor, as text and as numbers.

Two vocabularies:

* TF1 cells in the variables ``input_depth``, ``num_units``, ``num_proj``, as each cell class gives them
  (``RNNCell.parameter_formulas``): e.g. an LSTM ``kernel`` is ``(input_depth + num_units, 4*num_units)``,
  columns in gate order i, j, f, o; ``MultiRNNCell`` and the wrappers give their cells' rows.
* torch.nn-style layers (``RNN``, ``LSTM``, ``GRU``) in ``input_size``, ``hidden_size``, ``proj_size``,
  ``num_directions``: ``weight_ih_l0`` is ``(4*hidden_size, input_size)``, rows in gate order i, f, g, o.

Every formula is evaluated against real modules by the callers (``rnnkit.describe.summary``), so a formula
that drifts from the code raises instead of printing a wrong table.

Example::

    >>> rows = layer_rows("rnn", input_size=100, hidden_size=20, num_layers=3)
    >>> [(r.name, r.shape) for r in rows[:2]]
    [('weight_ih_l0', (20, 100)), ('weight_hh_l0', (20, 20))]
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field

from ..cells import MultiRNNCell, RNNCell, RNNCellWrapper

__all__ = ["ParamRow", "evaluate", "cell_rows", "layer_rows", "LAYER_GATES", "cell_layers"]


def evaluate(expr: str, variables: dict[str, int]) -> int:
    """The integer value of a formula such as ``"input_depth + 4*num_units"`` (``+ - *``, names, ints only)."""

    def value(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            return variables[node.id]
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult)):
            a, b = value(node.left), value(node.right)
            return a + b if isinstance(node.op, ast.Add) else a - b if isinstance(node.op, ast.Sub) else a * b
        raise ValueError(f"formula: unsupported expression {ast.dump(node)}")

    return value(ast.parse(expr, mode="eval").body)


def _factor(expr: str) -> str:
    """Parenthesise a sum when it becomes a factor of a product."""
    return f"({expr})" if ("+" in expr or "-" in expr) else expr


@dataclass(frozen=True)
class ParamRow:
    """One parameter tensor: its name, shape, the formula of each dimension, and its gate layout.

    ``formula`` holds one expression per dimension, in the variables ``where``; ``count`` is the product of
    ``shape``. ``layer`` and ``direction`` place the tensor in the stack (``direction`` 1 is backward).
    ``reads`` names the width of the layer's own input where ``where`` does not (a torch.nn-style layer above
    the first reads ``num_directions*hidden_size``, not ``input_size``), e.g. ``"num_directions*hidden_size = 40"``.
    """

    name: str
    shape: tuple[int, ...]
    formula: tuple[str, ...] | None
    blocks: str = ""
    where: dict[str, int] = field(default_factory=dict)
    layer: int = 0
    direction: int = 0
    reads: str = ""

    @property
    def count(self) -> int:
        return math.prod(self.shape)

    @property
    def formula_text(self) -> str:
        """The count as a formula, e.g. ``(input_depth + num_units) * 4*num_units``; ``?`` when unknown."""
        if self.formula is None:
            return "?"
        return " * ".join(_factor(e) for e in self.formula) if len(self.formula) > 1 else self.formula[0]


def _row(
    name: str, formula: tuple[str, ...], where: dict[str, int], blocks: str = "", reads: str = "", **place: int
) -> ParamRow:
    shape = tuple(evaluate(e, where) for e in formula)
    return ParamRow(name, shape, formula, blocks, dict(where), reads=reads, **place)


# ---- TF1 cells ----------------------------------------------------------------------------------------------------
def cell_layers(cell: RNNCell) -> list[tuple[str, RNNCell]]:
    """The layers of a TF cell stack: ``[("cell_0.", c0), ...]`` for a ``MultiRNNCell``, else ``[("", cell)]``."""
    if isinstance(cell, MultiRNNCell):
        return [(f"cell_{k}.", c) for k, c in enumerate(cell.cells)]
    return [("", cell)]


def cell_rows(cell: RNNCell, input_depth: int, prefix: str = "", layer: int = 0) -> list[ParamRow]:
    """Formula rows of every parameter of a TF cell reading inputs of depth ``input_depth``.

    A ``MultiRNNCell`` gives its cells' rows as layers 0, 1, ... (each reading the previous one's
    ``output_size``); a wrapper gives its wrapped cell's rows under ``cell.``; a leaf cell gives its own
    ``parameter_formulas`` (none by default: the caller lists its parameters with an unknown formula).
    """
    if isinstance(cell, MultiRNNCell):
        rows, depth = [], input_depth
        for k, (pre, sub) in enumerate(cell_layers(cell)):
            if cell.first_layer_of(k) == k:  # a cell repeated by `[cell] * n` has its parameters once
                rows += cell_rows(sub, depth, prefix + pre, layer + k)
            depth = sub.output_size
        return rows
    if isinstance(cell, RNNCellWrapper):
        return cell_rows(cell.cell, input_depth, prefix + "cell.", layer)
    return [_row(prefix + n, f, w, b, layer=layer) for n, f, w, b in cell.parameter_formulas(input_depth)]


# ---- torch.nn-style layers ---------------------------------------------------------------------------------------
LAYER_GATES = {
    "rnn": (1, ""),
    "lstm": (4, "rows i|f|g|o"),
    "gru": (3, "rows r|z|n"),
}


def layer_rows(
    mode: str,
    input_size: int,
    hidden_size: int,
    num_layers: int = 1,
    bidirectional: bool = False,
    proj_size: int = 0,
    bias: bool = True,
    peepholes: bool = False,
    layer_norm: bool = False,
) -> list[ParamRow]:
    """Formula rows of a torch.nn-style ``RNN``/``LSTM``/``GRU``, in torch's ``named_parameters`` order.

    Per layer ``k`` and direction (suffix ``_reverse`` for backward): ``weight_ih_l{k}`` ``(G*hidden_size,
    layer_input)``, ``weight_hh_l{k}`` ``(G*hidden_size, proj_size or hidden_size)``, ``bias_ih_l{k}`` and
    ``bias_hh_l{k}`` ``(G*hidden_size,)``, ``weight_hr_l{k}`` ``(proj_size, hidden_size)`` (LSTM with
    ``proj_size > 0``), with ``G`` = 1, 4, 3 for RNN, LSTM, GRU and ``layer_input`` = ``input_size`` for
    layer 0, ``num_directions * (proj_size or hidden_size)`` above. rnnkit's ``LSTM`` options add, after
    those: ``peepholes`` ``weight_c{i,f,o}_l{k}`` ``(hidden_size,)``; ``layer_norm`` ``weight_ln_gates_l{k}``,
    ``bias_ln_gates_l{k}`` ``(4*hidden_size,)`` and ``weight_ln_cell_l{k}``, ``bias_ln_cell_l{k}`` ``(hidden_size,)``.
    """
    if mode not in LAYER_GATES:
        raise ValueError(f"layer_rows: mode must be one of {sorted(LAYER_GATES)}, got {mode!r}")
    n_gates, order = LAYER_GATES[mode]
    dirs = 2 if bidirectional else 1
    w = {"input_size": input_size, "hidden_size": hidden_size, "num_directions": dirs}
    out = "hidden_size"
    if proj_size:
        w["proj_size"], out = proj_size, "proj_size"
    gate_rows = f"{n_gates}*hidden_size" if n_gates > 1 else "hidden_size"
    below = f"num_directions*{out}" if dirs == 2 else out
    above = {k: v for k, v in w.items() if k != "input_size"}  # layers above the first never read input_size
    rows = []
    for k in range(num_layers):
        inp, wk = ("input_size", w) if k == 0 else (below, above)
        reads = "" if k == 0 else f"{below} = {evaluate(below, w)}"
        for d in range(dirs):
            s = f"_l{k}" + ("_reverse" if d else "")
            place = {"layer": k, "direction": d, "reads": reads}
            rows.append(_row(f"weight_ih{s}", (gate_rows, inp), wk, order, **place))
            rows.append(_row(f"weight_hh{s}", (gate_rows, out), wk, order, **place))
            if bias:
                rows.append(_row(f"bias_ih{s}", (gate_rows,), wk, order, **place))
                rows.append(_row(f"bias_hh{s}", (gate_rows,), wk, order, **place))
            if proj_size:
                proj = "h = W_hr (o*tanh(c))"
                rows.append(_row(f"weight_hr{s}", ("proj_size", "hidden_size"), wk, proj, **place))
            for name, shape, note in _layer_extras(peepholes, layer_norm):
                rows.append(_row(f"{name}{s}", shape, wk, note, **place))
    return rows


def _layer_extras(peepholes: bool, layer_norm: bool) -> list[tuple[str, tuple[str, ...], str]]:
    extras = [(f"weight_c{g}", ("hidden_size",), f"peephole of {g}") for g in "ifo" if peepholes]
    if layer_norm:
        extras += [
            ("weight_ln_gates", ("4*hidden_size",), "layer-norm gain, i|f|g|o"),
            ("bias_ln_gates", ("4*hidden_size",), "layer-norm shift, i|f|g|o"),
            ("weight_ln_cell", ("hidden_size",), "layer-norm gain of c"),
            ("bias_ln_cell", ("hidden_size",), "layer-norm shift of c"),
        ]
    return extras
