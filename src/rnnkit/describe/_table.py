"""``summary(module, input_shape)``: every parameter tensor, its formula, gate layout, and every shape.

Nothing here is hand-maintained per configuration: the rows come from the formulas in ``formulas.py`` and
are checked against the module's real ``named_parameters``; the output and state shapes come from running
the module once on a ``meta`` input (no memory, no arithmetic) and are checked against the formulas.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from ..cells import LSTMCell, MultiRNNCell, RNNCell, RNNCellWrapper
from ..cells.layer_norm import LayerNormBasicLSTMCell
from ..runners import dynamic_rnn
from .formulas import LAYER_GATES, ParamRow, cell_layers, cell_rows, layer_rows

__all__ = ["Summary", "StackLayer", "summary", "layer_mode"]


@dataclass(frozen=True)
class StackLayer:
    """One layer of the unrolled picture: its label and the shapes on its arrows (per direction)."""

    label: str
    input: tuple[int, ...]
    output: tuple[int, ...]
    state: str


@dataclass
class Summary:
    """What ``summary`` found: printable (``str``/``repr`` give the table), with the numbers as attributes.

    ``rows``: one ``ParamRow`` per parameter tensor (name, shape, count, formula, gate blocks).
    ``shapes``: ``[(name, symbolic, shape)]`` for inputs, outputs and states. ``state``: the state structure
    as text. ``notes``: gate orders, state order and why torch and TF count LSTM parameters differently.
    ``layers``, ``steps``, ``batch``, ``directions``: the unrolled stack, for ``diagram``.
    """

    title: str
    vocabulary: str
    rows: list[ParamRow]
    shapes: list[tuple[str, str, tuple[int, ...]]]
    state: list[str]
    notes: list[str]
    layers: list[StackLayer] = field(default_factory=list)
    steps: int = 1
    batch: int = 1
    directions: int = 1

    @property
    def total_params(self) -> int:
        return sum(r.count for r in self.rows)

    def layer_totals(self) -> dict[tuple[int, int], int]:
        """Parameters per ``(layer, direction)``."""
        totals: dict[tuple[int, int], int] = {}
        for r in self.rows:
            totals[r.layer, r.direction] = totals.get((r.layer, r.direction), 0) + r.count
        return totals

    def diagram(self, path: str) -> str:
        """Draw the unrolled stack to ``path`` (``.svg`` always; ``.png`` needs matplotlib); returns the path."""
        from .diagram import draw_stack

        return draw_stack(self, path)

    def __str__(self) -> str:
        return "\n".join([self.title, "", *_param_table(self), "", *_shape_lines(self), *self.state, "", *self.notes])

    __repr__ = __str__


def _param_table(s: Summary) -> list[str]:
    head = ("name", "shape", "count", "formula", "gate blocks")
    cells = [(r.name, str(r.shape), f"{r.count:,}", r.formula_text, r.blocks) for r in s.rows]
    width = [max(len(c[i]) for c in [head, *cells]) for i in range(4)]

    def line(c: Sequence[str]) -> str:
        return f"    {c[0]:<{width[0]}}  {c[1]:<{width[1]}}  {c[2]:>{width[2]}}  {c[3]:<{width[3]}}  {c[4]}".rstrip()

    out = ["Parameters", line(head)]
    totals = s.layer_totals()
    seen: set[tuple[int, int]] = set()
    for r, c in zip(s.rows, cells, strict=True):
        key = (r.layer, r.direction)
        if key not in seen:
            seen.add(key)
            # Each layer's own input width first: layer k > 0 of a torch.nn stack reads the layer below.
            where = ", ".join([*([f"input: {r.reads}"] if r.reads else []), *(f"{k}={v}" for k, v in r.where.items())])
            direction = ("", " forward", " backward")[r.direction + 1 if s.directions == 2 else 0]
            out.append(f"  layer {r.layer}{direction}: {totals[key]:,} parameters" + (f"  ({where})" if where else ""))
        out.append(line(c))
    total = s.total_params
    size = f"{total * 4 / 2**20:.2f} MiB" if total * 4 >= 2**20 else f"{total * 4 / 2**10:.1f} KiB"
    out.append(f"  total: {total:,} parameters ({size} as float32)")
    return out


def _shape_lines(s: Summary) -> list[str]:
    width = max(len(n) for n, _, _ in s.shapes)
    sym = max(len(y) for _, y, _ in s.shapes)
    return ["Shapes"] + [f"  {n:<{width}}  {y:<{sym}} = {shape}" for n, y, shape in s.shapes]


# ---- shared checks -----------------------------------------------------------------------------------------------
def _checked_rows(formula_rows: list[ParamRow], module: nn.Module, component: str) -> list[ParamRow]:
    """The formula rows, after checking each against the module's parameter of that name; parameters the
    formulas do not know are appended with an unknown formula."""
    actual = dict(module.named_parameters())
    for r in formula_rows:
        if r.name not in actual:
            raise RuntimeError(f"{component}: the formulas name a parameter {r.name!r} that the module lacks")
        if tuple(actual[r.name].shape) != r.shape:
            raise RuntimeError(
                f"{component}: formula {r.formula_text} gives {r.name} the shape {r.shape}, "
                f"but the module has {tuple(actual[r.name].shape)}"
            )
    known = {r.name for r in formula_rows}
    extra = [ParamRow(n, tuple(p.shape), None, "no formula known") for n, p in actual.items() if n not in known]
    return formula_rows + extra


# The meta forward runs at most this many steps: the time axis of every output is the input's, and the
# states' shapes do not depend on it, so a long sequence is checked without stepping through all of it.
_PROBE_STEPS = 3


def _meta_forward(module: nn.Module, fn: Any, *args: torch.Tensor) -> Any:
    """Run ``fn(module, *args)`` on meta tensors of the module's parameter shapes (no memory, no compute)."""
    tensors = {n: torch.empty_like(t, device="meta") for n, t in [*module.named_parameters(), *module.named_buffers()]}
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        return functional_call(_Call(module, fn), {f"m.{n}": t for n, t in tensors.items()}, args)
    finally:
        for m, training in flags:
            m.training = training


