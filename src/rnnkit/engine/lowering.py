"""Lowering: what a cell *is*, in terms of the kernels that can run it.

``lowering_for(cell)`` dispatches on the exact cell class and its options (never on trial and
error) and returns a *spec*, a small tree mirroring the cell, or ``None`` when only the reference
loop can run it (a user's subclass, a non-tanh activation, per-step dropout, zoneout...):

* ``LSTMSpec``: TF's ``LSTMCell``/``BasicLSTMCell`` (peepholes, ``cell_clip``, ``num_proj``,
  ``proj_clip``, ``forget_bias``), ``LayerNormBasicLSTMCell(layer_norm=False)``, torch-layout LSTM
  cells. It equals ``torch.lstm`` (``torch_mode == "LSTM"``) without peepholes and clips: TF's
  kernel is then reordered i, j, f, o -> i, f, g, o with ``forget_bias`` folded into the forget-gate
  bias, differentiably, so gradients reach TF's ``kernel`` and ``bias``.
* ``LNLSTMSpec``: ``LayerNormBasicLSTMCell`` (and the layer-norm torch-layout LSTM): fused only.
* ``GRUSpec``: TF's ``GRUCell`` (reset-before, fused only) and torch-layout GRUs (reset-after =
  ``torch.gru``).
* ``RNNSpec``: ``BasicRNNCell`` and the torch-layout RNN, tanh or relu (= ``torch.rnn_tanh/relu``).
* ``StackSpec`` (``MultiRNNCell``, layer by layer), ``DropoutSpec`` (``DropoutWrapper``: identity in
  eval; in training only ``variational_recurrent=True``, whose masks are fixed per-sequence
  multipliers), ``ResidualSpec`` (``ResidualWrapper`` without ``residual_fn``).

Every spec reads the cell's parameters when it runs, so autograd sees the cell's own tensors.

Example::

    >>> spec = lowering_for(rnnkit.BasicLSTMCell(8, input_size=4))
    >>> type(spec).__name__, spec.torch_mode
    ('LSTMSpec', 'LSTM')
    >>> lowering_for(rnnkit.BasicLSTMCell(8, activation="relu")) is None
    True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._structure import LSTMStateTuple, flatten, map_structure, pack_as, zero_state_for
from ..cells import (
    BasicLSTMCell,
    BasicRNNCell,
    DropoutWrapper,
    GRUCell,
    LayerNormBasicLSTMCell,
    LSTMCell,
    MultiRNNCell,
    ResidualWrapper,
)
from ..cells._base import RNNCell
from ..cells.layer_norm import _TF_LAYER_NORM_EPS
from ._tf_weights import split_kernel, tf_lstm_as_torch

__all__ = [
    "lowering_for",
    "Spec",
    "LSTMSpec",
    "LNLSTMSpec",
    "GRUSpec",
    "RNNSpec",
    "StackSpec",
    "DropoutSpec",
    "ResidualSpec",
]

_TF_ORDER = (0, 1, 2, 3)  # blocks of (i, g, f, o) in TF's columns i, j, f, o
_TORCH_ORDER = (0, 2, 1, 3)  # ... in torch's rows i, f, g, o

try:  # the torch-layout cells of rnnkit.RNN/LSTM/GRU (absent in older checkouts)
    from ..cells.torch_layout import TorchGRUCell, TorchLSTMCell, TorchRNNCell
except ImportError:  # pragma: no cover - only while the layers are not installed
    TorchGRUCell = TorchLSTMCell = TorchRNNCell = None  # type: ignore[assignment,misc]


class Spec:
    """A node of a lowered cell. Leaves run kernels; inner nodes combine their children."""

    #: the torch kernel with identical math (``"LSTM"``, ``"GRU"``, ``"RNN_TANH"``, ``"RNN_RELU"``) or None
    torch_mode: str | None = None
    #: the cell this spec was lowered from (set on the top-level spec by ``lowering_for``)
    root: Any = None

    def leaves(self) -> list[Spec]:
        return [self]

    def state_masked(self) -> bool:
        """Whether a wrapper in this subtree multiplies the recurrent state by masks (fused kernels only)."""
        return False

    def draw_masks(self, batch: int, like: Tensor, input_depth: int) -> None:
        """Draw this subtree's per-sequence dropout masks, in the reference loop's order."""


class _Leaf(Spec):
    def __init__(self, cell: RNNCell):
        self.cell = cell

    def zero_internal(self, batch: int, like: Tensor) -> tuple[Tensor, ...]:
        """The kernels' zero state ``(h (B, O),)`` (LSTMs: ``(h, c (B, H))``), without building the cell's."""
        return (like.new_zeros(batch, self.cell.output_size),)


# ---- LSTM ------------------------------------------------------------------------------------


class LSTMSpec(_Leaf):
    """An LSTM layer: ``w_x (I, 4H)``, ``w_h (P, 4H)`` in ``x @ W`` orientation, gate blocks ``gate_order``."""

    def __init__(self, cell: RNNCell, layout: str, **options: Any):
        super().__init__(cell)
        self.layout = layout  # "tf" (kernel/bias), "torch" (weight_ih/...), "tf_ln_off" (LayerNormBasicLSTMCell)
        self.peepholes: bool = options.get("peepholes", False)
        self.cell_clip: float = options.get("cell_clip") or 0.0
        self.proj_clip: float = options.get("proj_clip") or 0.0
        self.forget_bias: float = float(options.get("forget_bias", 0.0))
        self.has_proj: bool = options.get("proj", False)
        self.state_is_tuple: bool = options.get("state_is_tuple", True)
        self.num_units: int = options["num_units"]
        self.gate_order = _TF_ORDER if layout != "torch" else _TORCH_ORDER
        exact = not self.peepholes and not self.cell_clip and not self.proj_clip
        if layout == "torch":
            exact = exact and self.forget_bias == 0.0  # torch-layout: biases are stored, fold nothing
        self.torch_mode = "LSTM" if exact else None

    # -- state ---------------------------------------------------------------------------------
    def to_internal(self, state: Any) -> tuple[Tensor, Tensor]:
        if self.state_is_tuple:
            c, h = state
        else:
            c, h = state[:, : self.num_units], state[:, self.num_units :]
        return h, c

    def from_internal(self, h: Tensor, c: Tensor) -> Any:
        return LSTMStateTuple(c, h) if self.state_is_tuple else torch.cat([c, h], 1)

    def zero_internal(self, batch: int, like: Tensor) -> tuple[Tensor, Tensor]:
        return like.new_zeros(batch, self.cell.output_size), like.new_zeros(batch, self.num_units)

    def split_masks(self, masks: Any) -> tuple[Tensor | None, Tensor | None]:
        """``(mask_h, mask_c)`` from masks in the state's structure."""
        if masks is None:
            return None, None
        if self.state_is_tuple:
            m_c, m_h = masks
            return m_h, m_c
        return (masks[:, self.num_units :], masks[:, : self.num_units]) if masks is not None else (None, None)

    # -- parameters ----------------------------------------------------------------------------
    def fused_params(self) -> dict[str, Tensor | None]:
        cell = self.cell
        if self.layout == "torch":
            bias = cell.bias_ih + cell.bias_hh if cell.bias else None
            peep = torch.stack([cell.weight_ci, cell.weight_cf, cell.weight_co]) if self.peepholes else None
            w_proj = cell.weight_hr.t() if self.has_proj else None
            return dict(w_x=cell.weight_ih.t(), w_h=cell.weight_hh.t(), bias=bias, peep=peep, w_proj=w_proj)
        depth = cell.input_depth
        peep = torch.stack([cell.w_i_diag, cell.w_f_diag, cell.w_o_diag]) if self.peepholes else None
        w_proj = cell.projection.kernel if self.has_proj else None
        w_x, w_h = split_kernel(depth, cell.kernel)
        return dict(w_x=w_x, w_h=w_h, bias=cell.bias, peep=peep, w_proj=w_proj)

    def torch_params(self) -> tuple[list[Tensor], bool]:
        """torch's flat weights ``[w_ih, w_hh, b_ih, b_hh(, w_hr)]`` and ``has_biases``."""
        cell = self.cell
        if self.layout == "torch":
            params = [cell.weight_ih, cell.weight_hh]
            if cell.bias:
                params += [cell.bias_ih, cell.bias_hh]
            if self.has_proj:
                params.append(cell.weight_hr)
            return params, bool(cell.bias)
        return tf_lstm_as_torch(self.cell, self.forget_bias, self.has_proj), True


