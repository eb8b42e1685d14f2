"""The leaves of a lowered cell: one recurrent layer each, in terms of the fused kernels' arguments.

``LSTMSpec``, ``LNLSTMSpec``, ``GRUSpec`` and ``RNNSpec`` (see ``rnnkit.engine.lowering``) read their cell's
parameters when they run (``fused_params``: the kernels' ``x @ W`` orientation; ``torch_params``: torch's flat
weights) and convert the cell's state to the kernels' ``(h[, c])`` and back. ``Spec`` is the base of every node.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._structure import LSTMStateTuple
from ..cells import TF_LAYER_NORM_EPS, RNNCell, dropout_mask
from ._tf_weights import split_kernel, tf_lstm_as_torch

__all__ = ["Spec", "LSTMSpec", "LNLSTMSpec", "GRUSpec", "RNNSpec"]

_TF_ORDER = (0, 1, 2, 3)  # blocks of (i, g, f, o) in TF's columns i, j, f, o
_TORCH_ORDER = (0, 2, 1, 3)  # ... in torch's rows i, f, g, o


class Spec:
    """A node of a lowered cell. Leaves run kernels; inner nodes combine their children."""

    #: the torch kernel with identical math (``"LSTM"``, ``"GRU"``, ``"RNN_TANH"``, ``"RNN_RELU"``) or None
    torch_mode: str | None = None
    #: the cell this spec was lowered from (set on the top-level spec by ``lowering_for``)
    root: Any = None

    def leaves(self) -> list[Spec]:
        return [self]

    def state_masked(self) -> bool:
        """Whether this subtree multiplies the recurrent state by masks (a wrapper's, or a leaf's recurrent
        dropout): only the fused kernels take masks."""
        return False

    def draw_masks(self, batch: int, like: Tensor, input_depth: int) -> None:
        """Draw this subtree's per-sequence dropout masks, in the reference loop's order."""


class _Leaf(Spec):
    def __init__(self, cell: RNNCell):
        self.cell = cell
        # Recurrent dropout of a torch-layout cell in training (Keras / Gal & Ghahramani): one mask per sequence
        # on the h the recurrent matmul reads (see unroll._run_fused for how each kernel takes it).
        self.recurrent_keep = 1.0
        self.recurrent_mask: Tensor | None = None  # (B, O), drawn by draw_masks, in the batch's order

    def state_masked(self) -> bool:
        return self.recurrent_keep < 1.0

    def draw_masks(self, batch: int, like: Tensor, input_depth: int) -> None:
        if self.recurrent_keep < 1.0:  # as the cell draws it at its first step, on its h (B, O)
            self.recurrent_mask = dropout_mask((batch, self.cell.output_size), self.recurrent_keep, like)

    def recurrent_rows(self, sort: Any) -> Tensor | None:
        """The recurrent-dropout mask (B, O) with its rows in the kernels' order (``sort``), or None."""
        return None if self.recurrent_mask is None else sort(self.recurrent_mask)

    # -- state: the kernels take (h,), LSTMs (h, c) (they override these) --------------------------------
    def to_internal(self, state: Any) -> tuple[Tensor, ...]:
        return (state,)

    def from_internal(self, *internal: Tensor) -> Any:
        return internal[0]

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
        # torch's kernel infers a projection from h's size differing from c's (and needs proj_size < hidden_size):
        # a projection to num_units or more has no torch kernel.
        exact = exact and not (self.has_proj and cell.output_size >= self.num_units)
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
        self.eps = TF_LAYER_NORM_EPS  # the cells' own (one definition)

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

    def fused_params(self) -> dict[str, Tensor | None]:
        cell = self.cell
        if self.layout == "tf":  # two kernels, (I + H, 2H) for r, u and (I + H, H) for the candidate: read as views
            w_x, w_h = split_kernel(cell.input_depth, cell.gates.kernel)
            w_xn, w_hn = split_kernel(cell.input_depth, cell.candidate.kernel)
            bias_x = torch.cat([cell.gates.bias, cell.candidate.bias])
            return dict(w_x=w_x, w_h=w_h, bias_x=bias_x, bias_h=None, w_xn=w_xn, w_hn=w_hn)
        w_x, w_h = cell.weight_ih.t(), cell.weight_hh.t()  # (I, 3H), (H, 3H)
        if not cell.bias:
            bias_x = bias_h = None
        elif self.reset_after:
            bias_x, bias_h = cell.bias_ih, cell.bias_hh
        else:  # reset-before: b_hn sits outside r * (...), so both biases act as one input-side bias.
            bias_x, bias_h = cell.bias_ih + cell.bias_hh, None
        return dict(w_x=w_x, w_h=w_h, bias_x=bias_x, bias_h=bias_h, w_xn=None, w_hn=None)

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
