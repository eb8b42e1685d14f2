"""Cells in torch's parameter layout, over weights they are given: the steps of ``rnnkit.RNN/LSTM/GRU``.

The math is rnnkit's shared step functions (``basic_rnn_pointwise``, ``lstm_pointwise``,
``layer_norm_lstm_pointwise``, ``gru_reset_before_step``, ``gru_reset_after_pointwise``); only the layout
of the matmuls is torch's. For ``G`` gate blocks of ``H`` units (G = 1 RNN, 3 GRU, 4 LSTM)::

    weight_ih (G*H, input_size)   weight_hh (G*H, R)   bias_ih (G*H,)   bias_hh (G*H,)   weight_hr (P, H)

with ``R = P`` when the LSTM projects (``proj_size = P``) and ``R = H`` otherwise. Gate blocks are in torch's
order: LSTM i, f, g, o; GRU r, z, n. Options torch lacks add parameters after torch's own:
``weight_ci, weight_cf, weight_co`` ``(H,)`` (LSTM peepholes: i and f peep at ``c``, o at the new ``c``), and
``weight_ln_gates, bias_ln_gates`` ``(4H,)`` (i, f, g, o) and ``weight_ln_cell, bias_ln_cell`` ``(H,)``
(LSTM layer norm, TF's ``LayerNormBasicLSTMCell``).

A cell binds the tensors it is given (a layer's parameters, fetched by name on every forward, so that
``.to()``, ``load_state_dict(assign=True)``, parametrizations and ``functional_call`` are always honoured);
it owns no storage of its own. Its parameter set is read from the weights' names and shapes
(``parameter_shapes`` is the one description of it, used by the layers to create parameters too).

Regularisers: ``recurrent_dropout`` (variational, Gal & Ghahramani / Keras: one mask per sequence on the
``h`` that the recurrent matmul reads; the state carried on is unmasked) and ``zoneout`` (haste / Krueger et
al.: in training each unit of each state keeps its previous value with probability ``zoneout``, fresh every
step; in eval the expectation ``p * old + (1 - p) * new``). Both act only in training mode, except zoneout's
expectation.

Example::

    >>> w = {"weight_ih": torch.randn(12, 5), "weight_hh": torch.randn(12, 4)}
    >>> cell = TorchGRUCell(w)
    >>> out, h = cell(torch.randn(2, 5), cell.zero_state(2, torch.float32))
    >>> tuple(out.shape), cell.hidden_size
    ((2, 4), 4)
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch.nn import functional as F

from .._structure import LSTMStateTuple
from ._base import RNNCell, dropout_mask, get_activation
from .basic import basic_rnn_pointwise
from .gru import gru_reset_after_pointwise, gru_reset_before_step
from .layer_norm import _LayerNorm, layer_norm_lstm_pointwise
from .lstm import check_clip, lstm_pointwise
from .registry import register_cell

__all__ = [
    "TorchLayoutCell",
    "TorchRNNCell",
    "TorchLSTMCell",
    "TorchGRUCell",
    "init_parameter_",
    "check_probability",
]


def init_parameter_(role: str, tensor: torch.Tensor, hidden_size: int) -> torch.Tensor:
    """torch.nn's default initialisation of one parameter, by its role (its name without ``_l{k}...``).

    ``U(-1/sqrt(H), 1/sqrt(H))`` for every parameter torch.nn has and for the peephole diagonals; layer-norm
    gains 1 and shifts 0 (TF's ``norm_gain``/``norm_shift`` defaults: uniform gains near 0 would silence it).
    """
    with torch.no_grad():
        if role.startswith("weight_ln_"):
            return tensor.fill_(1.0)
        if role.startswith("bias_ln_"):
            return tensor.zero_()
        bound = 1.0 / math.sqrt(hidden_size)
        return tensor.uniform_(-bound, bound)


def check_probability(value: Any, name: str, component: str) -> float:
    """A rate in ``[0, 1)`` (1 would drop or freeze everything), as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{component}: {name} must be a number in [0, 1), got {value!r}")
    return float(value)


class TorchLayoutCell(RNNCell):
    """Base of the torch-layout cells: binding the weights, the two matmuls, and the regularisers.

    Subclasses set ``GATES`` and implement ``call`` with the shared step functions. ``hidden_size`` is
    ``weight_ih.shape[0] // GATES``, the input depth ``weight_ih.shape[1]``.
    """

    GATES: ClassVar[int]

    def __init__(self, weights: Mapping[str, torch.Tensor], *, recurrent_dropout: float = 0.0, zoneout: float = 0.0):
        super().__init__()
        name = self._name
        if "weight_ih" not in weights or not isinstance(weights["weight_ih"], torch.Tensor):
            raise ValueError(f"{name}: expected weights with a 'weight_ih' tensor, got names {sorted(weights)}")
        rows, input_depth = weights["weight_ih"].shape
        if rows % self.GATES or rows == 0:
            raise ValueError(f"{name}: weight_ih must have a positive multiple of {self.GATES} rows, got {rows}")
        self.hidden_size = rows // self.GATES
        self.recurrent_dropout = check_probability(recurrent_dropout, "recurrent_dropout", name)
        self.zoneout = check_probability(zoneout, "zoneout", name)
        structure = self._structure(weights)
        expected = self.parameter_shapes(input_depth, self.hidden_size, **structure)
        got = {role: tuple(w.shape) for role, w in weights.items()}
        if got != expected:
            raise ValueError(f"{name}: for {structure}, expected weights {expected}, got {got}")
        for role, w in weights.items():
            setattr(self, role, w)
        for option, value in structure.items():  # bias, and for an LSTM proj_size, peepholes, layer_norm
            setattr(self, option, value)
        self.input_depth = input_depth
        self._recurrent_mask: torch.Tensor | None = None

    @classmethod
    def parameter_shapes(
        cls, input_size: int, hidden_size: int, bias: bool = True, proj_size: int = 0
    ) -> dict[str, tuple[int, ...]]:
        """The parameters' roles and shapes, in torch's registration order."""
        gates = cls.GATES * hidden_size
        shapes = {"weight_ih": (gates, input_size), "weight_hh": (gates, proj_size or hidden_size)}
        if bias:
            shapes.update(bias_ih=(gates,), bias_hh=(gates,))
        if proj_size:
            shapes["weight_hr"] = (proj_size, hidden_size)
        return shapes

    def _structure(self, weights: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """The ``parameter_shapes`` options that the given weights imply."""
        return {"bias": "bias_ih" in weights or "bias_hh" in weights}

    # Both are hidden_size: the state is one (batch, H) tensor, the output (RNN, GRU; the LSTM overrides them).
    state_size = output_size = property(operator.attrgetter("hidden_size"))

    # -- the two matmuls -----------------------------------------------------------------------
    def _input_gates(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight_ih, self.bias_ih if self.bias else None)  # (B, G*H)

    def _recurrent_gates(self, h: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
        """``h @ weight_hh[rows].T + bias_hh[rows]``: all gate blocks, or the ones ``rows`` selects."""
        return F.linear(h, self.weight_hh[rows], self.bias_hh[rows] if self.bias else None)  # (B, rows)

    # -- regularisers --------------------------------------------------------------------------
    def begin_sequence(self, batch_size: int) -> None:
        self._recurrent_mask = None  # a new sequence draws a new variational mask
        super().begin_sequence(batch_size)

    def _recurrent_input(self, h: torch.Tensor) -> torch.Tensor:
        """``h`` as the recurrent matmul reads it: masked by the sequence's recurrent-dropout mask in training."""
        if not (self.training and self.recurrent_dropout):
            return h
        if self._recurrent_mask is None or self._recurrent_mask.shape != h.shape:
            keep = 1.0 - self.recurrent_dropout
            self._recurrent_mask = dropout_mask(tuple(h.shape), keep, h)
        return h * self._recurrent_mask

    def _zoneout(self, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """Keep each unit of ``old`` with probability ``zoneout`` (training), or its expectation (eval)."""
        if not self.zoneout:
            return new
        if self.training:
            return torch.lerp(new, old, torch.bernoulli(torch.full_like(new, self.zoneout)))
        return torch.lerp(new, old, self.zoneout)  # zoneout * old + (1 - zoneout) * new


@register_cell(kind="torch", namespaces=())
class TorchRNNCell(TorchLayoutCell):
    r"""Elman step in torch's layout, ``torch.nn.RNNCell``'s math (= TF's ``BasicRNNCell``)::

        h' = act(W_ih x + b_ih + W_hh h + b_hh)         act: 'tanh' or 'relu'

    State and output ``(batch, H)``.
    """

    GATES = 1
    family = "rnn"

    def __init__(self, weights: Mapping[str, torch.Tensor], nonlinearity: str = "tanh", **regularisers: float):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"{type(self).__name__}: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        super().__init__(weights, **regularisers)
        self.nonlinearity = nonlinearity
        self.activation = get_activation(nonlinearity)

    def call(self, inputs: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        preactivation = self._input_gates(inputs) + self._recurrent_gates(self._recurrent_input(state))  # (B, H)
        h = self._zoneout(state, basic_rnn_pointwise(preactivation, self.activation))
        return h, h


@register_cell(kind="torch", namespaces=())
class TorchGRUCell(TorchLayoutCell):
    r"""GRU step in torch's layout (blocks r, z, n), torch's math or TF's.

    ``reset_after=True`` is ``torch.nn.GRUCell`` (``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``);
    ``reset_after=False`` is TF1's ``GRUCell`` / Keras ``reset_after=False``
    (``n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)``). Both: ``h' = (1 - z) * n + z * h``.
    State and output ``(batch, H)``.
    """

    GATES = 3
    family = "gru"

    def __init__(self, weights: Mapping[str, torch.Tensor], reset_after: bool = True, **regularisers: float):
        if not isinstance(reset_after, bool):
            raise TypeError(f"{type(self).__name__}: reset_after must be a bool, got {reset_after!r}")
        super().__init__(weights, **regularisers)
        self.reset_after = reset_after

    def call(self, inputs: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gates_x = self._input_gates(inputs)  # (B, 3H): r, z, n
        h_recurrent = self._recurrent_input(state)
        if self.reset_after:
            new_h = gru_reset_after_pointwise(gates_x, self._recurrent_gates(h_recurrent), state)
        else:
            rz, n = slice(0, 2 * self.hidden_size), slice(2 * self.hidden_size, None)
            gates = gates_x[:, rz] + self._recurrent_gates(h_recurrent, rz)  # (B, 2H): r, z
            new_h = gru_reset_before_step(
                gates, state, lambda rh: gates_x[:, n] + self._recurrent_gates(rh, n), h_recurrent=h_recurrent
            )
        new_h = self._zoneout(state, new_h)
        return new_h, new_h


@register_cell(kind="torch", namespaces=())
class TorchLSTMCell(TorchLayoutCell):
    r"""LSTM step in torch's layout (blocks i, f, g, o), with TF's options::

        i, f, g, o = split(W_ih x + b_ih + W_hh h + b_hh, 4)
        c' = sigmoid(f + forget_bias + w_cf * c) * c + sigmoid(i + w_ci * c) * tanh(g)
        c' = clip(c', -cell_clip, cell_clip)                        # if cell_clip
        h' = sigmoid(o + w_co * c') * tanh(c')
        h' = W_hr h'                                                # if weight_hr (proj_size)

    The ``w_c*`` terms exist with the peephole weights; with the layer-norm weights the step is instead
    ``LayerNormBasicLSTMCell``'s (each of i, f, g, o and ``c'`` normalised; no peepholes, no clipping).
    With the defaults (no extras, ``forget_bias=0``) it is ``torch.nn.LSTMCell``'s math.

    State ``LSTMStateTuple(c, h)`` (rnnkit's order) with ``c`` ``(batch, H)`` and ``h`` ``(batch, P or H)``;
    output ``h'``.
    """

    GATES = 4
    family = "lstm"
    _PEEPHOLES = ("weight_ci", "weight_cf", "weight_co")
    _LAYER_NORM = ("weight_ln_gates", "bias_ln_gates", "weight_ln_cell", "bias_ln_cell")

    def __init__(
        self,
        weights: Mapping[str, torch.Tensor],
        forget_bias: float = 0.0,
        cell_clip: float | None = None,
        **regularisers: float,
    ):
        super().__init__(weights, **regularisers)
        name = self._name
        if isinstance(forget_bias, bool) or not isinstance(forget_bias, (int, float)):
            raise TypeError(f"{name}: forget_bias must be a number, got {forget_bias!r}")
        self.forget_bias = float(forget_bias)
        self.cell_clip = check_clip(cell_clip, "cell_clip", name)
        if self.layer_norm and self.cell_clip is not None:
            raise ValueError(f"{name}: cell_clip cannot be combined with layer norm (TF's LayerNormBasicLSTMCell)")
        if self.layer_norm:
            # The five norms of layer_norm_lstm_pointwise, under the names it reads (TF's scopes).
            gains, shifts = self.weight_ln_gates.chunk(4), self.bias_ln_gates.chunk(4)  # i, f, g, o
            for k, scope in enumerate(("input", "forget", "transform", "output")):
                self.add_module(scope, _LayerNorm(gains[k], shifts[k]))
            self.state = _LayerNorm(self.weight_ln_cell, self.bias_ln_cell)

    @classmethod
    def parameter_shapes(
        cls,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        proj_size: int = 0,
        peepholes: bool = False,
        layer_norm: bool = False,
    ) -> dict[str, tuple[int, ...]]:
        shapes = super().parameter_shapes(input_size, hidden_size, bias, proj_size)
        if peepholes and layer_norm:
            raise ValueError(f"{cls.__name__}: peepholes cannot be combined with layer norm")
        if peepholes:
            shapes.update({role: (hidden_size,) for role in cls._PEEPHOLES})
        if layer_norm:
            shapes.update(weight_ln_gates=(4 * hidden_size,), bias_ln_gates=(4 * hidden_size,))
            shapes.update(weight_ln_cell=(hidden_size,), bias_ln_cell=(hidden_size,))
        return shapes

    def _structure(self, weights: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        return {
            **super()._structure(weights),
            "proj_size": weights["weight_hr"].shape[0] if "weight_hr" in weights else 0,
            "peepholes": any(role in weights for role in self._PEEPHOLES),
            "layer_norm": any(role in weights for role in self._LAYER_NORM),
        }

    @property
    def state_size(self) -> LSTMStateTuple:
        return LSTMStateTuple(self.hidden_size, self.proj_size or self.hidden_size)

    @property
    def output_size(self) -> int:
        return self.proj_size or self.hidden_size

    def call(self, inputs: torch.Tensor, state: Any) -> tuple[torch.Tensor, LSTMStateTuple]:
        c, h = state
        gates = self._input_gates(inputs) + self._recurrent_gates(self._recurrent_input(h))  # (B, 4H)
        i, f, g, o = gates.chunk(4, dim=1)  # each (B, H), torch's block order
        if self.layer_norm:
            new_c, new_h = layer_norm_lstm_pointwise(i, g, f, o, c, self, self.forget_bias)
        else:
            peepholes = (self.weight_ci, self.weight_cf, self.weight_co) if self.peepholes else None
            new_c, new_h = lstm_pointwise(i, g, f, o, c, self.forget_bias, torch.tanh, peepholes, self.cell_clip)
        if self.proj_size:
            new_h = F.linear(new_h, self.weight_hr)  # (B, P)
        new_c, new_h = self._zoneout(c, new_c), self._zoneout(h, new_h)
        return new_h, LSTMStateTuple(new_c, new_h)