class LNLSTMSpec(_Leaf):
    """A layer-normalised LSTM layer (TF contrib's ``LayerNormBasicLSTMCell`` math): fused kernels only."""

    def __init__(self, cell: RNNCell, layout: str, num_units: int, forget_bias: float):
        super().__init__(cell)
        self.layout = layout
        self.num_units = num_units
        self.forget_bias = float(forget_bias)
        self.gate_order = _TF_ORDER if layout == "tf" else _TORCH_ORDER
        self.state_is_tuple = True
        self.eps = _TF_LAYER_NORM_EPS  # the cells' own (one definition)

    to_internal = LSTMSpec.to_internal
    from_internal = LSTMSpec.from_internal
    zero_internal = LSTMSpec.zero_internal
    split_masks = LSTMSpec.split_masks

    def fused_params(self) -> dict[str, Tensor | None]:
        cell = self.cell
        if self.layout == "tf":
            norms = [getattr(cell, s) for s in ("input", "transform", "forget", "output", "state")]
            w_x, w_h = split_kernel(cell.input_depth, cell.kernel)
            return dict(
                w_x=w_x,
                w_h=w_h,
                bias=None,
                gamma=torch.stack([m.gamma for m in norms]),
                beta=torch.stack([m.beta for m in norms]),
            )
        n = self.num_units
        g, b = cell.weight_ln_gates, cell.bias_ln_gates  # (4H,) in torch's i, f, g, o
        return dict(
            w_x=cell.weight_ih.t(),
            w_h=cell.weight_hh.t(),
            bias=cell.bias_ih + cell.bias_hh if cell.bias else None,
            gamma=torch.stack([g[:n], g[2 * n : 3 * n], g[n : 2 * n], g[3 * n :], cell.weight_ln_cell]),
            beta=torch.stack([b[:n], b[2 * n : 3 * n], b[n : 2 * n], b[3 * n :], cell.bias_ln_cell]),
        )


