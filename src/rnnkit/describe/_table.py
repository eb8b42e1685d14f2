"""``Summary``: what ``rnnkit.describe.summary`` found about a recurrent module, and the checks it is built with.

Nothing here is hand-maintained per configuration: the rows come from the formulas in ``formulas.py`` and
are checked against the module's real ``named_parameters`` (``checked_rows``); the output and state shapes
come from running the module once on a ``meta`` input (``meta_forward``: no memory, no arithmetic) and are
checked against the formulas.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from .diagram import StackLayer, draw_stack
from .formulas import ParamRow

__all__ = ["Summary", "StackLayer", "checked_rows", "meta_forward", "as_shape", "shape_of", "lstm_count_notes"]


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
def checked_rows(formula_rows: list[ParamRow], module: nn.Module, component: str) -> list[ParamRow]:
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
PROBE_STEPS = 3


def meta_forward(module: nn.Module, fn: Any, *args: torch.Tensor) -> Any:
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


def shape_of(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(x.shape)


def as_shape(input_shape: Any, component: str) -> tuple[int, ...]:
    shape = tuple(input_shape)
    if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d <= 0 for d in shape):
        raise ValueError(f"{component}: input_shape must be positive ints, got {input_shape!r}")
    return shape



def lstm_count_notes(i: int, h: int) -> list[str]:
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
