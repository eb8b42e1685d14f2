"""The engine's entry points: ``unroll(cell, inputs, state, lengths, reverse)`` (public; the runners' contract),
``run_cell`` (the runners' and layers' entry once they have checked their arguments) and ``run_stack`` (a stack of
layers x directions, ``rnnkit.engine.stack``).

Three paths, chosen by explicit predicates (``rnnkit.engine.route``), never by catching failures:

1. ``reference``: the readable loop over ``cell.call`` (``reference_unroll``); always available,
   the oracle the tests compare against, and what runs anything not lowered.
2. ``torch``: torch's own fused kernels (``torch._VF.lstm/gru/rnn_tanh/rnn_relu``: oneDNN or the
   native loop on CPU, cuDNN on GPU) for specs whose math is identical (``spec.torch_mode``).
3. ``fused``: rnnkit's kernels (compiled C++ on CPU, or their pure-PyTorch twins), one layer per
   call over the packed sequence, with a hand-written backward through time.

Under ``use("auto")`` (the default) a leaf runs on torch's kernel when that is the fast choice
(CUDA; on CPU the oneDNN LSTM without lengths, in inference at a batch above ``route.FUSED_MAX_BATCH``) and
on rnnkit's fused kernels otherwise (CPU GRU and vanilla RNN, variable lengths, LSTMs in training or at
small batches, cells torch has no kernel for). On CUDA a cell torch cannot run goes to the reference
loop until a GPU kernel is registered (``register_device_kernels``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._structure import check_placement, map_structure, named_leaves
from ..cells import RNNCell
from ._select import fused_kernels
from .autocast import autocast_dtype, cast_stack, cast_state, output_dtype
from .lowering import DropoutSpec, ResidualSpec, Spec, StackSpec, combine_masks, lowering_for
from .plan import Plan, full_batch_sizes, full_to_none, plan_for, reverse_sequence
from .precision import LOW_PRECISION, widened, widened_state
from .route import DEVICES, route
from .stack import VF_CALLS, LayerStack, dropout_between_layers, run_layers, torch_stack_call

__all__ = ["unroll", "reference_unroll", "run_cell", "run_stack"]


def reference_unroll(
    cell: RNNCell, inputs: Tensor, state: Any, lengths: Tensor | None, reverse: bool = False
) -> tuple[Tensor, Any]:
    """Step ``cell.call`` over time-major ``inputs`` ``(T, B, D)`` -> outputs ``(T, B, O)`` and the final state.

    TF's ``sequence_length`` semantics: outputs past a length are zero, the state stops at each
    sequence's last valid step, and ``reverse`` reads each sequence backwards within its length.
    """
    cell.begin_sequence(inputs.shape[1])
    return _reference_loop(cell, inputs, state, lengths, reverse)


def _reference_loop(
    cell: RNNCell, inputs: Tensor, state: Any, lengths: Tensor | None, reverse: bool
) -> tuple[Tensor, Any]:
    """``reference_unroll`` for a sequence that has begun (``cell.begin_sequence`` ran)."""
    if reverse:
        inputs = reverse_sequence(inputs, lengths)
    # (all steps where the lengths have no values to read: meta tensors, which only follow shapes)
    whole = lengths is None or not len(lengths) or lengths.device.type == "meta"
    steps = inputs.shape[0] if whole else int(lengths.max())
    outputs = []
    for t in range(steps):
        output, new_state = cell.call(inputs[t], state)
        if lengths is not None:
            valid = (t < lengths).unsqueeze(1)  # (B, 1)
            output = torch.where(valid, output, torch.zeros((), dtype=output.dtype, device=output.device))
            new_state = map_structure(lambda new, old, v=valid: torch.where(v, new, old), new_state, state)
        outputs.append(output)
        state = new_state
    if outputs:
        out = torch.stack(outputs)  # (steps, B, O)
    else:
        out = inputs.new_zeros(0, inputs.shape[1], cell.output_size)
    if steps < inputs.shape[0]:  # TF's outputs past max(sequence_length) are zeros too
        out = torch.cat([out, out.new_zeros(inputs.shape[0] - steps, *out.shape[1:])])
    if reverse:
        out = reverse_sequence(out, lengths)
    return out, state


# ---- entries ----------------------------------------------------------------------------------


def unroll(
    cell: RNNCell, inputs: Tensor, state: Any, lengths: Tensor | None = None, reverse: bool = False
) -> tuple[Tensor, Any]:
    """Unroll a built ``cell`` over time-major ``inputs`` ``(T, B, D)`` from ``state``, on the chosen path.

    ``lengths``: ``None`` or a ``(B,)`` int64 tensor in ``[0, T]`` (on the inputs' device). Returns
    ``(outputs (T, B, cell.output_size), final_state)`` with TF's semantics (see ``reference_unroll``),
    whatever the path. Parameters, state and inputs must share one dtype and device (``DtypeError``,
    ``DeviceError`` otherwise).

    Example::

        >>> import torch, rnnkit
        >>> from rnnkit.engine import unroll
        >>> cell = rnnkit.GRUCell(16, input_size=8)
        >>> x = torch.randn(5, 3, 8)
        >>> out, h = unroll(cell, x, cell.zero_state(3, torch.float32), torch.tensor([5, 2, 0]))
        >>> tuple(out.shape), bool(out[2:, 1].eq(0).all())
        ((5, 3, 16), True)
    """
    named = [("inputs", inputs), *named_leaves(state, "state")]
    check_placement("rnnkit.engine.unroll", cell, named, ("lengths", lengths))
    return run_cell(cell, inputs, state, lengths, reverse)


def run_cell(
    cell: RNNCell, x: Tensor, state: Any, lengths: Tensor | None = None, reverse: bool = False
) -> tuple[Tensor, Any]:
    """``unroll`` for arguments already checked (``check_placement``, the runners' lengths check)."""
    lengths = full_to_none(lengths, x.shape[0], x.device.type)
    low = autocast_dtype(x, _first_parameter(cell, x))
    if low is not None:  # torch.autocast: float32 math, torch.nn's dtypes (``engine.autocast``)
        with torch.autocast("cpu", enabled=False):  # (a bf16/fp16 input or fed-back state: float32 inside, too)
            y, final = run_cell(cell, widened(x), widened_state(state), lengths, reverse)
        spec, ragged, xd = lowering_for(cell, x.shape[1]), lengths is not None, x.dtype
        return y.to(output_dtype(spec, low, ragged, state, xd)), cast_state(spec, final, low, ragged, state, xd)
    cell.begin_sequence(x.shape[1])  # first: a compiled step reads what it draws (per-sequence masks)
    return _unroll(cell, lowering_for(cell, x.shape[1]), x, state, lengths, reverse)


def run_stack(node: LayerStack, x: Tensor, states: Any, lengths: Tensor | None) -> tuple[Tensor, Any]:
    """Run the stack ``node`` over time-major ``x`` ``(T, B, I)`` from ``states`` (``node.split``'s input form, or
    ``None`` for zeros) with ``lengths`` (checked, or ``None``) -> ``(top outputs (T, B, sum of output sizes), final
    states in the same form)``. Arguments already checked (the layers' and runners' ``check_placement``)."""
    lengths = full_to_none(lengths, x.shape[0], x.device.type)
    path = route(node, x, lengths)
    low = autocast_dtype(x, _first_parameter(node.cells[0], x))
    # torch's kernel autocasts itself, as in torch.nn; but oneDNN has no float16 LSTM on many CPUs (torch.nn fails
    # under float16 autocast there), so float16 autocast takes the branch below: float32 math, float16 results
    if path == "torch" and low is not torch.float16:
        return torch_stack_call(node, x, states, lengths)
    if low is not None:  # float32 math, torch.nn's dtypes (``engine.autocast``)
        with torch.autocast("cpu", enabled=False):  # (a bf16/fp16 input or fed-back state: float32 inside, too)
            y, finals = run_stack(node, widened(x), widened_state(states), lengths)
        ragged, xd = lengths is not None, x.dtype
        if node.stacked is not None:
            return cast_stack(node.specs[0][0], y, finals, low, ragged, states, xd)
        starts = states if states is not None else [[None] * len(specs) for specs in node.specs]
        finals = [tuple(cast_state(spec, f, low, ragged, g, xd) for spec, f, g in zip(specs, ends, given, strict=True))
                  for specs, ends, given in zip(node.specs, finals, starts, strict=True)]  # fmt: skip
        top = [output_dtype(spec, low, ragged, g, xd) for spec, g in zip(node.specs[-1], starts[-1], strict=True)]
        return y.to(functools.reduce(torch.promote_types, top)), finals  # (directions concatenated: promoted)
    if path == "fused":  # full sequences, one direction: each layer one kernel call on the (T * B, I) rows
        steps, batch = x.shape[0], x.shape[1]
        lean = _Lean(fused_kernels("cpu"), full_batch_sizes(steps, batch), batch, x)
        y, finals = run_layers(node.specs, x.reshape(steps * batch, x.shape[-1]), node.split(states), lean.run)
        return y.view(steps, batch, y.shape[-1]), node.join(finals)

    def one(unit: tuple[RNNCell, Spec | None], h: Tensor, state: Any, direction: int) -> tuple[Tensor, Any]:
        cell, spec = unit
        if state is None:
            state = cell.zero_state(h.shape[1], h.dtype, device=h.device)
        cell.begin_sequence(h.shape[1])
        return _unroll(cell, spec, h, state, lengths, direction == 1)

    def between(h: Tensor) -> Tensor:
        return dropout_between_layers(h, node.dropout, lengths)

    units = [tuple(zip(cells, specs, strict=True)) for cells, specs in zip(node.layers, node.specs, strict=True)]
    y, finals = run_layers(units, x, node.split(states), one, between if node.dropout else None)
    return y, node.join(finals)


def _first_parameter(cell: RNNCell, x: Tensor) -> Tensor | None:
    """A parameter of ``cell``, only for a bf16/fp16 ``x`` (whether it meets float32 parameters under autocast)."""
    return next(cell.parameters(), None) if x.dtype in LOW_PRECISION else None


@dataclass
class _Lean:
    """Running a leaf of a stack of full sequences directly on the fused kernels (no plan, no packing)."""

    kern: Any
    batch_sizes: Tensor
    batch: int
    like: Tensor

    def run(self, spec: Any, h: Tensor, state: Any, direction: int) -> tuple[Tensor, Any]:
        spec.draw_masks(self.batch, self.like, h.shape[-1])  # recurrent dropout: where the reference loop draws it
        # full batches: the per-sequence rows are already in the kernels' order
        rows = spec.recurrent_rows(_same)
        return _fused_leaf(spec, self.kern, self.batch_sizes, h, state, None, rows, self.batch)


def _same(t: Tensor) -> Tensor:
    return t


def _fused_leaf(
    spec: Any, kern: Any, batch_sizes: Tensor, x: Tensor, state: Any, masks: Any, recurrent: Tensor | None, batch: int
) -> tuple[Tensor, Any]:
    """One leaf on the fused kernels over packed ``x``, from the cell's ``state`` (``None``: zeros) to its final
    state: the kernels' ``(h[, c])`` in and out."""
    internal = spec.zero_internal(batch, x) if state is None else spec.to_internal(state)
    y, final = spec.run_fused(kern, batch_sizes, x, internal, masks, recurrent)
    return y, spec.from_internal(*final)


def _unroll(
    cell: RNNCell, spec: Spec | None, x: Tensor, state: Any, lengths: Tensor | None, reverse: bool
) -> tuple[Tensor, Any]:
    """One cell (lowered to ``spec``) on its path, its sequence begun (``begin_sequence``); ``lengths`` through
    ``full_to_none``."""
    steps, batch = x.shape[0], x.shape[1]
    paths = plan = None
    if spec is not None and steps and batch and x.device.type in DEVICES:
        plan = plan_for(steps, batch, lengths, reverse, x.device)
        paths = route(spec, x, lengths) if plan.total else None
    if paths is None:
        return _reference_loop(cell, x, state, lengths, reverse)
    kern = fused_kernels(x.device.type) if "fused" in paths.values() else None
    spec.draw_masks(batch, x, x.shape[-1])
    run = _Run(plan, paths, kern)
    sorted_state = state if plan.perm is None else map_structure(plan.sort, state)
    y, final = _run(spec, run, plan.pack(x), sorted_state, None)
    return plan.unpack(y), (final if plan.perm is None else map_structure(plan.unsort, final))


# ---- running ----------------------------------------------------------------------------------


@dataclass
class _Run:
    plan: Plan
    paths: dict[int, str]
    kern: Any
    row_batch: Tensor | None = None

    def per_row(self, mask: Tensor, y: Tensor) -> Tensor:
        """``y`` (packed rows) times a per-sequence mask ``(B, D)`` given in the original batch order, or a mask
        ``(1, D)`` shared by every row."""
        if mask.shape[0] == 1:
            return y * mask
        mask = self.plan.sort(mask)
        if self.plan.perm is None:
            return (y.view(-1, mask.shape[0], y.shape[-1]) * mask).view_as(y)  # full batches, time-major
        if self.row_batch is None:
            bs = self.plan.batch_sizes.tolist()
            self.row_batch = torch.cat([torch.arange(n, device=y.device) for n in bs])
        return y * mask.index_select(0, self.row_batch)


def _run(node: Spec, run: _Run, x: Tensor, state: Any, masks: Any) -> tuple[Tensor, Any]:
    """Run ``node`` over packed ``x`` from ``state`` (sorted); ``masks``: state masks in the state's structure."""
    if isinstance(node, StackSpec):
        states = node.split_state(state)
        layer_masks = node.split_state(masks) if masks is not None else [None] * len(states)
        x, finals = run_layers(
            [(layer,) for layer in node.layers], x, [((s, m),) for s, m in zip(states, layer_masks, strict=True)],
            lambda layer, h, sm, d: _run(layer, run, h, *sm),
        )  # fmt: skip
        return x, node.join_state([f[0] for f in finals])
    if isinstance(node, DropoutSpec):
        if "input" in node.masks:
            x = run.per_row(node.masks["input"], x)
        own = map_structure(lambda m: None if m is None else run.plan.sort(m), node.state_masks())
        y, state = _run(node.inner, run, x, state, combine_masks(masks, own))
        if "output" in node.masks:
            y = run.per_row(node.masks["output"], y)
        return y, state
    if isinstance(node, ResidualSpec):
        y, state = _run(node.inner, run, x, state, masks)
        return x + y, state
    if run.paths[id(node)] == "torch":
        return _run_torch(node, run.plan, x, state)
    recurrent = node.recurrent_rows(run.plan.sort)
    return _fused_leaf(node, run.kern, run.plan.batch_sizes, x, state, masks, recurrent, run.plan.batch)


def _segments(plan: Plan) -> list[tuple[int, int, int]]:
    """``(first step, end step, rows)`` runs of steps with the same number of running sequences."""
    sizes = plan.batch_sizes.tolist()
    runs, start = [], 0
    for t in range(1, len(sizes) + 1):
        if t == len(sizes) or sizes[t] != sizes[start]:
            runs.append((start, t, sizes[start]))
            start = t
    return runs


def _run_torch(leaf: Spec, plan: Plan, x: Tensor, state: Any) -> tuple[Tensor, Any]:
    """One layer on ``torch._VF``: padded ``(T, B, I)`` when every sequence is full, else packed rows
    (on CPU, an LSTM runs segment by segment: one padded call per run of steps with a constant batch)."""
    params, has_bias = leaf.torch_params()
    fn = getattr(torch._VF, VF_CALLS[leaf.torch_mode])
    internal = leaf.to_internal(state)
    lstm = leaf.torch_mode == "LSTM"
    if plan.lengths is None:
        hx = tuple(s.unsqueeze(0) for s in internal) if lstm else internal[0].unsqueeze(0)  # (1, B, size)
        seq = x.view(plan.steps, plan.batch, x.shape[-1])  # (T, B, I)
        out, *final = fn(seq, hx, params, has_bias, 1, 0.0, False, False, False)
        y = out.reshape(plan.steps * plan.batch, out.shape[-1])
        final = [f[0] for f in final]
    elif x.device.type == "cpu" and lstm:
        states, outputs, row = list(internal), [], 0
        for start, end, rows in _segments(plan):
            seg = x[row : row + (end - start) * rows].view(end - start, rows, x.shape[-1])  # (steps, rows, I)
            hx = tuple(s[:rows].unsqueeze(0) for s in states)
            out, *new = fn(seg, hx, params, has_bias, 1, 0.0, False, False, False)
            outputs.append(out.reshape(-1, out.shape[-1]))
            states = [
                torch.cat([n[0], s[rows:]]) if rows < s.shape[0] else n[0] for n, s in zip(new, states, strict=True)
            ]
            row += (end - start) * rows
        y, final = torch.cat(outputs), states
    else:
        # torch's packed kernel knows only the running sequences; empty ones (sorted last) keep their state.
        running = int(plan.batch_sizes[0])
        hx = tuple(s[:running].unsqueeze(0) for s in internal)
        y, *final = fn(x, plan.batch_sizes, hx if lstm else hx[0], params, has_bias, 1, 0.0, False, False)
        final = [torch.cat([f[0], s[running:]]) for f, s in zip(final, internal, strict=True)]
    return y, leaf.from_internal(*final)