# ---- GRU and vanilla RNN --------------------------------------------------------------------


class GRUSpec(_Leaf):
    """A GRU layer, blocks r, z, n: ``w_x (I, 3H)``, ``w_h (H, 3H)``; reset-after adds ``bias_h``."""

    def __init__(self, cell: RNNCell, layout: str, reset_after: bool):
        super().__init__(cell)
        self.layout = layout
        self.reset_after = reset_after
        self.torch_mode = "GRU" if (layout == "torch" and reset_after) else None

    def to_internal(self, state: Tensor) -> tuple[Tensor]:
        return (state,)

    def from_internal(self, h: Tensor) -> Tensor:
        return h

    def fused_params(self) -> dict[str, Tensor | None]:
        cell = self.cell
        apart: dict[str, Tensor | None] = dict(w_xn=None, w_hn=None)
        if self.layout == "tf":  # two kernels, (I + H, 2H) for r, u and (I + H, H) for the candidate: read as views
            w_x, w_h = split_kernel(cell.input_depth, cell.gates.kernel)
            w_xn, w_hn = split_kernel(cell.input_depth, cell.candidate.kernel)
            bias_x = torch.cat([cell.gates.bias, cell.candidate.bias])
            return dict(w_x=w_x, w_h=w_h, bias_x=bias_x, bias_h=None, w_xn=w_xn, w_hn=w_hn)
        if not cell.bias:
            return dict(w_x=cell.weight_ih.t(), w_h=cell.weight_hh.t(), bias_x=None, bias_h=None, **apart)
        if self.reset_after:
            w_x, w_h = cell.weight_ih.t(), cell.weight_hh.t()
            return dict(w_x=w_x, w_h=w_h, bias_x=cell.bias_ih, bias_h=cell.bias_hh, **apart)
        # reset-before: b_hn sits outside r * (...), so both biases act as one input-side bias.
        w_x, w_h = cell.weight_ih.t(), cell.weight_hh.t()
        return dict(w_x=w_x, w_h=w_h, bias_x=cell.bias_ih + cell.bias_hh, bias_h=None, **apart)

    def torch_params(self) -> tuple[list[Tensor], bool]:
        cell = self.cell
        params = [cell.weight_ih, cell.weight_hh] + ([cell.bias_ih, cell.bias_hh] if cell.bias else [])
        return params, bool(cell.bias)


