"""The leaves of a lowered cell: one recurrent layer each, in terms of the fused kernels' arguments.

``LSTMSpec``, ``LNLSTMSpec``, ``GRUSpec`` and ``RNNSpec`` (see ``rnnkit.engine.lowering``) know a kernel
family's math; a parameter reader (``rnnkit.engine.params``) knows where the cell keeps its weights. Each leaf
runs itself on the fused kernels (``run_fused``), gives torch's flat weights (``torch_params``) and converts the
cell's state to the kernels' ``(h[, c])`` and back. ``Spec`` is the base of every node.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._structure import LSTMStateTuple
from ..cells import TF_LAYER_NORM_EPS, RNNCell, dropout_mask
from . import _functions as F
from .params import TF_KERNEL, TORCH_WEIGHTS

__all__ = ["Spec", "LSTMSpec", "LNLSTMSpec", "GRUSpec", "RNNSpec"]


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

    def draws_random(self) -> bool:
        """Whether a leaf of this subtree draws random numbers at every step (a compiled cell's zoneout or dropout):
        they are drawn before its loop, so two such leaves must not share a step (their draws would interleave)."""
        return any(leaf is not self and leaf.draws_random() for leaf in self.leaves())


class _Leaf(Spec):
    """A leaf over ``cell``, reading its parameters through ``read`` (a reader of ``rnnkit.engine.params``)."""

    def __init__(self, cell: RNNCell, read: Any):
        self.cell = cell
        self.read = read
        # Recurrent dropout of a torch-layout cell in training (Keras / Gal & Ghahramani): one mask per sequence
        # on the h the recurrent matmul reads (see ``run_fused`` for how each kernel takes it).
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

    def run_fused(
        self, kern: Any, bs: Tensor, x: Tensor, internal: tuple, masks: Any, recurrent: Tensor | None
    ) -> tuple[Tensor, tuple]:
        """This layer on the fused kernels ``kern``: packed ``x (total, I)`` over ``batch_sizes`` ``bs`` from the
        kernels' state ``internal`` -> ``(y (total, O), final internal state)``.

        ``masks``: state masks in the state's structure (a DropoutWrapper's: they drop the carried state).
        ``recurrent``: a recurrent-dropout mask (B, O) on the ``h`` the matmul reads, every kernel's ``mask_r``: the
        outputs and the state carried on (so the final state) are not masked by it.
        """
        raise NotImplementedError

    #: the kernel family (``csrc/frame.cpp``'s names: ``"lstm"``, ``"lnlstm"``, ``"gru"``, ``"rnn"``)
    family = ""

    def kernel_weights(self) -> tuple[Tensor | None, ...]:
        """The family kernel's weight arguments read from the cell now, in ``csrc/frame.cpp``'s order for the family
        (``None`` for an absent optional one); ``run_fused`` passes them on, a frame plan keeps them."""
        raise NotImplementedError

    def kernel_options(self) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """The family kernel's int and float options, in ``csrc/frame.cpp``'s order."""
        raise NotImplementedError


# ---- LSTM ------------------------------------------------------------------------------------


class _LSTMLeaf(_Leaf):
    """The LSTM families' state ``(c, h)`` (a tuple, or concatenated), kernels' ``(h, c)``, and masks."""

    num_units: int
    state_is_tuple = True

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
        return masks[:, self.num_units :], masks[:, : self.num_units]

    def run_fused(
        self, kern: Any, bs: Tensor, x: Tensor, internal: tuple, masks: Any, recurrent: Tensor | None
    ) -> tuple[Tensor, tuple]:
        h0, c0 = internal
        m_h, m_c = self.split_masks(masks)
        y, h, c = self._layer(kern, bs, x, h0, c0, m_h, m_c, recurrent)
        return y, (h, c)

    def _layer(
        self, kern: Any, bs: Tensor, x: Tensor, h0: Tensor, c0: Tensor, m_h: Any, m_c: Any, m_r: Tensor | None
    ) -> tuple:
        raise NotImplementedError


class LSTMSpec(_LSTMLeaf):
    """An LSTM layer: ``w_x (I, 4H)``, ``w_h (P, 4H)`` in ``x @ W`` orientation, gate blocks ``gate_order``."""

    def __init__(self, cell: RNNCell, read: Any, **options: Any):
        super().__init__(cell, read)
        self.peepholes: bool = options.get("peepholes", False)
        self.cell_clip: float = options.get("cell_clip") or 0.0
        self.proj_clip: float = options.get("proj_clip") or 0.0
        self.forget_bias: float = float(options.get("forget_bias", 0.0))
        self.has_proj: bool = options.get("proj", False)
        self.state_is_tuple = options.get("state_is_tuple", True)
        self.num_units = options["num_units"]
        self.gate_order = read.gate_order
        exact = not self.peepholes and not self.cell_clip and not self.proj_clip
        # torch's kernel infers a projection from h's size differing from c's (and needs proj_size < hidden_size):
        # a projection to num_units or more has no torch kernel.
        exact = exact and not (self.has_proj and cell.output_size >= self.num_units)
        if read.stores_forget_bias:
            exact = exact and self.forget_bias == 0.0  # biases stored as they are: nothing to fold a forget_bias in
        self.torch_mode = "LSTM" if exact else None

    family = "lstm"

    def kernel_weights(self) -> tuple[Tensor | None, ...]:
        """``(w_x, bias, w_h, peep, w_proj)``."""
        cell, read = self.cell, self.read
        w_x, w_h = read.matrices(cell)
        peep = read.peepholes(cell) if self.peepholes else None
        w_proj = read.projection(cell) if self.has_proj else None
        return w_x, read.bias(cell), w_h, peep, w_proj

    def kernel_options(self) -> tuple[tuple[int, ...], tuple[float, ...]]:
        return tuple(self.gate_order), (self.forget_bias, self.cell_clip, self.proj_clip)

    def _layer(
        self, kern: Any, bs: Tensor, x: Tensor, h0: Tensor, c0: Tensor, m_h: Any, m_c: Any, m_r: Tensor | None
    ) -> tuple:
        w_x, bias, w_h, peep, w_proj = self.kernel_weights()
        return F.lstm_layer(
            kern, bs, x, w_x, bias, h0, c0, w_h, peep, w_proj, m_h, m_c,
            self.gate_order, self.forget_bias, self.cell_clip, self.proj_clip, m_r,
        )  # fmt: skip

    def torch_params(self) -> tuple[list[Tensor], bool]:
        """torch's flat weights ``[w_ih, w_hh, b_ih, b_hh(, w_hr)]`` and ``has_biases``."""
        return self.read.lstm_flat(self)