class _Call(nn.Module):
    def __init__(self, module: nn.Module, fn: Any):
        super().__init__()
        self.m = module
        self.fn = fn

    def forward(self, *args: torch.Tensor) -> Any:
        return self.fn(self.m, *args)


def _shape(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(x.shape)


def _as_shape(input_shape: Any, component: str) -> tuple[int, ...]:
    shape = tuple(input_shape)
    if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d <= 0 for d in shape):
        raise ValueError(f"{component}: input_shape must be positive ints, got {input_shape!r}")
    return shape


# ---- TF cells ----------------------------------------------------------------------------------------------------
def _state_text(state: Any) -> str:
    if isinstance(state, torch.Tensor):
        return str(_shape(state))
    inner = ", ".join(
        (f"{f}={_state_text(v)}" for f, v in zip(state._fields, state, strict=True))
        if hasattr(state, "_fields")
        else (_state_text(v) for v in state)
    )
    return f"{type(state).__name__}({inner})" if hasattr(state, "_fields") else f"({inner})"


def _describe_cell(cell: RNNCell) -> str:
    while isinstance(cell, RNNCellWrapper):
        cell = cell.cell
    units = getattr(cell, "num_units", None)
    return f"{type(cell).__name__}({units})" if units is not None else type(cell).__name__


def _has_lstm(cell: RNNCell) -> bool:
    return any(isinstance(m, (LSTMCell, LayerNormBasicLSTMCell)) for m in cell.modules())


