"""TF contrib's ``LayerNormBasicLSTMCell``: a basic LSTM with layer norm and recurrent dropout."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._structure import LSTMStateTuple
from ._base import ParamFormula, RNNCell, check_units, get_activation
from .lstm import lstm_memory
from .registry import register_cell

__all__ = ["LayerNormBasicLSTMCell", "layer_norm_lstm_pointwise", "TF_LAYER_NORM_EPS"]

# tf.contrib.layers.layer_norm normalises with variance_epsilon=1e-12.
TF_LAYER_NORM_EPS = 1e-12


class _LayerNorm(nn.Module):
    """TF's ``layer_norm`` variable scope: ``gamma`` and ``beta``, normalising the last axis."""

    def __init__(self, gamma: nn.Parameter, beta: nn.Parameter):
        super().__init__()
        self.gamma = gamma
        self.beta = beta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.layer_norm(x, x.shape[-1:], self.gamma, self.beta, eps=TF_LAYER_NORM_EPS)


def layer_norm_lstm_pointwise(
    i: torch.Tensor,
    j: torch.Tensor,
    f: torch.Tensor,
    o: torch.Tensor,
    c: torch.Tensor,
    norms: nn.Module,
    forget_bias: float = 0.0,
    activation: Any = torch.tanh,
    keep_prob: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer-normalised LSTM step after the gate matmul, shared by the cell and the layers.

    ``norms`` holds the five ``_LayerNorm`` scopes as attributes ``input, transform, forget, output,
    state``. Dropout on the candidate (``keep_prob < 1``) runs when ``norms.training``.
    """
    i, j, f, o = norms.input(i), norms.transform(j), norms.forget(f), norms.output(o)
    keep = keep_prob if norms.training else 1.0
    return _contrib_lstm_step((i, j, f, o), c, forget_bias, activation, keep, norms.state)


def _contrib_lstm_step(
    gates: tuple[torch.Tensor, ...], c: torch.Tensor, forget_bias: float, activation: Any, keep_prob: float, norm: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """contrib's LSTM after the (normalised) gates ``i, j, f, o``: dropout on the candidate (``keep_prob < 1``),
    the memory update, its ``norm`` (``None``: none), and ``h' = act(c') * sigmoid(o)``."""
    i, j, f, o = gates
    g = activation(j)
    if keep_prob < 1.0:
        g = nn.functional.dropout(g, p=1.0 - keep_prob)
    new_c = lstm_memory(c, i, g, f, forget_bias)
    if norm is not None:
        new_c = norm(new_c)
    return new_c, activation(new_c) * torch.sigmoid(o)


@register_cell(namespaces=("contrib.rnn",))
class LayerNormBasicLSTMCell(RNNCell):
    r"""LSTM with layer normalisation (Ba et al. 2016) and recurrent dropout (Semeniuta et al. 2016),
    as ``tf.contrib.rnn.LayerNormBasicLSTMCell`` in TF 1.15::

        i, j, f, o = split([x, h] @ kernel (+ bias if not layer_norm), 4)
        i, j, f, o = LN_input(i), LN_transform(j), LN_forget(f), LN_output(o)   # if layer_norm
        g  = dropout(act(j), keep_prob=dropout_keep_prob)                        # training only
        c' = c * sigmoid(f + forget_bias) + sigmoid(i) * g
        c' = LN_state(c')                                                        # if layer_norm
        h' = act(c') * sigmoid(o)

    ``LN_k(x) = (x - mean(x)) / sqrt(var(x) + 1e-12) * k.gamma + k.beta`` over the units axis.

    Parameters: ``kernel`` ``(input_depth + num_units, 4*num_units)`` (i, j, f, o); ``bias``
    ``(4*num_units,)`` only without layer norm (glorot-uniform like the kernel, as contrib's default
    ``get_variable`` initializer makes it, with ``fan_in = fan_out = 4*num_units``); with layer norm
    ``input.gamma``, ``input.beta``, and the same for ``transform``, ``forget``, ``output`` and
    ``state``, each ``(num_units,)``, initialised to ``norm_gain`` and ``norm_shift``.

    State ``LSTMStateTuple(c, h)``, each ``(batch, num_units)``.

    Example::

        >>> cell = LayerNormBasicLSTMCell(32)
        >>> out, state = cell(torch.randn(4, 10), cell.zero_state(4, torch.float32))
        >>> tuple(out.shape), tuple(cell.forget.gamma.shape)
        ((4, 32), (32,))
    """

    _NORMS = ("input", "transform", "forget", "output", "state")
    family = "lstm"

    def __init__(
        self,
        num_units: int,
        forget_bias: float = 1.0,
        activation: Any = None,
        layer_norm: bool = True,
        norm_gain: float = 1.0,
        norm_shift: float = 0.0,
        dropout_keep_prob: float = 1.0,
        **kwargs: Any,
    ):
        name = type(self).__name__
        self.num_units = check_units(num_units, "num_units", name)
        if not 0.0 < dropout_keep_prob <= 1.0:
            raise ValueError(f"{name}: dropout_keep_prob must be in (0, 1], got {dropout_keep_prob!r}")
        self.forget_bias = float(forget_bias)
        self.activation = get_activation(activation)
        self.layer_norm = bool(layer_norm)
        self.norm_gain, self.norm_shift = float(norm_gain), float(norm_shift)
        self.dropout_keep_prob = float(dropout_keep_prob)
        super().__init__(**kwargs)

    @property
    def state_size(self) -> LSTMStateTuple:
        return LSTMStateTuple(self.num_units, self.num_units)

    @property
    def output_size(self) -> int:
        return self.num_units

    def _build(self, input_depth: int) -> None:
        n = self.num_units
        self.kernel = self._new_parameter(input_depth + n, 4 * n)
        if self.layer_norm:
            for scope in self._NORMS:
                norm = _LayerNorm(
                    self._new_parameter(n, init=self.norm_gain), self._new_parameter(n, init=self.norm_shift)
                )
                self.add_module(scope, norm)
        else:
            # contrib creates it with get_variable's default initializer (glorot-uniform, 1-D fans), not zeros.
            self.bias = self._new_parameter(4 * n)

    def parameter_formulas(self, input_depth: int) -> list[ParamFormula]:
        w = {"input_depth": input_depth, "num_units": self.num_units}
        rows = [("kernel", ("input_depth + num_units", "4*num_units"), w, "columns i|j|f|o; rows x then h")]
        if not self.layer_norm:
            return [*rows, ("bias", ("4*num_units",), w, "i|j|f|o")]
        for scope in self._NORMS:
            rows += [(f"{scope}.gamma", ("num_units",), w, "layer-norm gain")]
            rows += [(f"{scope}.beta", ("num_units",), w, "layer-norm shift")]
        return rows

    def call(self, inputs: torch.Tensor, state: Any) -> tuple[torch.Tensor, LSTMStateTuple]:
        self._build_for(inputs)
        c, h = state
        gates = torch.cat([inputs, h], 1) @ self.kernel  # (B, 4N)
        if not self.layer_norm:
            gates = gates + self.bias
        i, j, f, o = gates.chunk(4, dim=1)  # each (B, N)
        if self.layer_norm:
            new_c, new_h = layer_norm_lstm_pointwise(
                i, j, f, o, c, self, self.forget_bias, self.activation, self.dropout_keep_prob
            )
        else:
            keep = self.dropout_keep_prob if self.training else 1.0
            new_c, new_h = _contrib_lstm_step((i, j, f, o), c, self.forget_bias, self.activation, keep, None)
        return new_h, LSTMStateTuple(new_c, new_h)
