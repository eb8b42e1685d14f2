"""Streaming a torch-style layer: ``layer.step(x_t, state)`` and ``with layer.stream(batch) as s: y_t = s(x_t)``.

Both run a frame of the layer's stack (``rnnkit.engine.frame``) when the engine's predicate allows (``streams``:
inference on CPU in float32, float64 or bfloat16 outside ``torch.autocast``, a one-direction stack of the kernel
families); otherwise the layer's ``forward`` on a sequence of one step, which gives the same values (under autocast:
torch.nn's dtypes). The states at the boundary are ``forward``'s: ``h_0`` (and ``c_0``), each
``(num_layers, batch, size)``.

``LayerStream`` keeps the state between frames in the kernels' own form (one ``(batch, size)`` tensor per layer and
state part), so a frame costs one kernel call and no conversion; ``s.state`` gives it in ``forward``'s form.

Example::

    >>> import torch, rnnkit
    >>> gru = rnnkit.GRU(4, 8, num_layers=2).eval()
    >>> with torch.no_grad(), gru.stream(batch=3) as s:
    ...     y1 = s(torch.randn(3, 4))
    ...     y2 = s(torch.randn(3, 4))
    >>> tuple(y2.shape), tuple(s.state.shape)
    ((3, 8), (2, 3, 8))
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import Tensor

from ..engine import LayerStack
from ..engine.frame import FramePlan, frame_modes, frame_plan, streams
from ..engine.precision import LOW_PRECISION, narrowed, widened
from ..errors import NotATensorError, ShapeError

__all__ = ["LayerStream", "stack_frame_plan", "frame_states", "layer_states", "step_frame", "checked_step"]

# stack node -> (its frame plan or None, whether its states map straight onto the kernels'); weak: a node lives as
# long as its layer's configuration
_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _plan_entry(node: LayerStack) -> tuple[FramePlan | None, bool]:
    hit = _PLANS.get(node)
    if hit is None:
        ok = node.directions == 1 and node.lowered and not (node.dropout and len(node.layers) > 1)
        plan = frame_plan([units[0] for units in node.specs]) if ok else None
        hit = _PLANS[node] = (plan, plan is not None and _direct(node, plan))
    return hit


def _direct(node: LayerStack, plan: FramePlan) -> bool:
    """Whether each layer's part ``k`` of ``forward``'s ``(h[, c])`` is the kernels' state ``k`` as it is (checked
    once by identity on placeholders): then a frame indexes the stacked parts instead of converting through the
    cells' state structures."""
    to_state, from_state = node.stacked
    for leaf in plan.leaves:
        probe = tuple(torch.empty(0) for _ in node.state_sizes)
        inside = leaf.to_internal(to_state(probe))
        back = from_state(leaf.from_internal(*probe))
        if len(inside) != len(probe) or any(a is not b for a, b in zip(inside, probe, strict=False)):
            return False
        if len(back) != len(probe) or any(a is not b for a, b in zip(back, probe, strict=False)):
            return False
    return True


def stack_frame_plan(node: LayerStack) -> FramePlan | None:
    """The frame plan of a one-direction stack node whose layers' dropout is off, or ``None`` (decided once)."""
    return _plan_entry(node)[0]


def frame_states(
    node: LayerStack, plan: FramePlan, parts: tuple[Tensor, ...] | None, x: Tensor
) -> list[Tensor] | None:
    """``forward``'s ``(h_0[, c_0])`` (each ``(L, B, size)``, or ``None`` for zeros) -> the kernels' state tensors,
    layer after layer; ``None`` when a part is not placed as ``x`` (the sequence path then says so)."""
    if parts is None:
        return [t for leaf in plan.leaves for t in leaf.zero_internal(x.shape[0], x)]
    if any(p.dtype != x.dtype or p.device != x.device for p in parts):
        return None
    per_layer = node.split(parts)
    return [t for leaf, units in zip(plan.leaves, per_layer, strict=True) for t in leaf.to_internal(units[0])]