def _cell_summary(cell: RNNCell, input_shape: tuple[int, ...], title: str | None) -> Summary:
    component = "summary"
    if len(input_shape) not in (2, 3):
        raise ValueError(
            f"{component}: a TF cell takes input_shape (batch, input_depth) for one step or "
            f"(batch, time, input_depth) for dynamic_rnn, got {input_shape}"
        )
    batch, steps, depth = (input_shape[0], 1, input_shape[1]) if len(input_shape) == 2 else input_shape
    if cell.built and cell.input_depth != depth:
        raise ValueError(f"{component}: {type(cell).__name__} is built for input depth {cell.input_depth}, got {depth}")
    cell.build(depth)
    rows = _checked_rows(cell_rows(cell, depth), cell, component)
    x = torch.zeros(batch, min(steps, _PROBE_STEPS), depth, dtype=next(cell.parameters()).dtype, device="meta")
    outputs, state = _meta_forward(cell, dynamic_rnn, x)
    outputs = outputs.new_empty(batch, steps, outputs.shape[-1])  # (batch, time, output_size)

    stack = cell_layers(cell)
    layers, d = [], depth
    for k, (prefix, sub) in enumerate(stack):
        size = sub.state_size
        sub_state = state[k] if len(stack) > 1 and isinstance(state, tuple) else state
        label = f"{prefix.rstrip('.')} {_describe_cell(sub)}".strip()
        state_text = f"h {(batch, size)}" if isinstance(size, int) else _state_text(sub_state)
        layers.append(StackLayer(label, (batch, d), (batch, sub.output_size), state_text))
        d = sub.output_size
    if len(input_shape) == 2:
        shapes = [
            ("inputs", "(batch, input_depth)", input_shape),
            ("output", "(batch, output_size)", _shape(outputs[:, 0])),
        ]
    else:
        shapes = [
            ("inputs", "(batch, time, input_depth)", input_shape),
            ("outputs", "(batch, time, output_size)", _shape(outputs)),
        ]
    state_lines = [f"State (state_size = {cell.state_size}; every leaf is (batch, size)):"]
    if isinstance(cell, MultiRNNCell) and cell.state_is_tuple:
        state_lines += [f"  layer {k}: {_state_text(s)}" for k, s in enumerate(state)]
    else:
        state_lines.append(f"  {_state_text(state)}")
    notes = _tf_notes(cell, depth)
    return Summary(
        title or f"{_cell_title(cell)} on inputs {input_shape}  [TF1 vocabulary]",
        "tf",
        rows,
        shapes,
        state_lines,
        notes,
        layers,
        steps,
        batch,
        1,
    )


def _cell_title(cell: RNNCell) -> str:
    if isinstance(cell, MultiRNNCell):
        return f"MultiRNNCell([{', '.join(_describe_cell(c) for c in cell.cells)}])"
    return _describe_cell(cell)


_TORCH_GATES = {
    "rnn": "One block, no gates: h' = tanh(W_ih x + b_ih + W_hh h + b_hh).",
    "lstm": "Gate blocks: rows i|f|g|o = input gate, forget gate, cell candidate, output gate "
    "(TF's kernel columns are i|j|f|o, j being the candidate).",
    "gru": "Gate blocks: rows r|z|n = reset, update, new.",
}


def _tf_notes(cell: RNNCell, depth: int) -> list[str]:
    notes = [
        "Gate blocks: a TF kernel's rows read [x, h] (x rows first), its columns are the gate blocks: LSTM",
        "i|j|f|o = input gate, candidate (torch's g), forget gate, output gate; GRU gates r|u = reset, update",
        "(torch's z), then a separate candidate kernel reading [x, r*h] (reset before; torch's GRU resets after",
        "the matmul: a different function, no weights make them equal).",
    ]
    if _has_lstm(cell):
        first = cell_layers(cell)[0][1]
        while isinstance(first, RNNCellWrapper):
            first = first.cell
        units = getattr(first, "num_units", 1)
        notes += ["", *_lstm_count_notes(depth, units)]
    return notes