class RNNSpec(_Leaf):
    """An Elman layer ``h' = act(x W_x + h W_h + b)``, ``act`` tanh or relu."""

    def __init__(self, cell: RNNCell, layout: str, relu: bool):
        super().__init__(cell)
        self.layout = layout
        self.relu = relu
        self.torch_mode = "RNN_RELU" if relu else "RNN_TANH"

    def to_internal(self, state: Tensor) -> tuple[Tensor]:
        return (state,)

    def from_internal(self, h: Tensor) -> Tensor:
        return h

    def fused_params(self) -> dict[str, Tensor | None]:
        cell = self.cell
        if self.layout == "tf":
            w_x, w_h = split_kernel(cell.input_depth, cell.kernel)
            return dict(w_x=w_x, w_h=w_h, bias=cell.bias)
        bias = cell.bias_ih + cell.bias_hh if cell.bias else None
        return dict(w_x=cell.weight_ih.t(), w_h=cell.weight_hh.t(), bias=bias)

    def torch_params(self) -> tuple[list[Tensor], bool]:
        cell = self.cell
        if self.layout == "tf":
            depth = cell.input_depth
            b = cell.bias
            return [cell.kernel[:depth].t(), cell.kernel[depth:].t(), b, torch.zeros_like(b)], True
        params = [cell.weight_ih, cell.weight_hh] + ([cell.bias_ih, cell.bias_hh] if cell.bias else [])
        return params, bool(cell.bias)


# ---- composites -----------------------------------------------------------------------------


class StackSpec(Spec):
    """``MultiRNNCell``: layer ``k + 1`` reads layer ``k``'s outputs; run layer by layer over the sequence."""

    def __init__(self, cell: MultiRNNCell, layers: list[Spec]):
        self.cell = cell
        self.layers = layers

    def leaves(self) -> list[Spec]:
        return [leaf for layer in self.layers for leaf in layer.leaves()]

    def state_masked(self) -> bool:
        return any(layer.state_masked() for layer in self.layers)

    def split_state(self, state: Any) -> list[Any]:
        if self.cell.state_is_tuple:
            return list(state)
        return list(state.split([c.state_size for c in self.cell.cells], dim=1))

    def join_state(self, states: list[Any]) -> Any:
        return tuple(states) if self.cell.state_is_tuple else torch.cat(flatten(states), 1)

    def draw_masks(self, batch: int, like: Tensor, input_depth: int) -> None:
        depth = input_depth
        for layer, cell in zip(self.layers, self.cell.cells, strict=True):
            layer.draw_masks(batch, like, depth)
            depth = cell.output_size


class DropoutSpec(Spec):
    """``DropoutWrapper`` in training with ``variational_recurrent=True``: per-sequence masks (B, depth)
    on the inputs, the selected state leaves and the outputs, drawn once per unroll in the reference
    loop's order and with its calls, so both paths see the same masks for the same seed."""

    def __init__(self, cell: DropoutWrapper, inner: Spec):
        self.cell = cell
        self.inner = inner
        self.masks: dict[str, Tensor] = {}

    def leaves(self) -> list[Spec]:
        return self.inner.leaves()

    def state_masked(self) -> bool:
        return self.cell.state_keep_prob < 1.0 or self.inner.state_masked()

    def _mask(self, key: str, shape: tuple[int, int], like: Tensor, keep: float) -> Tensor:
        mask = torch.bernoulli(torch.full(shape, keep, dtype=like.dtype, device=like.device)) / keep
        self.cell._masks[key] = mask  # the wrapper ends the unroll holding the masks, as after the loop
        return mask

    def draw_masks(self, batch: int, like: Tensor, input_depth: int) -> None:
        w = self.cell
        self.masks = {}
        if w.input_keep_prob < 1.0:
            self.masks["input"] = self._mask("input", (batch, input_depth), like, w.input_keep_prob)
        self.inner.draw_masks(batch, like, input_depth)
        if w.state_keep_prob < 1.0:
            shapes = zero_state_for(w.state_size, batch, like.dtype, like.device)
            selected = flatten(w._selected(shapes))
            for k, (leaf, use) in enumerate(zip(flatten(shapes), selected, strict=True)):
                if use:
                    self.masks[f"state{k}"] = self._mask(f"state{k}", tuple(leaf.shape), like, w.state_keep_prob)
        if w.output_keep_prob < 1.0:
            self.masks["output"] = self._mask("output", (batch, w.output_size), like, w.output_keep_prob)

    def state_masks(self) -> Any:
        """This wrapper's state masks in the state's structure (None where a leaf is not dropped)."""
        sizes = self.cell.state_size
        leaves = [self.masks.get(f"state{k}") for k in range(len(flatten(sizes)))]
        return pack_as(sizes, leaves)


class ResidualSpec(Spec):
    """``ResidualWrapper`` (no ``residual_fn``): outputs ``x + cell(x)``, the state is the cell's."""

    def __init__(self, cell: ResidualWrapper, inner: Spec):
        self.cell = cell
        self.inner = inner

    def leaves(self) -> list[Spec]:
        return self.inner.leaves()

    def state_masked(self) -> bool:
        return self.inner.state_masked()

    def draw_masks(self, batch: int, like: Tensor, input_depth: int) -> None:
        self.inner.draw_masks(batch, like, input_depth)