def layer_states(node: LayerStack, plan: FramePlan, flat: list[Tensor]) -> tuple[Tensor, ...]:
    """The kernels' state tensors, layer after layer -> ``forward``'s ``(h_n[, c_n])``."""
    finals, at = [], 0
    for leaf, count in zip(plan.leaves, plan.state_counts, strict=True):
        finals.append((leaf.from_internal(*flat[at : at + count]),))
        at += count
    return node.join(finals)


def step_frame(layer: Any, x: Tensor, parts: tuple[Tensor, ...] | None) -> tuple[Tensor, tuple[Tensor, ...]] | None:
    """``layer.step`` as a frame, for a checked ``x (B, I)`` and ``parts`` (``forward``'s ``h_0`` parts, checked and
    placed, or ``None``), or ``None`` where the frame's predicate says no."""
    node = layer.engine_stack()
    plan, direct = _plan_entry(node)
    if plan is None or not streams(plan, x, parts or ()):
        return None
    x = x.contiguous()
    if direct:  # the kernel takes and gives torch.nn's stacked (h[, c]) itself
        sizes = node.state_sizes
        _CHECKED[layer] = (node, plan, x.shape, x.dtype, tuple((len(plan.leaves), x.shape[0], n) for n in sizes))
        if parts is None:
            parts = tuple(x.new_zeros(len(plan.leaves), x.shape[0], size) for size in sizes)
        y, finals = plan(x, [p.contiguous() for p in parts], len(parts))
        return y, tuple(finals)
    flat = frame_states(node, plan, parts, x)
    if flat is None:
        return None
    y, flat = plan(x, flat)
    return y, layer_states(node, plan, flat)


# layer -> what its last framed step() checked: (stack node, plan, x's shape, dtype, the state parts' shapes)
_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def checked_step(layer: Any, x: Any, hx: Any) -> tuple[Tensor, Any] | None:
    """``layer.step(x, hx)`` as a frame without its argument checks, when the call is placed exactly as the last
    framed step was (the same configuration, ``x`` and ``hx`` of the same shapes and dtype, batched, on the CPU) and
    the frame's predicate still holds; else ``None`` (``step`` then checks everything). Per frame this costs a few
    comparisons instead of the checks' few microseconds, a streamed frame's budget."""
    hit = _CHECKED.get(layer)
    if hit is None or type(x) is not Tensor or not x.is_cpu:
        return None
    node, plan, shape, dtype, part_shapes = hit
    if x.shape != shape or x.dtype != dtype or layer.engine_stack() is not node:
        return None
    if hx is None:
        parts = [x.new_zeros(s) for s in part_shapes]
    else:  # forward's form exactly: a tensor for one part, a tuple of as many tensors for several
        single = len(part_shapes) == 1
        parts = ([hx] if type(hx) is Tensor else []) if single else (list(hx) if type(hx) is tuple else [])
        if len(parts) != len(part_shapes):
            return None
        for part, s in zip(parts, part_shapes, strict=True):
            if type(part) is not Tensor or part.shape != s or part.dtype != dtype or not part.is_cpu:
                return None
    if not frame_modes(plan, x, parts):
        return None
    x, parts = x.contiguous(), [p.contiguous() for p in parts]
    # The kept arguments, while the kernels find every parameter as they were made from (else the whole check)
    done = plan.run_kept(x, parts, len(parts))
    if done is None:
        if not streams(plan, x, parts):
            return None
        done = plan(x, parts, len(parts))
    y, finals = done
    return y, finals[0] if len(finals) == 1 else tuple(finals)


