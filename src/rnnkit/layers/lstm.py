"""``rnnkit.LSTM``: a ``torch.nn.LSTM`` drop-in with TF1's LSTM options, on rnnkit's cells and runner."""

from __future__ import annotations

from typing import Any

import torch

from .._structure import LSTMStateTuple
from ..cells import check_clip
from ..cells.torch_layout import TorchLSTMCell
from ._base import RNNLayer

__all__ = ["LSTM"]


class LSTM(RNNLayer):
    r"""Multi-layer LSTM with ``torch.nn.LSTM``'s contract, plus TF1's cell options::

        i, f, g, o = split(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh, 4)          # torch's block order
        c_t = sigmoid(f + forget_bias + w_cf * c_{t-1}) * c_{t-1} + sigmoid(i + w_ci * c_{t-1}) * tanh(g)
        c_t = clip(c_t, -cell_clip, cell_clip)                                # cell_clip
        h_t = sigmoid(o + w_co * c_t) * tanh(c_t)
        h_t = W_hr h_t                                                        # proj_size > 0

    With the defaults (``forget_bias=0``, no peepholes, no clipping, no layer norm) this is torch's math
    exactly, and a ``torch.nn.LSTM`` state dict loads both ways. ``forget_bias`` is added at run time, as TF's
    cells do (never stored). ``peepholes=True`` adds ``weight_ci_l{k}``, ``weight_cf_l{k}``, ``weight_co_l{k}``
    ``(H,)``. ``layer_norm=True`` is TF's ``LayerNormBasicLSTMCell`` (i, f, g, o and ``c_t`` each layer-normalised,
    eps 1e-12) and adds ``weight_ln_gates_l{k}``, ``bias_ln_gates_l{k}`` ``(4H,)`` (blocks i, f, g, o) and
    ``weight_ln_cell_l{k}``, ``bias_ln_cell_l{k}`` ``(H,)``, initialised to 1 and 0; it excludes peepholes and
    ``cell_clip``. The extras follow each (layer, direction)'s torch parameters.

    Parameters per layer ``k`` as torch: ``weight_ih_l{k}`` ``(4H, input_size)`` (then
    ``(4H, num_directions * R)``), ``weight_hh_l{k}`` ``(4H, R)``, ``bias_ih_l{k}``, ``bias_hh_l{k}`` ``(4H,)``,
    ``weight_hr_l{k}`` ``(P, H)`` with ``proj_size = P``; ``R = P or H``.

    ``output, (h_n, c_n) = lstm(input, (h_0, c_0)=None, *, lengths=None)``: ``h`` ``(num_layers *
    num_directions, batch, R)``, ``c`` ``(..., H)``, ``output`` ``(seq_len, batch, num_directions * R)``;
    inputs, ``lengths=``, ``step``, ``recurrent_dropout`` and ``zoneout`` (on ``h`` and ``c``) as ``RNN``.

    Example::

        >>> import torch
        >>> from rnnkit import LSTM
        >>> lstm = LSTM(10, 20, num_layers=2, bidirectional=True, forget_bias=1.0, peepholes=True)
        >>> output, (h_n, c_n) = lstm(torch.randn(5, 3, 10), lengths=[5, 2, 4])
        >>> tuple(output.shape), tuple(h_n.shape), tuple(lstm.weight_ci_l1_reverse.shape)
        ((5, 3, 40), (4, 3, 20), (20,))
    """

    cell_class = TorchLSTMCell
    _extra_options = {"forget_bias": 0.0, "peepholes": False, "cell_clip": None, "layer_norm": False}
    _step_options = ("forget_bias", "cell_clip")
    _hidden_names = ("h_0", "c_0")

    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True, batch_first: bool = False,
        dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0, device: Any = None, dtype: Any = None,
        *, forget_bias: float = 0.0, peepholes: bool = False, cell_clip: float | None = None,
        layer_norm: bool = False, recurrent_dropout: float = 0.0, zoneout: float = 0.0,
    ):  # fmt: skip
        super().__init__(
            "LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, proj_size,
            device, dtype, recurrent_dropout, zoneout,
        )  # fmt: skip
        for flag, value in (("peepholes", peepholes), ("layer_norm", layer_norm)):
            if not isinstance(value, bool):
                raise TypeError(f"LSTM: {flag} must be a bool, got {type(value).__name__} {value!r}")
        if isinstance(forget_bias, bool) or not isinstance(forget_bias, (int, float)):
            raise TypeError(f"LSTM: forget_bias must be a number, got {forget_bias!r}")
        if layer_norm and (peepholes or cell_clip is not None):
            clash = "peepholes=True" if peepholes else f"cell_clip={cell_clip!r}"
            raise ValueError(
                f"LSTM: layer_norm=True cannot be combined with {clash}: the layer-normalised step is TF's "
                "LayerNormBasicLSTMCell, which has neither peepholes nor cell clipping"
            )
        self.forget_bias = float(forget_bias)
        self.peepholes = peepholes
        self.cell_clip = check_clip(cell_clip, "cell_clip", "LSTM")
        self.layer_norm = layer_norm
        self._create_parameters(device, dtype)

    def _structure(self) -> dict[str, Any]:
        return {**super()._structure(), "proj_size": self.proj_size, "peepholes": self.peepholes,
                "layer_norm": self.layer_norm}  # fmt: skip

    def _hidden_sizes(self) -> tuple[int, ...]:
        return (self.proj_size or self.hidden_size, self.hidden_size)

    @staticmethod
    def _to_cell_state(parts: tuple[torch.Tensor, ...]) -> LSTMStateTuple:
        h, c = parts
        return LSTMStateTuple(c, h)

    @staticmethod
    def _from_cell_state(state: LSTMStateTuple) -> tuple[torch.Tensor, ...]:
        return state.h, state.c