def combine_masks(outer: Any, inner: Any) -> Any:
    """Masks of nested wrappers on the same state leaves multiply (each wrapper drops its own)."""
    if outer is None:
        return inner
    if inner is None:
        return outer
    return map_structure(lambda a, b: b if a is None else (a if b is None else a * b), outer, inner)


# ---- the dispatch ---------------------------------------------------------------------------


def _is_tanh(fn: Any) -> bool:
    return fn is torch.tanh


def lowering_for(cell: Any) -> Spec | None:
    """The spec that runs ``cell`` on fused or torch kernels (``spec.root is cell``), or ``None`` for the reference
    loop only.

    Dispatches on ``type(cell)`` exactly: a subclass may change ``call``, so it is not lowered.
    The cell must be built (the runners build it before unrolling).
    """
    spec = _lower(cell)
    if spec is not None:
        spec.root = cell
    return spec


def _lower(cell: Any) -> Spec | None:
    if not isinstance(cell, RNNCell) or not cell.built:
        return None
    kind = type(cell)
    if kind in (LSTMCell, BasicLSTMCell):
        if not _is_tanh(cell.activation):
            return None
        return LSTMSpec(
            cell,
            "tf",
            peepholes=cell.use_peepholes,
            cell_clip=cell.cell_clip,
            proj_clip=cell.proj_clip,
            forget_bias=cell.forget_bias,
            proj=cell.num_proj is not None,
            state_is_tuple=cell.state_is_tuple,
            num_units=cell.num_units,
        )
    if kind is LayerNormBasicLSTMCell:
        if not _is_tanh(cell.activation) or (cell.training and cell.dropout_keep_prob < 1.0):
            return None  # the candidate's dropout draws a fresh mask every step
        if cell.layer_norm:
            return LNLSTMSpec(cell, "tf", cell.num_units, cell.forget_bias)
        return LSTMSpec(cell, "tf_ln_off", forget_bias=cell.forget_bias, num_units=cell.num_units)
    if kind is GRUCell:
        return GRUSpec(cell, "tf", reset_after=False) if _is_tanh(cell.activation) else None
    if kind is BasicRNNCell:
        if cell.activation is torch.tanh or cell.activation is torch.relu:
            return RNNSpec(cell, "tf", relu=cell.activation is torch.relu)
        return None
    if TorchLSTMCell is not None and kind in (TorchLSTMCell, TorchGRUCell, TorchRNNCell):
        return _lower_torch_layout(cell)
    if kind is MultiRNNCell:
        layers = [lowering_for(c) for c in cell.cells]
        return None if any(layer is None for layer in layers) else StackSpec(cell, layers)
    if kind is DropoutWrapper:
        inner = lowering_for(cell.cell)
        if inner is None:
            return None
        if not cell.training:
            return inner  # eval: the wrapper is the identity around its cell
        if not cell.variational_recurrent:
            return None  # per-step masks: the reference loop draws them
        return DropoutSpec(cell, inner)
    if kind is ResidualWrapper:
        inner = lowering_for(cell.cell)
        return ResidualSpec(cell, inner) if (inner is not None and cell.residual_fn is None) else None
    return None


def _lower_torch_layout(cell: Any) -> Spec | None:
    """The torch-layout cells of ``rnnkit.RNN/LSTM/GRU``: zoneout and training-time recurrent dropout
    (a mask on the matmul's ``h`` only) stay on the reference loop."""
    if cell.zoneout or (cell.training and cell.recurrent_dropout):
        return None
    if isinstance(cell, TorchLSTMCell):
        if cell.layer_norm:
            # The layer-norm kernel has no projection: a projected layer-norm LSTM stays on the loop.
            return None if cell.proj_size else LNLSTMSpec(cell, "torch", cell.hidden_size, cell.forget_bias)
        return LSTMSpec(
            cell,
            "torch",
            peepholes=cell.peepholes,
            cell_clip=cell.cell_clip,
            forget_bias=cell.forget_bias,
            proj=bool(cell.proj_size),
            num_units=cell.hidden_size,
        )
    if isinstance(cell, TorchGRUCell):
        return GRUSpec(cell, "torch", reset_after=cell.reset_after)
    return RNNSpec(cell, "torch", relu=cell.nonlinearity == "relu")
