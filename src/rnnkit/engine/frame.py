"""Streaming: a stack of layers one frame at a time, at the cost of the frame's multiplies.

A frame is one time step of every layer, ``x_t (B, I) -> y_t (B, O)`` with the state carried from call to call
(``RNNLayer.step``, ``RNNLayer.stream``, a TF cell called per frame). Running it as a sequence of length 1 pays a
sequence's setup at every call: a lowering, a routing decision, the weights read and combined (torch's two biases
added, TF's peepholes stacked), one kernel dispatch per layer. A ``FramePlan`` does that once:

* it keeps every layer's kernel arguments (``Spec.kernel_weights``: views of the parameters and what is derived from
  them) and rebuilds them only when a parameter changes (its version counter, e.g. an optimizer step or
  ``load_state_dict``, or its storage, e.g. ``.to()``);
* a frame is then one call of ``frame_forward`` (``csrc/frame.cpp``, or its twin): every layer's own family kernel
  for a single step, whose multiplies run on BLAS over the weights as stored (``gemm.h``'s ``one_frame``).

The math is the family kernels' (the same code as whole sequences), so a stream fed a sequence frame by frame gives
``forward``'s outputs and final state (to float rounding: a multiply's summation order depends on its row count).

``frame_plan(leaves)`` is the predicate: a plan exists for a stack of lowered leaves of the kernel families (LSTM with
TF's options, layer-norm LSTM, both GRUs, Elman RNN) without masks; ``streams(x, plan, ...)`` says whether this
call may take it (inference on CPU in float32/float64 under the ``auto`` or ``fused`` backend). Anything else runs
the sequence path with ``T = 1``, which gives the same values.

Example::

    >>> import torch, rnnkit
    >>> lstm = rnnkit.LSTM(8, 16, num_layers=2).eval()
    >>> x = torch.randn(5, 1, 8)
    >>> with torch.inference_mode(), lstm.stream(batch=1) as s:
    ...     ys = torch.stack([s(x_t) for x_t in x])
    >>> torch.allclose(ys, lstm(x)[0], atol=1e-6)
    True
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._structure import flatten, same_nesting
from ..cells import edit_counts, register_frame_runner
from . import twin
from ._leaf_specs import GRUSpec, LNLSTMSpec, LSTMSpec, RNNSpec, Spec
from ._select import current, fused_kernels
from .lowering import LOWERINGS, StackSpec, lowering_for
from .precision import all_widened
from .twin import FRAME_LAYOUT

__all__ = ["FramePlan", "frame_plan", "streams", "cell_frame", "FRAME_FAMILIES"]

#: the leaf kinds a frame runs (each one of ``FRAME_LAYOUT``'s families)
FRAME_FAMILIES = (LSTMSpec, LNLSTMSpec, GRUSpec, RNNSpec)
_FRAME_DTYPES = (torch.float32, torch.float64)
_FRAME_BACKENDS = ("auto", "fused")
_PACKED_DTYPES = (torch.float32, torch.bfloat16)
_EMPTY = torch.empty(0)


class FramePlan:
    """One frame of ``leaves`` (one lowered leaf per layer, layer ``k + 1`` reading layer ``k``'s output).

    ``plan(x, states) -> (y, next_states)``: ``x (B, I)``, ``states`` every layer's kernel state tensors in order
    (``(h, c)`` for the LSTMs, ``(h,)`` otherwise: ``Spec.to_internal``'s), each ``(B, size)``.

    On the compiled kernels in float32 or bfloat16, a layer whose widths are multiples of 8 runs *packed*
    (``csrc/frame.cpp``): its weights re-laid out once into panels per chunk of units (``frame_pack``; a bf16 model's
    as bf16 panels), one chunk per thread, so that each core multiplies the same share of the weights at every frame,
    from its own cache (one chunk when the whole stack fits in half a core's L2). The other layers (float64, the
    twin, the layer-norm LSTM, odd widths) take their family kernel's arguments as they are (``kernel_weights``); a
    bf16 frame needs every layer packed.
    """

    def __init__(self, leaves: Sequence[Spec]):
        self.leaves = tuple(leaves)
        self.params = [p for leaf in self.leaves for p in leaf.cell.parameters()]
        self.state_counts = tuple(FRAME_LAYOUT[leaf.family][3] for leaf in self.leaves)
        self._stamp: tuple | None = None
        self._storage: list[int] | None = None
        self._inference = False
        self._dtype: torch.dtype | None = None
        self._args: tuple[list[Tensor], list[int], list[float]] = ([], [], [])
        self._kept: _Kept | None = None
        #: a bf16 frame runs packed layers only (the family kernels take float32/float64)
        self._all_pack = all(_packs(leaf) for leaf in self.leaves)

    def _placed(self) -> list[int]:
        """The parameters' storage addresses; what depends only on where they live (a frame's dtype, whether they are
        inference tensors) is read again when one of those changed (``.to()``, ``.data =``)."""
        params = self.params
        storage = [p.data_ptr() for p in params]
        if storage != self._storage:  # (a parameter is an inference tensor or not for the life of its storage)
            self._storage, self._inference = storage, any(p.is_inference() for p in params)
            placed = {(p.dtype, p.device.type) for p in params}
            dtype, device = next(iter(placed), (None, None))  # (no parameters yet: a cell not built, no frame)
            packs = self._all_pack and not self._inference  # (bf16 runs packed: weights with a version to follow)
            ok = dtype in _FRAME_DTYPES or (dtype == torch.bfloat16 and packs)
            self._dtype = dtype if len(placed) == 1 and device == "cpu" and ok else None
        return storage

    def dtype(self) -> torch.dtype | None:
        """The dtype a frame runs in: the parameters', when all are on the CPU in float32, float64 or (every layer
        packed) bfloat16, else ``None`` (no frame)."""
        self._placed()
        return self._dtype

    def arguments(self, packed: bool) -> tuple[list[Tensor], list[int], list[float]]:
        """``frame_forward``'s ``(weights, desc, scalars)``, made again only when a parameter changed since the last
        frame, or the packing or the thread count did (every frame, and unpacked, when a parameter is an inference
        tensor, made under ``torch.inference_mode``: those have no version)."""
        storage = self._placed()
        versions = None if self._inference else [p._version for p in self.params]
        packed = packed and not self._inference  # (re-packing at every frame would cost a copy of the weights)
        stamp = (storage, versions, packed, torch.get_num_threads())
        if versions is None or stamp != self._stamp:
            weights: list[Tensor] = []
            desc: list[int] = []
            scalars: list[float] = []
            bf16 = self._dtype == torch.bfloat16
            # Weights that fit in half a core's L2 run on one thread: splitting them would cost the threads' meeting
            # (a few microseconds a layer) to save less reading (measured at H = 128: 2 us a frame faster whole).
            size = sum(p.numel() for p in self.params) * (2 if bf16 else 4)
            one_core = size <= core_cache_bytes() // 2
            with torch.no_grad():  # (a frame is inference: what is derived from the weights keeps no graph)
                for leaf in self.leaves:
                    w, d, f = _packed(leaf, bf16, one_core) if packed and _packs(leaf) else _plain(leaf)
                    weights += [_EMPTY if t is None else t.detach() for t in w]
                    desc += d
                    scalars += [float(v) for v in f]
            self._args, self._stamp = (weights, desc, scalars), stamp
        return self._args

    def __call__(self, x: Tensor, states: list[Tensor], stacked: int = 0) -> tuple[Tensor, list[Tensor]]:
        """``stacked = n > 0``: ``states`` are ``n`` tensors ``(layers, B, size)`` (torch.nn's ``h_0``, ``c_0``), each
        layer's ``n`` kernel states, and come back so."""
        kern = fused_kernels("cpu")
        if kern is twin:
            weights, desc, scalars = self.arguments(False)
            y, *finals = kern.frame_forward(x, weights, states, desc, scalars, stacked)
            return y, finals
        args = self.arguments(x.dtype in _PACKED_DTYPES)
        if self._kept is None or self._kept.args is not args:  # (the compiled kernels keep them between frames)
            self._kept = _Kept(kern, args, [] if self._inference else self.params)
        out = kern.frame_run(x, states, self._kept.handle, stacked)
        if not out:  # (frame_run refuses arguments older than a parameter: arguments() has just made them current)
            raise RuntimeError("rnnkit FramePlan: a parameter changed while the frame was being called")
        return out[0], out[1:]

    def run_kept(self, x: Tensor, states: list[Tensor], stacked: int = 0) -> tuple[Tensor, list[Tensor]] | None:
        """The frame on the arguments kept by the last call, when they are still current (the compiled kernels check
        every parameter's storage, dtype and version, and the thread count), else ``None`` (nothing run). For a
        caller that checked the rest of ``streams`` itself (``frame_modes``; ``x`` in the dtype of the last call)."""
        kept = self._kept
        if kept is None or fused_kernels("cpu") is not kept.kern:
            return None
        out = kept.kern.frame_run(x, states, kept.handle, stacked)
        return (out[0], out[1:]) if out else None


class _Kept:
    """A plan's frame arguments kept by the compiled kernels under a handle (``frame_keep``) with the parameters they
    were made from, dropped with this object: a frame then passes a number instead of converting the weight list and
    description, and its parameters are checked there (together 4 us a frame)."""

    def __init__(self, kern: Any, args: tuple[list[Tensor], list[int], list[float]], params: list[Tensor]):
        self.kern, self.args = kern, args
        self.handle = kern.frame_keep(*args, params)
        weakref.finalize(self, kern.frame_drop, self.handle)


def _plain(leaf: Spec) -> tuple[tuple, list[int], tuple]:
    ints, floats = leaf.kernel_options()
    return leaf.kernel_weights(), [FRAME_LAYOUT[leaf.family][0], *ints], floats


def _packs(leaf: Spec) -> bool:
    """Whether a packed frame runs ``leaf``: the LSTM, GRU and Elman families at widths of multiples of 8."""
    if not isinstance(leaf, (LSTMSpec, GRUSpec, RNNSpec)) or leaf.cell.output_size % 8:
        return False
    return not isinstance(leaf, LSTMSpec) or leaf.num_units % 8 == 0


@functools.lru_cache(maxsize=1)
def core_cache_bytes() -> int:
    """One core's L2 cache in bytes (Linux's sysfs), or 1 MiB where the system does not say."""
    try:
        text = Path("/sys/devices/system/cpu/cpu0/cache/index2/size").read_text().strip()
        scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
        return int(text.rstrip("KM")) * scale
    except (OSError, ValueError):
        return 1 << 20


def _chunks(units: int, depth: int, gates: int, one_core: bool) -> int:
    return 1 if one_core else torch.ops.rnnkit.frame_chunks(units, 1, depth, gates)


def _packed(leaf: Spec, bf16: bool, one_core: bool) -> tuple[tuple, list[int], tuple]:
    """``leaf``'s packed layer for ``csrc/frame.cpp`` (its description there). ``bf16``: a bf16 model's, its weights
    read as the sequence path reads them (``precision.widened``: the same float32 biases) and packed in bf16.
    ``one_core``: one chunk per multiply (the whole stack's weights stay in one core's cache)."""

    def _pack(mats: list[Tensor], units: int, gates: int) -> tuple[Tensor, int]:
        chunks = _chunks(units, sum(m.shape[0] for m in mats), gates, one_core)
        return torch.ops.rnnkit.frame_pack(mats, units, gates, chunks, bf16), chunks

    ints, floats = leaf.kernel_options()
    if isinstance(leaf, LSTMSpec):
        w_x, bias, w_h, peep, w_proj = all_widened(leaf.kernel_weights())
        units = leaf.num_units
        w, chunks = _pack([w_x, w_h], units, 4)
        w_p, chunks_p = _pack([w_proj], w_proj.shape[1], 1) if w_proj is not None else (None, 1)
        bias = bias.contiguous() if bias is not None else w_x.new_zeros(4 * units)
        peep = peep.contiguous() if peep is not None else None
        return (w, bias, peep, w_p), [10, *ints, chunks, chunks_p], floats
    if isinstance(leaf, GRUSpec):
        w_x, bias_x, w_h, bias_h, w_xn, w_hn = all_widened(leaf.kernel_weights())
        units = w_h.shape[0]
        if w_xn is None:  # the candidate's columns inside w_x, w_h
            w_x, w_xn, w_h, w_hn = w_x[:, : 2 * units], w_x[:, 2 * units :], w_h[:, : 2 * units], w_h[:, 2 * units :]
        zeros = w_h.new_zeros(3 * units)
        bias_x = zeros if bias_x is None else bias_x
        bias_h = zeros if bias_h is None else bias_h
        w_rz, chunks = _pack([w_x, w_h], units, 2)
        w_xn_p, _ = _pack([w_xn], units, 1)
        w_hn_p, _ = _pack([w_hn], units, 1)
        b_rz = (bias_x[: 2 * units] + bias_h[: 2 * units]).contiguous()
        weights = (w_rz, w_xn_p, w_hn_p, b_rz, bias_x[2 * units :].contiguous(), bias_h[2 * units :].contiguous())
        return weights, [12, *ints, chunks], ()
    w_x, bias, w_h = all_widened(leaf.kernel_weights())
    units = w_h.shape[0]
    w, chunks = _pack([w_x, w_h], units, 1)
    return (w, bias.contiguous() if bias is not None else w_h.new_zeros(units)), [13, *ints, chunks], ()


def frame_plan(leaves: Sequence[Spec | None]) -> FramePlan | None:
    """A plan for ``leaves`` (one per layer), or ``None`` when a frame cannot run them: a layer not lowered, of
    another kind (a compiled cell, a wrapper), or with masks (recurrent dropout in training)."""
    if not leaves or any(type(leaf) not in FRAME_FAMILIES or leaf.state_masked() for leaf in leaves):
        return None
    return FramePlan(leaves)  # type: ignore[arg-type]


def streams(plan: FramePlan | None, x: Tensor, states: Sequence[Tensor] = ()) -> bool:
    """Whether this call runs as a frame of ``plan``: a plan, CPU inputs and parameters alike in float32, float64 or
    (on the compiled kernels, every layer packed) bfloat16, no gradient asked for (inference), no autocast, and the
    ``auto`` or ``fused`` backend (``use("reference")`` and ``use("torch")`` keep their paths)."""
    if plan is None or not frame_modes(plan, x, states):
        return False
    return x.dtype == plan.dtype() and not (x.dtype == torch.bfloat16 and fused_kernels("cpu") is twin)


def frame_modes(plan: FramePlan, x: Tensor, states: Sequence[Tensor] = ()) -> bool:
    """``streams`` but for the dtypes: a CPU ``x``, the backend, no autocast, no gradient asked for."""
    if not x.is_cpu or current()[0] not in _FRAME_BACKENDS or torch.is_autocast_enabled("cpu"):
        return False  # (under autocast the sequence path gives torch.nn's dtypes: engine.autocast)
    return not torch.is_grad_enabled() or not (
        x.requires_grad or any(p.requires_grad for p in plan.params) or any(s.requires_grad for s in states)
    )


# ---- a TF cell called per frame ---------------------------------------------------------------------------------

# cell -> (fingerprint, spec, plan): the cell's lowering and frame plan for its configuration
_CELL_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _cell_entry(cell: Any) -> tuple[Spec | None, FramePlan | None, Any, list[int]]:
    """``(spec, plan, state_size, the state leaves' sizes)`` of ``cell``'s present configuration."""
    key = edit_counts(cell)  # what a cell's lowering reads besides tensor values: its options, mode, parameters
    hit = _CELL_PLANS.get(cell)
    if hit is None or hit[0] != key:
        spec = lowering_for(cell)
        if isinstance(spec, StackSpec) and all(len(layer.leaves()) == 1 and layer.leaves()[0] is layer
                                               for layer in spec.layers):  # fmt: skip
            plan = frame_plan(spec.layers)
        else:
            plan = frame_plan([spec]) if spec is not None else None
        state_size = cell.state_size
        hit = _CELL_PLANS[cell] = (key, spec, plan, state_size, flatten(state_size))
    return hit[1:]


def cell_frame(cell: Any, inputs: Tensor, state: Any) -> tuple[Tensor, Any] | None:
    """A call ``cell(inputs, state)`` of a built cell as a frame (``inputs (B, D)``, checked by ``_check_inputs``),
    or ``None`` where the frame's predicate says no or an argument is not as ``forward`` requires (its own checks then
    run, and say what is wrong). Registered as the cells' frame runner."""
    if inputs.device.type != "cpu" or inputs.dtype not in _FRAME_DTYPES or current()[0] not in _FRAME_BACKENDS:
        return None
    if torch.is_grad_enabled() and (inputs.requires_grad or any(p.requires_grad for p in cell.parameters())):
        return None  # (first, so that training never pays for a lowering)
    if type(cell) not in LOWERINGS or any(type(c) not in LOWERINGS for c in getattr(cell, "cells", ())):
        return None  # (only the table's cells frame: a user's cell would be captured for nothing)
    spec, plan, state_size, sizes = _cell_entry(cell)
    if plan is None:
        return None
    leaves = flatten(state)
    if len(leaves) != len(sizes) or not same_nesting(state, state_size):
        return None
    shape, dtype, device = inputs.shape[0], inputs.dtype, inputs.device
    for leaf, size in zip(leaves, sizes, strict=True):
        if leaf.shape != (shape, size) or leaf.dtype != dtype or leaf.device != device:
            return None
    if not streams(plan, inputs, leaves):
        return None
    if isinstance(spec, StackSpec):
        flat = [t for leaf, s in zip(plan.leaves, spec.split_state(state), strict=True) for t in leaf.to_internal(s)]
    else:
        flat = list(plan.leaves[0].to_internal(state))
    y, finals = plan(inputs.contiguous(), [t.contiguous() for t in flat])
    states, at = [], 0
    for leaf, count in zip(plan.leaves, plan.state_counts, strict=True):
        states.append(leaf.from_internal(*finals[at : at + count]))
        at += count
    return y, (spec.join_state(states) if isinstance(spec, StackSpec) else states[0])


register_frame_runner(cell_frame)
