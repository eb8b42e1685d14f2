"""The engine's entry point: ``unroll(cell, inputs, state, lengths, reverse)``, the runners' contract.

Three paths, chosen by explicit predicates (``choose_path``), never by catching failures:

1. ``reference``: the readable loop over ``cell.call`` (``reference_unroll``); always available,
   the oracle the tests compare against, and what runs anything not lowered.
2. ``torch``: torch's own fused kernels (``torch._VF.lstm/gru/rnn_tanh/rnn_relu``: oneDNN or the
   native loop on CPU, cuDNN on GPU) for specs whose math is identical (``spec.torch_mode``).
3. ``fused``: rnnkit's kernels (compiled C++ on CPU, or their pure-PyTorch twins), one layer per
   call over the packed sequence, with a hand-written backward through time.

Under ``use("auto")`` (the default) a leaf runs on torch's kernel when that is the fast choice
(CUDA; on CPU the oneDNN LSTM without lengths, in inference at a batch above ``FUSED_MAX_BATCH``) and
on rnnkit's fused kernels otherwise (CPU GRU and vanilla RNN, variable lengths, LSTMs in training or at
small batches, cells torch has no kernel for). On CUDA a cell torch cannot run goes to the reference
loop until a GPU kernel is registered (``register_device_kernels``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._structure import flatten, map_structure
from ..cells import RNNCell
from . import _functions as F
from ._select import current, fused_kernels
from .lowering import (
    DropoutSpec,
    GRUSpec,
    LNLSTMSpec,
    LSTMSpec,
    ResidualSpec,
    RNNSpec,
    Spec,
    StackSpec,
    combine_masks,
    lowering_for,
)
from .plan import Plan, make_plan

__all__ = ["unroll", "reference_unroll", "choose_path", "explain"]

_FUSED_DTYPES = (torch.float32, torch.float64)
_DEVICES = ("cpu", "cuda")  # where torch's fused RNN kernels exist


def reference_unroll(
    cell: RNNCell, inputs: Tensor, state: Any, lengths: Tensor | None, reverse: bool = False
) -> tuple[Tensor, Any]:
    """Step ``cell.call`` over time-major ``inputs`` ``(T, B, D)`` -> outputs ``(T, B, O)`` and the final state.

    TF's ``sequence_length`` semantics: outputs past a length are zero, the state stops at each
    sequence's last valid step, and ``reverse`` reads each sequence backwards within its length.
    """
    from ..runners import reverse_sequence

    if reverse:
        inputs = reverse_sequence(inputs, lengths)
    cell.begin_sequence(inputs.shape[1])
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


# ---- choosing ---------------------------------------------------------------------------------


def _leaf_prefers_torch(leaf: Spec, x: Tensor, has_lengths: bool, masked: bool) -> bool:
    """Under ``auto``: is torch's kernel the faster choice for this leaf?"""
    if leaf.torch_mode is None or masked:
        return False
    if x.device.type != "cpu":
        return True  # cuDNN; rnnkit has no GPU kernel of its own yet
    # CPU: only the LSTM without lengths has a oneDNN kernel; GRU, vanilla RNN and packed input take
    # torch's native per-step loop, which the fused kernels beat (oneDNN has no projection: torch warns and
    # falls back to its native loop). With lengths the fused kernels, which skip finished sequences, beat
    # oneDNN run segment by segment (measured at every benchmark shape; ``use("torch")`` still runs that).
    if leaf.torch_mode != "LSTM" or has_lengths or x.dtype not in _FUSED_DTYPES:
        return False
    if getattr(leaf, "has_proj", False):
        return False
    return not (x.shape[1] <= FUSED_MAX_BATCH or trains(leaf.cell))


# Measured on 2 cores (python -m benchmarks.run and wider sweeps): in training rnnkit's fused LSTM is at par with
# oneDNN's or faster at every shape tried (0.9-1.05 of its time at batch 1-8, 0.75-0.9 at batch 16-64), and it keeps
# only the activations for backward, once per step. In inference it is faster at a batch of 1-4 rows, where
# oneDNN's fixed cost per call dominates; above that the two are within a few percent, and torch's kernel keeps
# torch.nn's results bit for bit. TF's kernel layout reaches oneDNN only re-laid out (a copy of the weights); the
# fused kernel reads it as it is.
FUSED_MAX_BATCH = 4


def trains(module: torch.nn.Module) -> bool:
    """Whether autograd will differentiate ``module``'s parameters (a cell's, or a layer's)."""
    return torch.is_grad_enabled() and any(p.requires_grad for p in _own_parameters(module))