def _lstm_count_notes(i: int, h: int) -> list[str]:
    torch_n, tf_n = 4 * h * (i + h) + 8 * h, 4 * h * (i + h) + 4 * h
    return [
        "State order: TF's LSTMStateTuple is (c, h), memory first; torch.nn.LSTM takes and returns (h, c).",
        f"Why one LSTM layer (I={i}, H={h}) has 4H(I+H)+8H = {torch_n:,} parameters in torch and "
        f"4H(I+H)+4H = {tf_n:,} in TF/Keras:",
        "  both hold 4H(I+H) weights (4 gate blocks, each reading x and h); torch keeps two bias vectors per",
        "  gate block (bias_ih and bias_hh, cuDNN's layout) that are only ever added together, while TF and",
        "  Keras keep one (TF adds forget_bias to the f block at run time instead of storing it). The extra 4H",
        "  are redundant: TF bias = bias_ih + bias_hh (with forget_bias taken off the f block) is exact.",
    ]


# ---- torch.nn-style layers ---------------------------------------------------------------------------------------
def layer_mode(module: Any) -> str | None:
    """``"rnn"``, ``"lstm"`` or ``"gru"`` for a torch.nn-style recurrent layer (torch's or rnnkit's), else None."""
    for cls, mode in ((nn.LSTM, "lstm"), (nn.GRU, "gru"), (nn.RNN, "rnn")):
        if isinstance(module, cls):
            return mode
    name = type(module).__name__.lower()
    if isinstance(module, nn.Module) and name in LAYER_GATES and hasattr(module, "hidden_size"):
        return name
    return None


def _layer_summary(module: nn.Module, mode: str, input_shape: tuple[int, ...], title: str | None) -> Summary:
    component = "summary"
    i, h, n = module.input_size, module.hidden_size, module.num_layers
    dirs = 2 if module.bidirectional else 1
    proj = getattr(module, "proj_size", 0) or 0
    batch_first = bool(getattr(module, "batch_first", False))
    if len(input_shape) == 2:
        (steps, feat), batch = input_shape, None
    elif len(input_shape) == 3:
        steps, batch, feat = (input_shape[1], input_shape[0], input_shape[2]) if batch_first else input_shape
    else:
        raise ValueError(
            f"{component}: a {type(module).__name__} takes input_shape "
            f"{'(batch, seq_len, input_size)' if batch_first else '(seq_len, batch, input_size)'} "
            f"or unbatched (seq_len, input_size), got {input_shape}"
        )
    if feat != i:
        raise ValueError(f"{component}: {type(module).__name__} has input_size={i}, got input_shape {input_shape}")
    extras = {k: bool(getattr(module, k, False)) for k in ("peepholes", "layer_norm")}  # rnnkit.LSTM's options
    rows = layer_rows(mode, i, h, n, dirs == 2, proj, bool(getattr(module, "bias", True)), **extras)
    rows = _checked_rows(rows, module, component)
    dtype = next(module.parameters()).dtype
    time_dim = 1 if batch_first and batch is not None else 0
    probe = list(input_shape)
    probe[time_dim] = min(steps, _PROBE_STEPS)
    out, state = _meta_forward(module, lambda m, x: m(x), torch.zeros(probe, dtype=dtype, device="meta"))
    out_shape = list(out.shape)
    out_shape[time_dim] = steps
    out = out.new_empty(out_shape)  # the time axis back at full length
    h_n, c_n = state if mode == "lstm" else (state, None)

    out_sym = "proj_size" if proj else "hidden_size"
    b = "" if batch is None else "batch, "
    seq = f"({b}seq_len" if batch_first else "(seq_len" + (", batch" if batch is not None else "")
    stack = "num_layers*num_directions" if dirs == 2 else "num_layers"
    feat_out = f"num_directions*{out_sym}" if dirs == 2 else out_sym
    shapes = [
        ("input", f"{seq}, input_size)", input_shape),
        ("output", f"{seq}, {feat_out})", _shape(out)),
        ("h_0 / h_n", f"({stack}{', batch' if batch is not None else ''}, {out_sym})", _shape(h_n)),
    ]
    if c_n is not None:
        shapes.append(("c_0 / c_n", f"({stack}{', batch' if batch is not None else ''}, hidden_size)", _shape(c_n)))
    bsz = batch or 1
    out_w = proj or h
    state_text = f"h {(bsz, out_w)}" + (f", c {(bsz, h)}" if mode == "lstm" else "")
    layers = [
        StackLayer(f"{mode.upper()} l{k}", (bsz, i if k == 0 else dirs * out_w), (bsz, dirs * out_w), state_text)
        for k in range(n)
    ]
    state_lines = [
        f"State: {'(h_n, c_n)' if mode == 'lstm' else 'h_n'}; h_n[k*num_directions + d] is layer k, direction d "
        f"(0 forward, 1 backward) after the last step; h_n.view({n}, {dirs}, "
        f"{'' if batch is None else f'{batch}, '}{out_w}) separates them."
    ]
    if dirs == 2:
        state_lines.append(
            f"  output[..., :{out_w}] is the forward direction, output[..., {out_w}:] the backward one; "
            "the backward h_n is its state after reading the whole sequence backwards (the output at time 0)."
        )
    options = [f"{i}, {h}, {n}"] + [f"{k}={v}" for k, v in (("bidirectional", dirs == 2), ("proj_size", proj)) if v]
    notes = [_TORCH_GATES[mode]]
    if mode == "lstm":
        notes += ["", *_lstm_count_notes(i, h)]
    elif mode == "gru" and getattr(module, "reset_after", True) is False:
        notes += [
            "reset_after=False: TF1's GRUCell math, n = tanh(W_in x + b_in + W_hn (r*h) + b_hn), in torch's layout."
        ]
    elif mode == "gru":
        notes += [
            "Reset after (torch, cuDNN): n = tanh(W_in x + b_in + r*(W_hn h + b_hn)).",
            f"torch's GRU has 3H(I+H)+6H = {3 * h * (i + h) + 6 * h:,} parameters per layer, TF's GRUCell "
            f"3H(I+H)+3H = {3 * h * (i + h) + 3 * h:,}: b_hn sits inside r*(W_hn h + b_hn), so torch's second "
            "bias is not redundant, and the two GRUs are different functions.",
        ]
    else:
        notes += [
            f"torch's RNN has H(I+H)+2H = {h * (i + h) + 2 * h:,} parameters per layer, TF's BasicRNNCell "
            f"(I+H)H+H = {(i + h) * h + h:,}: the two biases are only ever added (one is redundant).",
        ]
    return Summary(
        title or f"{mode.upper()}({', '.join(options)})  [torch.nn vocabulary]",
        "torch",
        rows,
        shapes,
        state_lines,
        notes,
        layers,
        steps,
        bsz,
        dirs,
    )