class LayerStream:
    """``layer``'s state carried frame to frame for ``batch`` rows: ``y_t = s(x_t)``, ``x_t (batch, input_size)``
    -> ``y_t (batch, hidden)`` (``proj_size`` with a projection); ``s.state``: ``forward``'s ``h_n`` of the frames so
    far. ``hx``: ``forward``'s ``h_0`` form (``None`` for zeros). A context manager for readability: leaving it
    ends nothing that needs ending."""

    def __init__(self, layer: Any, batch: int = 1, hx: Any = None):
        name = type(layer).__name__
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"{name}.stream: batch must be a positive int, got {batch!r}")
        if layer.bidirectional:
            raise ValueError(
                f"{name}.stream: a bidirectional layer cannot stream (its backward direction starts from the "
                "sequence's end); call forward on the whole sequence"
            )
        self.layer, self.batch = layer, batch
        self._shape = (batch, layer.input_size)
        self._parts: tuple[Tensor, ...] | None = None
        self._flat: list[Tensor] | None = None  # the kernels' states, when the last frame ran as one ...
        self._made_by: tuple[LayerStack, FramePlan] | None = None  # ... of this node's plan
        self._frame_dtype: torch.dtype | None = None  # ... for an x of this dtype
        #: how the last frame ran: ``"frame"`` (one kernel call, ``rnnkit.engine.frame``) or ``"sequence"``
        #: (``forward`` on one step: outside the frame's predicate, e.g. with autograd on)
        self.path = ""
        self.reset(hx)

    def __enter__(self) -> LayerStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def reset(self, hx: Any = None) -> None:
        """Start again from ``hx`` (``forward``'s ``h_0`` form; ``None``: zeros)."""
        self._parts = None if hx is None else self.layer._check_hidden(hx, self.batch, False)
        self._flat = None

    @property
    def state(self) -> Any:
        """``forward``'s ``h_n`` (and ``c_n``) after the frames so far (zeros before the first)."""
        layer = self.layer
        if self._flat is not None and self._made_by is not None:
            dtype = self._made_by[1].dtype() or self._flat[0].dtype  # (a bf16 layer's states: rounded once, here)
            self._parts = tuple(narrowed(t, dtype) for t in layer_states(*self._made_by, self._flat))
            self._flat = None
        if self._parts is None:
            like = next(iter(layer.parameters()))
            sizes = layer._hidden_sizes()
            stacked = layer.num_layers
            self._parts = tuple(like.new_zeros(stacked, self.batch, size) for size in sizes)
        return self._parts[0] if len(self._parts) == 1 else self._parts

    def __call__(self, x: Tensor) -> Tensor:
        layer = self.layer
        if not isinstance(x, Tensor):
            raise NotATensorError(f"{type(layer).__name__}.stream: expected x_t to be a tensor, got {type(x).__name__}")
        if x.shape != self._shape:
            raise ShapeError(
                f"{type(layer).__name__}.stream: expected x_t of shape (batch, input_size) = {self._shape}, "
                f"got {tuple(x.shape)}"
            )
        node = layer.engine_stack()
        plan = stack_frame_plan(node)
        flat = self._flat
        made = self._made_by
        if flat is not None and made is not None and made[1] is plan and x.dtype == self._frame_dtype:
            # as the last frame: the kept arguments, while the kernels find every parameter as they were made from
            done = plan.run_kept(x.contiguous(), flat) if frame_modes(plan, x, flat) else None
            if done is not None:
                y, self._flat = done
                return y
        if streams(plan, x, self._flat or ()):
            if self._flat is not None and (self._made_by is None or self._made_by[1] is not plan):
                _ = self.state  # (the layer's configuration changed: its states through forward's form)
            flat = self._flat
            if flat is None:  # (a bf16 stream carries its states in float32, as forward carries them between steps)
                flat = frame_states(node, plan, self._parts, x)
                flat = [widened(t) for t in flat] if flat is not None and x.dtype in LOW_PRECISION else flat
            if flat is not None:
                y, self._flat = plan(x.contiguous(), flat)
                self._parts, self._made_by, self.path = None, (node, plan), "frame"
                self._frame_dtype = x.dtype
                return y
        fresh = self._parts is None and self._flat is None  # (zeros: forward's own, in the dtypes it gives them)
        y, hidden = layer.step(x, None if fresh else self.state)  # the sequence path: its checks, then forward
        self._parts, self._flat = (hidden if isinstance(hidden, tuple) else (hidden,)), None
        self.path = "sequence"
        return y