def _own_parameters(module: torch.nn.Module) -> list[Tensor]:
    """Every parameter of ``module`` and its submodules, duplicates allowed (``Module.parameters()`` hashes each
    tensor to deduplicate, which cost more than the whole check on small unrolls)."""
    out, todo = [], [module]
    while todo:
        m = todo.pop()
        out.extend(p for p in m._parameters.values() if p is not None)
        todo.extend(c for c in m._modules.values() if c is not None)
    return out


def _consistent(spec: Spec, x: Tensor, state: Any) -> bool:
    """Parameters and state of the inputs' dtype and device (else the reference loop raises torch's error)."""
    tensors = _own_parameters(spec.root)
    if state is not None:
        tensors += flatten(state)
    dtype, device = x.dtype, x.device
    return all(t.dtype == dtype and t.device == device for t in tensors)


def choose_path(spec: Spec | None, x: Tensor, has_lengths: bool, state: Any = None) -> dict[int, str] | None:
    """``{id(leaf): "torch" | "fused"}`` for the active backend, or ``None`` for the reference loop."""
    backend = current()[0]
    if spec is None or backend == "reference" or x.device.type not in _DEVICES or not _consistent(spec, x, state):
        return None  # (meta tensors, other accelerators: the reference loop, which any device runs)
    masked = spec.state_masked()
    leaves = spec.leaves()
    torch_ok = not masked and all(leaf.torch_mode is not None for leaf in leaves)
    fused_ok = x.dtype in _FUSED_DTYPES and (x.device.type == "cpu" or fused_kernels(x.device.type) is not None)
    if backend == "torch":
        return {id(leaf): "torch" for leaf in leaves} if torch_ok else None
    if backend == "fused":
        return {id(leaf): "fused" for leaf in leaves} if fused_ok else None
    route = {}
    for leaf in leaves:
        if _leaf_prefers_torch(leaf, x, has_lengths, masked):
            route[id(leaf)] = "torch"
        elif fused_ok:
            route[id(leaf)] = "fused"
        else:
            return None
    return route


def explain(cell: RNNCell, inputs: Tensor, lengths: Tensor | None = None) -> list[str]:
    """The path each leaf of ``cell`` would take for ``inputs`` ``(T, B, D)`` (for ``backend_info`` and tests)."""
    spec = lowering_for(cell)
    plan = make_plan(inputs.shape[0], inputs.shape[1], lengths, False, inputs.device)
    route = choose_path(spec, inputs, plan.lengths is not None, None)
    if route is None:
        return ["reference"]
    return [route[id(leaf)] for leaf in spec.leaves()]


# ---- running ----------------------------------------------------------------------------------


@dataclass
class _Run:
    plan: Plan
    route: dict[int, str]
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
        finals = []
        for layer, s, m in zip(node.layers, states, layer_masks, strict=True):
            x, s = _run(layer, run, x, s, m)
            finals.append(s)
        return x, node.join_state(finals)
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
    path = run.route[id(node)]
    if path == "torch":
        return _run_torch(node, run.plan, x, state)
    recurrent = node.recurrent_rows(run.plan.sort)
    y, final = _run_fused(node, run.kern, run.plan.batch_sizes, x, node.to_internal(state), masks, recurrent)
    return y, node.from_internal(*final)


def _run_fused(
    leaf: Spec, kern: Any, bs: Tensor, x: Tensor, internal: tuple, masks: Any, recurrent: Tensor | None = None
) -> tuple[Tensor, tuple]:
    """One leaf on the fused kernels: packed ``x (total, I)`` from the kernels' state ``internal`` (``(h, c)`` or
    ``(h,)``, see ``Spec.to_internal``) over ``batch_sizes`` ``bs`` -> ``(y (total, O), final internal state)``.

    ``masks``: state masks in the state's structure (a DropoutWrapper's: they drop the carried state).
    ``recurrent``: a recurrent-dropout mask (B, O) on the ``h`` the matmul reads. The GRU kernel takes it as such
    (its ``h`` also feeds ``z * h``, unmasked); in the LSTM and the RNN ``h`` feeds nothing but the matmul and the
    final state, so it is their state mask, and the final ``h`` is read back unmasked from the outputs.
    """
    p = leaf.fused_params()
    if isinstance(leaf, (LSTMSpec, LNLSTMSpec)):
        h0, c0 = internal
        m_h, m_c = leaf.split_masks(masks)
        m_h = _times(m_h, recurrent)
        h_in = _times(h0, recurrent)  # the state mask covers the h each step makes; the first matmul reads h0
        if isinstance(leaf, LNLSTMSpec):
            y, h, c = F.lnlstm_layer(
                kern, bs, x, p["w_x"], p["bias"], h_in, c0, p["w_h"], p["gamma"], p["beta"], m_h, m_c,
                leaf.gate_order, leaf.forget_bias, leaf.eps,
            )
        else:
            y, h, c = F.lstm_layer(
                kern, bs, x, p["w_x"], p["bias"], h_in, c0, p["w_h"], p["peep"], p["w_proj"], m_h, m_c,
                leaf.gate_order, leaf.forget_bias, leaf.cell_clip, leaf.proj_clip,
            )
        return y, (_unmasked_final(recurrent, y, bs, h, h0), c)
    (h0,) = internal
    if isinstance(leaf, GRUSpec):
        y, h = F.gru_layer(
            kern, bs, x, p["w_x"], p["bias_x"], h0, p["w_h"], p["bias_h"], p["w_xn"], p["w_hn"], masks, recurrent,
            leaf.reset_after,
        )
        return y, (h,)
    assert isinstance(leaf, RNNSpec)
    h_in = _times(h0, recurrent)
    y, h = F.rnn_layer(kern, bs, x, p["w_x"], p["bias"], h_in, p["w_h"], _times(masks, recurrent), leaf.relu)
    return y, (_unmasked_final(recurrent, y, bs, h, h0),)


