"""Whole-layer path for ``rnnkit.RNN/LSTM/GRU``: one call of torch's own kernel for every layer and direction.

A layer whose configuration is torch's math (``LSTM`` without ``forget_bias``, peepholes, ``cell_clip`` or
layer norm; ``GRU(reset_after=True)``; any ``RNN``; no zoneout; no recurrent dropout in training) is exactly
``torch.nn.LSTM/GRU/RNN`` with the same flat weights, so it runs as ``torch.nn`` does: one
``torch._VF.lstm/gru/rnn_tanh/rnn_relu`` call over all layers and directions (oneDNN or cuDNN), torch's
inter-layer dropout included. ``run_layer`` returns ``None`` whenever the predicate does not hold, and the
layer then unrolls cell by cell through ``rnnkit.engine.unroll`` (fused kernels or the reference loop).

Under ``auto`` on CPU only the LSTM without projection and without ``lengths``, in inference at a batch above
``FUSED_MAX_BATCH`` (4) rows, takes this path (oneDNN); GRU, vanilla RNN, projections, variable lengths, training
and small batches run faster on rnnkit's fused kernels. On CUDA every torch-math layer takes it (cuDNN),
``lengths`` included (packed).

``fused_stack`` is the fused kernels' whole-layer path: a one-direction stack of full-length sequences on CPU
runs each layer as one fused kernel call, skipping the per-call decisions of ``rnnkit.engine.unroll``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ._select import current, fused_kernels
from .lowering import lowering_for
from .plan import full_batch_sizes
from .unroll import _FUSED_DTYPES, FUSED_MAX_BATCH, _run_fused, trains

__all__ = ["torch_math", "run_layer", "fused_stack"]

_VF_CALLS = {"LSTM": "lstm", "GRU": "gru", "RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu"}


def torch_math(layer: Any) -> bool:
    """Whether ``layer`` (an ``rnnkit.RNN/LSTM/GRU``) computes exactly what ``torch.nn`` does with its weights."""
    if layer.zoneout or (layer.training and layer.recurrent_dropout):
        return False
    if layer.mode == "LSTM":
        return not (layer.forget_bias or layer.peepholes or layer.cell_clip is not None or layer.layer_norm)
    if layer.mode == "GRU":
        return layer.reset_after
    return layer.mode in ("RNN_TANH", "RNN_RELU")


def _route(layer: Any, x: Tensor, lengths: Tensor | None) -> bool:
    backend = current()[0]
    if backend not in ("auto", "torch") or not torch_math(layer) or not x.shape[0] or not x.shape[1]:
        return False  # (torch's kernels refuse empty sequences and batches; the runner returns empty outputs)
    if backend == "auto" and x.device.type == "cpu" and (layer.mode != "LSTM" or layer.proj_size):
        return False  # decided without looking further (this runs on every call of a small layer)
    weight = getattr(layer, layer._flat_weights_names[0])
    if weight.dtype != x.dtype or weight.device != x.device or x.device.type not in ("cpu", "cuda"):
        return False
    if lengths is not None and not bool((lengths > 0).all()):
        return False  # torch's packing refuses empty sequences; the cell-by-cell path handles them
    if backend == "torch" or x.device.type != "cpu":
        return True
    # CPU under auto: oneDNN runs the LSTM without projection on whole sequences, in inference above a batch of
    # FUSED_MAX_BATCH rows; the rest is faster fused (see rnnkit.engine.unroll.FUSED_MAX_BATCH).
    fast_dtype = x.dtype in (torch.float32, torch.float64)
    if not (layer.mode == "LSTM" and not layer.proj_size and lengths is None and fast_dtype):
        return False
    return x.shape[1] > FUSED_MAX_BATCH and not trains(layer)


def run_layer(layer: Any, x: Tensor, hx: Any, lengths: Tensor | None) -> tuple[Tensor, tuple[Tensor, ...]] | None:
    """``(output (T, B, D * R), (h_n[, c_n]) each (L * D, B, size))`` from torch's kernel, or ``None``.

    ``x`` is time-major ``(T, B, I)``; ``hx`` the layer's validated ``h_0`` (``(h_0, c_0)`` for the LSTM,
    each ``(L * D, B, size)``) or ``None``; ``lengths`` ``(B,)`` int64 or ``None``.
    """
    if x.device.type not in ("cpu", "cuda"):
        return None  # (meta tensors, other accelerators: torch's kernels are not there, nor lengths' values)
    if lengths is not None and bool((lengths == x.shape[0]).all()):
        lengths = None
    if not _route(layer, x, lengths):
        return None
    batch, stacked = x.shape[1], layer.num_layers * (2 if layer.bidirectional else 1)
    lstm = layer.mode == "LSTM"
    sizes = (layer.proj_size or layer.hidden_size, layer.hidden_size) if lstm else (layer.hidden_size,)
    if hx is None:
        parts = tuple(x.new_zeros(stacked, batch, size) for size in sizes)
    else:
        parts = tuple(hx) if lstm else (hx,)
    fn = getattr(torch._VF, _VF_CALLS[layer.mode])
    args = (layer._flat_weights, layer.bias, layer.num_layers, layer.dropout, layer.training, layer.bidirectional)
    state = parts if lstm else parts[0]
    if lengths is None:
        out, *final = fn(x, state, *args, False)
        return out, tuple(final)
    packed = pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
    order = packed.sorted_indices.to(x.device)
    state = tuple(p.index_select(1, order) for p in parts) if lstm else parts[0].index_select(1, order)
    data, *final = fn(packed.data, packed.batch_sizes, state, *args)
    out, _ = pad_packed_sequence(packed._replace(data=data), total_length=x.shape[0])
    back = packed.unsorted_indices.to(x.device)
    return out, tuple(f.index_select(1, back) for f in final)


def _lowered(cell: Any) -> Any:
    """``lowering_for(cell)``, kept on the cell per training mode. A layer's cells keep their options (the layer
    builds a new cell when an option or a parameter object changes), so only the mode can change the spec. (On
    the cell, not in a weak map: the spec refers to its cell, which would keep a weak map's key alive.)"""
    hit = cell.__dict__.get("_engine_spec")
    if hit is None or hit[0] != cell.training:
        hit = cell.__dict__["_engine_spec"] = (cell.training, lowering_for(cell))
    return hit[1]


def fused_stack(layer: Any, cells: list[list[Any]], x: Tensor, states: Any, lengths: Tensor | None) -> Any:
    """A one-direction stack of full-length sequences on CPU: each layer one fused kernel call, or ``None``.

    The same kernels ``rnnkit.engine.unroll`` runs, without its per-call decisions (lowering, routing, the
    packing plan, dtype and device checks), which the layer has already settled: at batch 1 those cost a
    fifth of the whole call. ``cells[k][0]`` is layer ``k``'s cell, ``states[k][0]`` its state or ``None`` for
    zeros (``states`` may be ``None``). Returns ``(outputs (T, B, R), [[final state] per layer])``.
    """
    if lengths is not None or layer.bidirectional or current()[0] not in ("auto", "fused"):
        return None
    weight = layer._parameters[layer._flat_weights_names[0]]
    if x.device.type != "cpu" or x.dtype not in _FUSED_DTYPES or weight.device != x.device:
        return None
    if layer.training and layer.dropout and layer.num_layers > 1:
        return None  # dropout between layers: the runner's
    specs = [_lowered(row[0]) for row in cells]
    if any(spec is None for spec in specs):
        return None  # zoneout, a projected layer norm: the reference loop
    steps, batch = x.shape[0], x.shape[1]
    if not steps or not batch:
        return None  # nothing to run: the runner returns the empty outputs and the initial states
    kern, batch_sizes = fused_kernels("cpu"), full_batch_sizes(steps, batch)
    h = x.reshape(steps * batch, x.shape[-1])  # (T * B, I): full batches are already packed rows
    finals = []
    for k, spec in enumerate(specs):
        state = None if states is None else states[k][0]
        internal = spec.zero_internal(batch, x) if state is None else spec.to_internal(state)
        spec.draw_masks(batch, x, h.shape[-1])  # recurrent dropout: where the reference loop draws it, layer by layer
        recurrent = spec.recurrent_rows(lambda m: m)  # full batches: rows in the batch's order
        h, final = _run_fused(spec, kern, batch_sizes, h, internal, None, recurrent)  # h: (T * B, R)
        finals.append((spec.from_internal(*final),))
    return h.view(steps, batch, h.shape[-1]), finals
