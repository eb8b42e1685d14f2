"""``summary`` of a TF1 cell (``rnnkit.cells``): its parameters, the shapes of ``dynamic_rnn`` on it, its state."""

from __future__ import annotations

from typing import Any

import torch

from ..cells import MultiRNNCell, RNNCell, RNNCellWrapper
from ..runners import dynamic_rnn
from ._table import PROBE_STEPS, StackLayer, Summary, checked_rows, lstm_count_notes, meta_forward, shape_of
from .formulas import cell_layers, cell_rows

__all__ = ["cell_summary"]


def _state_text(state: Any) -> str:
    if isinstance(state, torch.Tensor):
        return str(shape_of(state))
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
    return any(isinstance(m, RNNCell) and m.family == "lstm" for m in cell.modules())


def cell_summary(cell: RNNCell, input_shape: tuple[int, ...], title: str | None) -> Summary:
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
    rows = checked_rows(cell_rows(cell, depth), cell, component)
    x = torch.zeros(batch, min(steps, PROBE_STEPS), depth, dtype=next(cell.parameters()).dtype, device="meta")
    outputs, state = meta_forward(cell, dynamic_rnn, x)
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
            ("output", "(batch, output_size)", shape_of(outputs[:, 0])),
        ]
    else:
        shapes = [
            ("inputs", "(batch, time, input_depth)", input_shape),
            ("outputs", "(batch, time, output_size)", shape_of(outputs)),
        ]
    state_lines = [f"State (state_size = {cell.state_size}; every leaf is (batch, size)):"]
    if isinstance(cell, MultiRNNCell) and cell.state_is_tuple:
        state_lines += [f"  layer {k}: {_state_text(s)}" for k, s in enumerate(state)]
    else:
        state_lines.append(f"  {_state_text(state)}")
    title = title or f"{_cell_title(cell)} on inputs {input_shape}  [TF1 vocabulary]"
    return Summary(title, "tf", rows, shapes, state_lines, _tf_notes(cell, depth), layers, steps, batch, 1)


def _cell_title(cell: RNNCell) -> str:
    if isinstance(cell, MultiRNNCell):
        return f"MultiRNNCell([{', '.join(_describe_cell(c) for c in cell.cells)}])"
    return _describe_cell(cell)


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
        notes += ["", *lstm_count_notes(depth, units)]
    return notes
