"""A ``StepProgram`` run in plain torch: the twin of the native runner and the oracle of the partition.

``run_program`` steps the program over packed rows, differentiable end to end (autograd through every stage graph and
multiply); ``unroll_program`` adds the packing (``rnnkit.engine.plan``) and ``prepare``, with ``reference_unroll``'s
semantics (lengths, reversal within length, zeros past a length, the state kept after a sequence's last step).

Example::

    >>> import torch, rnnkit
    >>> from rnnkit.engine.compiler.capture import capture
    >>> from rnnkit.engine.compiler.interpret import unroll_program
    >>> cell = rnnkit.GRUCell(6, input_size=3)
    >>> program = capture(cell, 3)
    >>> x, h0 = torch.randn(4, 2, 3), torch.zeros(2, 6)
    >>> out, h = unroll_program(program, cell, x, h0, torch.tensor([4, 2]))
    >>> ref, href = rnnkit.engine.reference_unroll(cell, x, h0, torch.tensor([4, 2]))
    >>> bool(torch.allclose(out, ref, atol=1e-6)), bool(torch.allclose(h, href, atol=1e-6))
    (True, True)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..._structure import flatten, pack_as
from ..plan import make_plan
from .program import MatMul, StepProgram
from .trace import tensors_of

__all__ = ["run_program", "unroll_program"]


def run_program(
    program: StepProgram,
    step_inputs: Tensor,
    batch_sizes: Tensor,
    states0: list[Tensor],
    weights: list[Tensor],
    row_params: list[Tensor],
    seqs: list[Tensor],
) -> tuple[Tensor, list[Tensor]]:
    """Run ``program.steps`` over the packed schedule -> ``(Y (N, output_width), finals [(B, S_k)])``.

    ``step_inputs`` ``(N, step_width)`` (``prepare``'s first result), ``batch_sizes`` ``(T,)`` int64 on the CPU,
    non-increasing (``n_t`` sequences run at step ``t``: packed rows ``off_t .. off_t + n_t``, longest first),
    ``states0`` the state leaves ``(B, S_k)`` in that order, ``weights`` and ``row_params`` from ``prepare``, ``seqs``
    the per-sequence tensors ``(B, w)`` (``program.seq_names``) in that order. A sequence that has ended keeps its
    state: ``finals`` are the state rows at each sequence's last step.
    """
    state = list(states0)
    state_out = {s.index: s.name for s in program.slots_of("state_out")}
    output = program.slots_of("output")[0].name
    ys = []
    off = 0
    for n in batch_sizes.tolist():
        slots: dict[str, Tensor] = {}
        for slot in program.slots.values():
            if slot.kind == "step":
                slots[slot.name] = step_inputs[off : off + n, slot.index : slot.index + slot.width]
            elif slot.kind == "state_in":
                slots[slot.name] = state[slot.index][:n]
            elif slot.kind == "param":
                slots[slot.name] = row_params[slot.index].expand(n, slot.width)
            elif slot.kind == "seq":
                slots[slot.name] = seqs[slot.index][:n]
        for step in program.steps:
            if isinstance(step, MatMul):
                slots[step.out] = slots[step.lhs] @ weights[step.weight]
            else:
                slots.update(zip(step.outputs, step.graph(*(slots[name] for name in step.inputs)), strict=True))
        for k, s in enumerate(state):
            new = slots[state_out[k]]
            state[k] = new if n == s.shape[0] else torch.cat([new, s[n:]])
        ys.append(slots[output])
        off += n
    if not ys:
        return step_inputs.new_zeros(0, program.output_width), state
    return torch.cat(ys), state


def unroll_program(
    program: StepProgram, cell: nn.Module, inputs: Tensor, state: Any, lengths: Tensor | None = None,
    reverse: bool = False,
) -> tuple[Tensor, Any]:  # fmt: skip
    """``reference_unroll``'s contract (``(T, B, D)`` -> outputs ``(T, B, O)``, final state), on ``program``.

    Reads the cell's tensors now (``program.tensor_names``); it does not call ``begin_sequence`` (the caller does).
    """
    steps, batch = inputs.shape[0], inputs.shape[1]
    plan = make_plan(steps, batch, lengths, reverse, inputs.device)
    tensors = tensors_of(cell, program.tensor_names)
    step_inputs, weights, row_params = program.prepare(tensors, plan.pack(inputs))
    by_name = dict(zip(program.tensor_names, tensors, strict=True))
    seqs = [plan.sort(by_name[name]) for name in program.seq_names]
    states0 = [plan.sort(leaf) for leaf in flatten(state)]
    y, finals = run_program(program, step_inputs, plan.batch_sizes, states0, weights, row_params, seqs)
    return plan.unpack(y), pack_as(state, [plan.unsort(f) for f in finals])