class LNLSTMSpec(_LSTMLeaf):
    """A layer-normalised LSTM layer (TF contrib's ``LayerNormBasicLSTMCell`` math): fused kernels only."""

    def __init__(self, cell: RNNCell, read: Any, num_units: int, forget_bias: float):
        super().__init__(cell, read)
        self.num_units = num_units
        self.forget_bias = float(forget_bias)
        self.gate_order = read.gate_order
        self.eps = TF_LAYER_NORM_EPS  # the cells' own (one definition)

    family = "lnlstm"

    def kernel_weights(self) -> tuple[Tensor | None, ...]:
        """``(w_x, bias, w_h, gamma, beta)``."""
        w_x, w_h = self.read.matrices(self.cell)
        bias, gamma, beta = self.read.layer_norms(self.cell, self.num_units)
        return w_x, bias, w_h, gamma, beta

    def kernel_options(self) -> tuple[tuple[int, ...], tuple[float, ...]]:
        return tuple(self.gate_order), (self.forget_bias, self.eps)

    def _layer(
        self, kern: Any, bs: Tensor, x: Tensor, h0: Tensor, c0: Tensor, m_h: Any, m_c: Any, m_r: Tensor | None
    ) -> tuple:
        w_x, bias, w_h, gamma, beta = self.kernel_weights()
        return F.lnlstm_layer(
            kern, bs, x, w_x, bias, h0, c0, w_h, gamma, beta, m_h, m_c, self.gate_order, self.forget_bias, self.eps,
            m_r,
        )  # fmt: skip