def _times(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    return a if b is None else (b if a is None else a * b)


def _unmasked_final(recurrent: Tensor | None, y: Tensor, bs: Tensor, h: Tensor, h0: Tensor) -> Tensor:
    """The final ``h`` (B, O) when the kernel carried it through a recurrent-dropout mask: each sequence's output
    at its last step (outputs are never masked); a sequence of no step keeps its initial state ``h0``."""
    if recurrent is None:
        return h
    batch = h.shape[0]
    if bs.numel() == 0:
        return h0
    if int(bs[-1]) == batch:  # every sequence runs every step: the last step's rows
        return y[-batch:]
    rows = torch.arange(batch)
    lengths = (bs.unsqueeze(0) > rows.unsqueeze(1)).sum(1)  # (B,), sorted order
    last = (torch.cumsum(bs, 0) - bs)[(lengths - 1).clamp(min=0)] + rows  # packed row of each last step
    last = torch.where(lengths > 0, last, 0)  # (rows of no step read row 0, then keep h0)
    ran = (lengths > 0).to(y.device).unsqueeze(1)
    return torch.where(ran, y.index_select(0, last.to(y.device)), h0)


_VF_CALLS = {"LSTM": "lstm", "GRU": "gru", "RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu"}


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
    fn = getattr(torch._VF, _VF_CALLS[leaf.torch_mode])
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


def unroll(
    cell: RNNCell, inputs: Tensor, state: Any, lengths: Tensor | None = None, reverse: bool = False
) -> tuple[Tensor, Any]:
    """Unroll a built ``cell`` over time-major ``inputs`` ``(T, B, D)`` from ``state``, on the chosen path.

    ``lengths``: ``None`` or a ``(B,)`` int64 tensor in ``[0, T]`` (on the inputs' device). Returns
    ``(outputs (T, B, cell.output_size), final_state)`` with TF's semantics (see ``reference_unroll``),
    whatever the path.

    Example::

        >>> cell = rnnkit.GRUCell(16, input_size=8)
        >>> x = torch.randn(5, 3, 8)
        >>> out, h = unroll(cell, x, cell.zero_state(3, torch.float32), torch.tensor([5, 2, 0]))
        >>> tuple(out.shape), bool(out[2:, 1].eq(0).all())
        ((5, 3, 16), True)
    """
    steps, batch = inputs.shape[0], inputs.shape[1]
    spec = lowering_for(cell) if steps and batch and inputs.device.type in _DEVICES else None
    plan = None
    if spec is not None:
        plan = make_plan(steps, batch, lengths, reverse, inputs.device)
        has_lengths = plan.lengths is not None
        route = choose_path(spec, inputs, has_lengths, state) if plan.total else None
    else:
        route = None
    if route is None:
        return reference_unroll(cell, inputs, state, lengths, reverse)
    kern = fused_kernels(inputs.device.type) if "fused" in route.values() else None
    cell.begin_sequence(batch)
    spec.draw_masks(batch, inputs, inputs.shape[-1])
    run = _Run(plan, route, kern)
    sorted_state = state if plan.perm is None else map_structure(plan.sort, state)
    y, final = _run(spec, run, plan.pack(inputs), sorted_state, None)
    return plan.unpack(y), (final if plan.perm is None else map_structure(plan.unsort, final))
