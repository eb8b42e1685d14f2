"""Running a ``StepProgram`` natively: generated stage code (``codegen``, ``build``) in the engine's time loop
(``torch.ops.rnnkit.program_forward`` / ``program_backward``, csrc/program.cpp), differentiable.

``run_program_native(program, step_inputs, batch_sizes, states0, weights, row_params, seqs) -> (Y, finals)``:

* ``step_inputs (N, step_width)``: the packed per-step inputs (``prepare``'s first result), step ``t`` owning rows
  ``[off_t, off_t + n_t)``, ``n_t = batch_sizes[t]`` non-increasing (sequences sorted longest first);
* ``states0``: one ``(B, w_i)`` tensor per state leaf; ``weights``: one ``(k, m)`` matrix per ``MatMul`` index;
  ``row_params``: one ``(width,)`` vector per ``param`` slot; ``seqs``: one ``(B, width)`` tensor per ``seq`` slot;
* ``Y (N, output_width)`` packed like ``step_inputs``; ``finals``: every leaf's state after its sequence's last step
  (a sequence of no step keeps its ``states0`` row).

Gradients flow to ``step_inputs``, ``states0``, ``weights`` and ``row_params`` (not ``seqs``). The backward is the
native one; a differentiable gradient (``create_graph=True``) or a ``torch.func`` transform is refused with an error
naming the pure-torch path (``interpret.run_program``): the integrator routes those there.

The generated unit is compiled once per (program, dtype, with or without backward) in a process and found on disk
afterwards (``build``); ``torch.ops.rnnkit`` (``rnnkit.engine._ext.load()``) must be loaded: the caller checks.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .. import _ext
from . import build, codegen, interpret
from .program import SLOT_KINDS, MatMul, Stage, StepProgram

__all__ = ["run_program_native", "prepare_native"]

_LHS_KINDS = ("step", "state_in", "state_out", "output", "temp")


@dataclass(frozen=True)
class _Native:
    slots: list[int]  # (kind, width, index) per slot, program.slots order
    steps: list[int]  # (0, stage, work, 0) or (1, lhs, weight, out) per step
    fwd: list[int]  # stage function addresses
    bwd: list[int]  # empty for a forward-only unit


_lock = threading.Lock()
_units: dict[tuple[int, torch.dtype, bool], tuple[weakref.ref, _Native]] = {}


def _check(program: StepProgram) -> None:
    slots = program.slots
    for step in program.steps:
        if isinstance(step, MatMul):
            lhs, out = slots[step.lhs], slots[step.out]
            if lhs.kind not in _LHS_KINDS or out.kind != "temp":
                raise ValueError(f"StepProgram MatMul {step}: expected lhs one of {_LHS_KINDS} and a temp out, got "
                                 f"{lhs.kind!r} and {out.kind!r}")  # fmt: skip
        elif not isinstance(step, Stage):
            raise ValueError(f"StepProgram: a step must be a Stage or a MatMul, got {type(step).__name__}")
    outputs = program.slots_of("output")
    if len(outputs) != 1 or outputs[0].width != program.output_width:
        raise ValueError(f"StepProgram: expected one output slot of width {program.output_width}, got "
                         f"{[(s.name, s.width) for s in outputs]}")  # fmt: skip


def prepare_native(program: StepProgram, dtype: torch.dtype, backward: bool) -> _Native:
    """Generates and compiles ``program``'s stages for ``dtype`` (with their backwards when ``backward``), once per
    process; returns the flattened program and the function addresses ``program_forward``/``backward`` take."""
    key = (id(program), dtype, backward)
    with _lock:
        hit = _units.get(key)
        if hit is not None and hit[0]() is program:
            return hit[1]
        _check(program)
        source, stages = codegen.program_source(program, dtype, backward)
        names = [f"rk_stage{k}_fwd" for k in range(stages)] + [f"rk_stage{k}_bwd" for k in range(stages)] * backward
        addr = build.load_unit(source, names)
        index = {name: k for k, name in enumerate(program.slots)}
        slots = [v for s in program.slots.values() for v in (SLOT_KINDS.index(s.kind), s.width, s.index)]
        steps, k = [], 0
        for step in program.steps:
            if isinstance(step, Stage):
                work = sum(program.slots[s].width for s in step.inputs + step.outputs)
                steps += [0, k, work, 0]
                k += 1
            else:
                steps += [1, index[step.lhs], step.weight, index[step.out]]
        native = _Native(
            slots,
            steps,
            [addr[f"rk_stage{j}_fwd"] for j in range(stages)],
            [addr[f"rk_stage{j}_bwd"] for j in range(stages)] if backward else [],
        )
        _units[key] = (weakref.ref(program), native)
        return native


def _check_inputs(program: StepProgram, x: Tensor, batch_sizes: Tensor, states0: Sequence[Tensor],
                  row_params: Sequence[Tensor], seqs: Sequence[Tensor]) -> None:  # fmt: skip
    if x.dim() != 2 or x.size(1) != program.step_width:
        raise ValueError(f"run_program_native: step_inputs must be (N, {program.step_width}), got {tuple(x.shape)}")
    if int(batch_sizes.sum()) != x.size(0):
        raise ValueError(f"run_program_native: batch_sizes sum to {int(batch_sizes.sum())}, step_inputs has "
                         f"{x.size(0)} rows")  # fmt: skip
    widths = tuple(int(s.size(-1)) for s in states0)
    if widths != tuple(program.state_widths) or any(s.dim() != 2 for s in states0):
        raise ValueError(f"run_program_native: states0 must be (B, w) for w in {program.state_widths}, got "
                         f"{[tuple(s.shape) for s in states0]}")  # fmt: skip
    for kind, given in (("param", row_params), ("seq", seqs)):
        want = program.slots_of(kind)
        if len({s.index for s in want}) > len(given):
            raise ValueError(f"run_program_native: {len(given)} {kind} tensors for slots {[s.name for s in want]}")
    for t in (*states0, *row_params, *seqs):
        if t.dtype != x.dtype:
            raise TypeError(f"run_program_native: every tensor must be {x.dtype} as step_inputs, got {t.dtype}")


class _ProgramFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, run, counts, batch_sizes, out_width, x, *tensors):  # noqa: ANN001
        native, ctx.program = run
        ns, nw, npar = counts
        st, w, par = tensors[:ns], tensors[ns : ns + nw], tensors[ns + nw : ns + nw + npar]
        sq = tensors[ns + nw + npar :]
        out = _ext.load().program_forward(
            x, batch_sizes, st, w, par, sq, native.slots, native.steps, native.fwd, out_width, True
        )
        ctx.native, ctx.counts, ctx.batch_sizes = native, counts, batch_sizes
        ctx.save_for_backward(x, *tensors, out[0], *out[1 + ns :])
        return (out[0], *out[1 : 1 + ns])

    @staticmethod
    def backward(ctx, dY, *dfinals):  # noqa: ANN001
        if torch.is_grad_enabled() or torch._C._functorch.maybe_current_level() is not None:
            return (None, None, None, None, *_differentiable_grads(ctx, (dY, *dfinals)))
        ns, nw, npar = ctx.counts
        saved = ctx.saved_tensors
        x, tensors = saved[0], saved[1 : 1 + len(ctx.needs_input_grad) - 5]
        rest = saved[1 + len(tensors) :]
        y, kept = rest[0], rest[1:]
        st, w, par = tensors[:ns], tensors[ns : ns + nw], tensors[ns + nw : ns + nw + npar]
        sq = tensors[ns + nw + npar :]
        n = ctx.native
        grads = _ext.load().program_backward(
            dY, list(dfinals), x, ctx.batch_sizes, st, w, par, sq, y, list(kept), n.slots, n.steps, n.bwd
        )
        return (None, None, None, None, *grads, *([None] * len(sq)))


def _differentiable_grads(ctx: Any, grads: tuple[Tensor, ...]) -> list[Tensor | None]:
    """A differentiable gradient (``create_graph=True``, or under a ``torch.func`` transform): the program's forward
    recomputed in torch ops (``interpret.run_program``) from the saved inputs, which keep their autograd history,
    and differentiated there, so second derivatives are exact."""
    ns, nw, npar = ctx.counts
    saved = ctx.saved_tensors
    x, tensors = saved[0], saved[1 : 1 + len(ctx.needs_input_grad) - 5]
    st, w, par = tensors[:ns], tensors[ns : ns + nw], tensors[ns + nw : ns + nw + npar]
    sq = tensors[ns + nw + npar :]
    with torch.enable_grad():
        y, finals = interpret.run_program(ctx.program, x, ctx.batch_sizes, list(st), list(w), list(par), list(sq))
        wrt = [t for t in (x, *st, *w, *par) if t.requires_grad]
        outs = [(o, g) for o, g in zip((y, *finals), grads, strict=True) if g is not None and o.requires_grad]
        found = iter(torch.autograd.grad([o for o, _ in outs], wrt, [g for _, g in outs], create_graph=True,
                                         allow_unused=True)) if outs else iter([None] * len(wrt))  # fmt: skip
    out = [next(found) if t.requires_grad else None for t in (x, *st, *w, *par)]
    return [*out, *([None] * len(sq))]


def run_program_native(
    program: StepProgram,
    step_inputs: Tensor,
    batch_sizes: Tensor,
    states0: Sequence[Tensor],
    weights: Sequence[Tensor],
    row_params: Sequence[Tensor],
    seqs: Sequence[Tensor],
) -> tuple[Tensor, list[Tensor]]:
    """``program``'s steps over the packed ``step_inputs``: ``(Y (N, output_width), finals)``; see the module's
    docstring for the shapes. Native forward and backward; needs ``rnnkit.engine._ext.load()`` to have succeeded."""
    states0, weights, row_params, seqs = list(states0), list(weights), list(row_params), list(seqs)
    _check_inputs(program, step_inputs, batch_sizes, states0, row_params, seqs)
    tensors = [*states0, *weights, *row_params]
    train = torch.is_grad_enabled() and any(t.requires_grad for t in (step_inputs, *tensors))
    native = prepare_native(program, step_inputs.dtype, train)
    batch_sizes = batch_sizes.to(dtype=torch.long, device="cpu")
    if not train:
        out = _ext.load().program_forward(
            step_inputs, batch_sizes, states0, weights, row_params, seqs, native.slots, native.steps, native.fwd,
            program.output_width, False,
        )  # fmt: skip
        return out[0], list(out[1:])
    counts = (len(states0), len(weights), len(row_params))
    run = (native, program)
    out = _ProgramFunction.apply(run, counts, batch_sizes, program.output_width, step_inputs, *tensors, *seqs)
    return out[0], list(out[1:])