# ---- GRU and vanilla RNN --------------------------------------------------------------------


class GRUSpec(_Leaf):
    """A GRU layer, blocks r, z, n: ``w_x (I, 3H)``, ``w_h (H, 3H)``; reset-after adds ``bias_h``. ``read``: a
    reader with ``gru(spec)`` (``TORCH_WEIGHTS``, or ``TF_GRU_KERNELS`` for TF's two kernels)."""

    def __init__(self, cell: RNNCell, read: Any, reset_after: bool):
        super().__init__(cell, read)
        self.reset_after = reset_after
        self.torch_mode = "GRU" if (read is TORCH_WEIGHTS and reset_after) else None

    family = "gru"

    def kernel_weights(self) -> tuple[Tensor | None, ...]:
        """``(w_x, bias_x, w_h, bias_h, w_xn, w_hn)``."""
        p = self.read.gru(self)
        return p["w_x"], p["bias_x"], p["w_h"], p["bias_h"], p["w_xn"], p["w_hn"]

    def kernel_options(self) -> tuple[tuple[int, ...], tuple[float, ...]]:
        return (int(self.reset_after),), ()

    def run_fused(
        self, kern: Any, bs: Tensor, x: Tensor, internal: tuple, masks: Any, recurrent: Tensor | None
    ) -> tuple[Tensor, tuple]:
        w_x, bias_x, w_h, bias_h, w_xn, w_hn = self.kernel_weights()
        (h0,) = internal
        y, h = F.gru_layer(
            kern, bs, x, w_x, bias_x, h0, w_h, bias_h, w_xn, w_hn, masks, recurrent, self.reset_after
        )  # fmt: skip
        return y, (h,)

    def torch_params(self) -> tuple[list[Tensor], bool]:
        return self.read.flat(self.cell)


class RNNSpec(_Leaf):
    """An Elman layer ``h' = act(x W_x + h W_h + b)``, ``act`` tanh or relu.

    A cell of this family in TF's layout (``kernel``, ``bias``) lowers with ``RNNSpec.from_tf_kernel(cell, relu)``,
    one in torch's (``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``) with ``from_torch_weights``.
    """

    def __init__(self, cell: RNNCell, read: Any, relu: bool):
        super().__init__(cell, read)
        self.relu = relu
        self.torch_mode = "RNN_RELU" if relu else "RNN_TANH"

    @classmethod
    def from_tf_kernel(cls, cell: RNNCell, relu: bool = False) -> RNNSpec:
        return cls(cell, TF_KERNEL, relu)

    @classmethod
    def from_torch_weights(cls, cell: RNNCell, relu: bool = False) -> RNNSpec:
        return cls(cell, TORCH_WEIGHTS, relu)

    family = "rnn"

    def kernel_weights(self) -> tuple[Tensor | None, ...]:
        """``(w_x, bias, w_h)``."""
        w_x, w_h = self.read.matrices(self.cell)
        return w_x, self.read.bias(self.cell), w_h

    def kernel_options(self) -> tuple[tuple[int, ...], tuple[float, ...]]:
        return (int(self.relu),), ()

    def run_fused(
        self, kern: Any, bs: Tensor, x: Tensor, internal: tuple, masks: Any, recurrent: Tensor | None
    ) -> tuple[Tensor, tuple]:
        (h0,) = internal
        w_x, bias, w_h = self.kernel_weights()
        y, h = F.rnn_layer(kern, bs, x, w_x, bias, h0, w_h, masks, self.relu, recurrent)
        return y, (h,)

    def torch_params(self) -> tuple[list[Tensor], bool]:
        return self.read.flat(self.cell)
