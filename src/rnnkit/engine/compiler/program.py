"""A user cell's step, compiled: the intermediate form between the capture and the kernels.

``rnnkit.engine.compiler`` turns ``cell.call(inputs, state)`` (any ``RNNCell``, TF1-protocol or torch-style) into a
``StepProgram``: what the step computes, split as the engine runs it.

* ``prepare``: a torch function of the cell's tensors and the inputs of *all* steps, run once per unroll with autograd:
  the weight-only work (transposes, slices of a kernel, concatenations of parameters) and every multiply that reads
  only the inputs (hoisted out of the time loop, one multiply over ``T * B`` rows). It returns the packed per-step
  inputs ``(N, step_width)``, the recurrent weights (one ``(k, m)`` matrix per ``MatMul``) and the row parameters
  (one ``(width,)`` vector per ``param`` slot: biases, gains, peephole weights, scalars as ``(1,)``).
* ``steps``: what runs inside the time loop, in order: ``Stage`` (elementwise and feature-axis work, an aten graph)
  and ``MatMul`` (a state-dependent row block times a recurrent weight, on the engine's panel multiplies).

Every value the loop touches is a ``Slot``: rows ``(n, width)`` of one step (``n`` running sequences, packed longest
first). A stage's graph reads its input slots as ``(n, width)`` tensors (a ``param`` slot expanded to ``n`` rows, a
``seq`` slot's rows in the packed order) and returns one ``(n, width)`` tensor per output slot. Its ops are aten
ops acting row by row (``STAGE_OPS``); Python scalars may appear as arguments.

Slot kinds (``Slot.index`` says which one):

* ``step``: a column block of the packed per-step inputs (``index``: its first column in ``step_width``);
* ``state_in`` / ``state_out``: state leaf ``index`` (the flattened state, TF's structure order) before / after the
  step; every ``state_out`` is written by exactly one stage;
* ``output``: the step's output (``output_size`` wide), written by one stage (possibly the same value as a state);
* ``temp``: a value made in the step (a stage's output or a ``MatMul``'s result) read later in the same step;
* ``param``: row parameter ``index`` (the same vector for every row);
* ``seq``: per-sequence rows ``index`` (a mask drawn once per sequence, an attribute of the cell).

Example::

    >>> from rnnkit.engine.compiler.program import Slot, MatMul
    >>> Slot("h", "state_in", 16).kind, MatMul(lhs="h", weight=0, out="gates").out
    ('state_in', 'gates')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["SLOT_KINDS", "STAGE_OPS", "Slot", "Stage", "MatMul", "StepProgram", "Unsupported"]

SLOT_KINDS = ("step", "state_in", "state_out", "output", "temp", "param", "seq")

#: The aten ops a ``Stage`` graph may hold (besides ``operator.getitem`` on a split's result): row-wise arithmetic,
#: activations, comparisons and ``where``, feature-axis slicing, splitting, concatenation and broadcasting from
#: width 1, feature-axis reductions kept as width 1 (layer norm), and constants. The capture emits nothing else; the
#: code generator implements every one of them (and the backward ops their derivatives produce).
STAGE_OPS = frozenset(
    f"aten.{name}"
    for name in """
    add.Tensor add.Scalar sub.Tensor sub.Scalar rsub.Scalar rsub.Tensor mul.Tensor mul.Scalar div.Tensor div.Scalar
    neg.default reciprocal.default pow.Tensor_Scalar sqrt.default rsqrt.default exp.default log.default abs.default
    sign.default sigmoid.default tanh.default relu.default hardsigmoid.default hardtanh.default softplus.default
    elu.default leaky_relu.default clamp.default clamp_min.default clamp_max.default maximum.default minimum.default
    where.self gt.Scalar gt.Tensor lt.Scalar lt.Tensor ge.Scalar ge.Tensor le.Scalar le.Tensor eq.Scalar eq.Tensor
    ne.Scalar ne.Tensor logical_not.default
    sum.dim_IntList mean.dim var.correction var_mean.correction amax.default amin.default
    slice.Tensor split.Tensor split_with_sizes.default cat.default expand.default clone.default alias.default
    detach.default view.default _unsafe_view.default
    full_like.default zeros_like.default ones_like.default _to_copy.default
    """.split()  # noqa: SIM905 (a table, read as words)
)


@dataclass(frozen=True)
class Slot:
    """One value of the step, ``(rows, width)``; see the module's docstring for ``kind`` and ``index``."""

    name: str
    kind: str
    width: int
    index: int = 0

    def __post_init__(self) -> None:
        if self.kind not in SLOT_KINDS:
            raise ValueError(f"Slot {self.name!r}: kind must be one of {SLOT_KINDS}, got {self.kind!r}")


@dataclass
class Stage:
    """Elementwise and feature-axis work: ``graph(*inputs) -> tuple(outputs)``, each ``(n, width)``."""

    graph: torch.fx.GraphModule
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class MatMul:
    """``slots[out] = slots[lhs] @ weights[weight]``: rows ``(n, k)`` times ``(k, m)``, written, not accumulated."""

    lhs: str
    weight: int
    out: str


@dataclass
class StepProgram:
    """A cell's step as the engine runs it (see the module's docstring).

    ``prepare(tensors, x)``: ``tensors`` the cell's tensors in ``tensor_names`` order (parameters, buffers, tensor
    attributes), ``x`` the inputs of all steps ``(N, input_depth)`` (followed by the columns of ``draws``, drawn as the
    reference loop draws them: ``draws.packed``) -> ``(step_inputs (N, step_width), weights, row_params)``,
    differentiable in ``tensors`` and ``x``.
    """

    slots: dict[str, Slot]
    steps: list[Stage | MatMul]
    step_width: int
    state_widths: tuple[int, ...]
    output_width: int
    tensor_names: tuple[str, ...]
    prepare: Callable[[list[Tensor], Tensor], tuple[Tensor, list[Tensor], list[Tensor]]]
    seq_names: tuple[str, ...] = ()  # which of tensor_names feed the ``seq`` slots, by index
    key: str = ""  # a hash of everything above that the generated code depends on (graphs, slots, dtype)
    draws: tuple[Any, ...] = ()  # the step's random draws (``draws.Draw``): ``prepare``'s x carries them as columns
    info: dict[str, Any] = field(default_factory=dict)  # notes for explain (ops seen, hoisted multiplies...)

    def slots_of(self, kind: str) -> list[Slot]:
        """The slots of ``kind``, by ``index``."""
        return sorted((s for s in self.slots.values() if s.kind == kind), key=lambda s: s.index)


@dataclass(frozen=True)
class Unsupported:
    """Why a cell's step cannot be compiled: ``what`` (the op or construct) and ``where`` (e.g. ``"MyCell.call"``).

    ``str()`` is the sentence ``rnnkit.engine.explain`` shows.
    """

    what: str
    where: str = ""

    def __str__(self) -> str:
        return f"{self.where}: {self.what}" if self.where else self.what