def summary(module: nn.Module, input_shape: Sequence[int], *, title: str | None = None) -> Summary:
    """Describe a recurrent module for inputs of ``input_shape``: every parameter, formula, gate order, shape.

    ``module``: an rnnkit cell (``BasicLSTMCell``, ``MultiRNNCell``, wrappers, ...; built for the input depth
    if it is not yet) with ``input_shape`` ``(batch, input_depth)`` or ``(batch, time, input_depth)``; or a
    torch.nn-style ``RNN``/``LSTM``/``GRU`` (torch's or rnnkit's) with ``(seq_len, batch, input_size)``
    (``(batch, seq_len, input_size)`` if ``batch_first``) or unbatched ``(seq_len, input_size)``.

    Returns a ``Summary``: ``print(s)`` shows the table; ``s.total_params``, ``s.rows``, ``s.shapes`` give
    the numbers; ``s.diagram("stack.svg")`` draws the unrolled stack.

    Example::

        >>> s = summary(rnnkit.BasicRNNCell(128), (32, 100))
        >>> s.total_params
        29312
    """
    shape = _as_shape(input_shape, "summary")
    if isinstance(module, RNNCell):
        return _cell_summary(module, shape, title)
    mode = layer_mode(module)
    if mode is None:
        raise TypeError(
            f"summary: expected an rnnkit RNNCell or a torch.nn-style RNN/LSTM/GRU layer, got {type(module).__name__}"
        )
    return _layer_summary(module, mode, shape, title)
