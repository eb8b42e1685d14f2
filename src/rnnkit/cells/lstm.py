"""TF1's LSTM cells: ``LSTMCell`` (peepholes, clipping, projection) and ``BasicLSTMCell``.

Both share one set of equations; ``BasicLSTMCell`` is ``LSTMCell`` with no peepholes, no
clipping and no projection, exactly as in TF.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch

from .._structure import LSTMStateTuple
from ._base import Dense, ParamFormula, RNNCell, check_units, get_activation
from .registry import register_cell

__all__ = ["LSTMCell", "BasicLSTMCell", "lstm_memory", "lstm_pointwise", "check_clip"]


def lstm_memory(c: torch.Tensor, i: torch.Tensor, g: torch.Tensor, f: torch.Tensor, forget_bias: float) -> torch.Tensor:
    """The LSTM memory update every rnnkit LSTM uses: ``c' = c * sigmoid(f + forget_bias) + sigmoid(i) * g``."""
    f = f + forget_bias if forget_bias else f
    return torch.addcmul(c * torch.sigmoid(f), torch.sigmoid(i), g)


def lstm_pointwise(
    i: torch.Tensor,
    j: torch.Tensor,
    f: torch.Tensor,
    o: torch.Tensor,
    c: torch.Tensor,
    forget_bias: float = 0.0,
    activation: Any = torch.tanh,
    peepholes: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    cell_clip: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM step after the gate matmuls, for every LSTM in rnnkit (TF cells and torch-style layers).

    ``i, j, f, o``: pre-activations ``(batch, num_units)`` of the input gate, candidate, forget gate and
    output gate; ``c`` the previous memory. ``peepholes = (w_i, w_f, w_o)`` diagonals: ``i`` and ``f`` peep
    at ``c``, ``o`` at the new memory. Returns ``(c', h')`` with ``h' = sigmoid(o) * act(c')`` (before any
    projection).
    """
    if peepholes is not None:
        w_i, w_f, w_o = peepholes
        i = i + w_i * c
        f = f + w_f * c
    new_c = _clip(lstm_memory(c, i, activation(j), f, forget_bias), cell_clip)
    if peepholes is not None:
        o = o + w_o * new_c
    return new_c, torch.sigmoid(o) * activation(new_c)


def _clip(x: torch.Tensor, limit: float | None) -> torch.Tensor:
    return x if limit is None else x.clamp(-limit, limit)


def check_clip(value: Any, name: str, component: str) -> float | None:
    if value is None:
        return None
    # `not value >= 0` also refuses NaN, which every comparison fails (the engines would disagree on it). 0 is TF's
    # too: it clips to [-0, 0].
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
        raise ValueError(f"{component}: {name} must be a non-negative number or None, got {value!r}")
    return float(value)


@register_cell()
class LSTMCell(RNNCell):
    r"""TF1's full LSTM cell: optional peepholes, cell clipping and an output projection.

    Gate blocks of ``kernel``'s columns in TF's order **i, j, f, o** (input gate, candidate,
    forget gate, output gate)::

        i, j, f, o = split([x, h] @ kernel + bias, 4)
        c' = sigmoid(f + forget_bias + w_f_diag * c) * c + sigmoid(i + w_i_diag * c) * act(j)
        c' = clip(c', -cell_clip, cell_clip)                      # if cell_clip
        h' = sigmoid(o + w_o_diag * c') * act(c')
        h' = clip(h' @ projection.kernel, -proj_clip, proj_clip)  # if num_proj

    The ``w_*_diag`` terms exist only with ``use_peepholes`` (the input and forget gates peep at
    ``c``, the output gate at ``c'``). ``forget_bias`` is added at run time and never stored.

    Parameters: ``kernel`` ``(input_depth + P, 4*num_units)`` with ``P = num_proj or num_units``;
    ``bias`` ``(4*num_units,)``; ``w_f_diag``, ``w_i_diag``, ``w_o_diag`` ``(num_units,)``;
    ``projection.kernel`` ``(num_units, num_proj)``.

    State: ``LSTMStateTuple(c, h)`` with ``c`` ``(batch, num_units)`` and ``h`` ``(batch, P)``,
    or with ``state_is_tuple=False`` one ``(batch, num_units + P)`` tensor ``[c, h]``. Output: ``h'``.

    Example::

        >>> cell = LSTMCell(64, use_peepholes=True, num_proj=32, cell_clip=3.0)
        >>> out, state = cell(torch.randn(8, 10), cell.zero_state(8, torch.float32))
        >>> tuple(out.shape), tuple(state.c.shape), tuple(cell.kernel.shape)
        ((8, 32), (8, 64), (42, 256))
    """

    def __init__(
        self,
        num_units: int,
        use_peepholes: bool = False,
        cell_clip: float | None = None,
        num_proj: int | None = None,
        proj_clip: float | None = None,
        forget_bias: float = 1.0,
        state_is_tuple: bool = True,
        activation: Any = None,
        **kwargs: Any,
    ):
        name = type(self).__name__
        self.num_units = check_units(num_units, "num_units", name)
        self.use_peepholes = bool(use_peepholes)
        self.cell_clip = check_clip(cell_clip, "cell_clip", name)
        self.num_proj = None if num_proj is None else check_units(num_proj, "num_proj", name)
        self.proj_clip = check_clip(proj_clip, "proj_clip", name)
        if self.proj_clip is not None and self.num_proj is None:
            raise ValueError(f"{name}: proj_clip={proj_clip} needs num_proj")
        self.forget_bias = float(forget_bias)
        self.state_is_tuple = bool(state_is_tuple)
        self.activation = get_activation(activation)
        super().__init__(**kwargs)

    @property
    def _h_depth(self) -> int:
        return self.num_proj or self.num_units

    @property
    def state_size(self) -> LSTMStateTuple | int:
        if self.state_is_tuple:
            return LSTMStateTuple(self.num_units, self._h_depth)
        return self.num_units + self._h_depth

    @property
    def output_size(self) -> int:
        return self._h_depth

    family = "lstm"

    def parameter_formulas(self, input_depth: int) -> list[ParamFormula]:
        w = {"input_depth": input_depth, "num_units": self.num_units}
        h = "num_units"
        if self.num_proj is not None:
            w["num_proj"], h = self.num_proj, "num_proj"
        rows = [
            ("kernel", (f"input_depth + {h}", "4*num_units"), w, "columns i|j|f|o; rows x then h"),
            ("bias", ("4*num_units",), w, f"i|j|f|o (+ forget_bias={self.forget_bias:g} at run time)"),
        ]
        if self.use_peepholes:
            rows += [(f"w_{gate}_diag", ("num_units",), w, f"peephole of {gate}") for gate in ("f", "i", "o")]
        if self.num_proj is not None:
            rows.append(("projection.kernel", ("num_units", "num_proj"), w, "h = (o*tanh(c)) @ kernel"))
        return rows

    def _build(self, input_depth: int) -> None:
        n = self.num_units
        self.kernel = self._new_parameter(input_depth + self._h_depth, 4 * n)
        self.bias = self._new_parameter(4 * n, init=0.0)
        if self.use_peepholes:
            self.w_f_diag = self._new_parameter(n)
            self.w_i_diag = self._new_parameter(n)
            self.w_o_diag = self._new_parameter(n)
        if self.num_proj is not None:
            self.projection = Dense(self._new_parameter(n, self.num_proj))

    def call(self, inputs: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        self._build_for(inputs)
        if self.state_is_tuple:
            c, h = state
        else:
            c, h = state.split([self.num_units, self._h_depth], dim=1)
        gates = torch.addmm(self.bias, torch.cat([inputs, h], 1), self.kernel)  # (B, 4N)
        i, j, f, o = gates.chunk(4, dim=1)  # each (B, N)
        peepholes = (self.w_i_diag, self.w_f_diag, self.w_o_diag) if self.use_peepholes else None
        new_c, new_h = lstm_pointwise(i, j, f, o, c, self.forget_bias, self.activation, peepholes, self.cell_clip)
        if self.num_proj is not None:
            new_h = _clip(self.projection(new_h), self.proj_clip)  # (B, P)
        new_state = LSTMStateTuple(new_c, new_h) if self.state_is_tuple else torch.cat([new_c, new_h], 1)
        return new_h, new_state


@register_cell()
class BasicLSTMCell(LSTMCell):
    r"""TF1's basic LSTM: ``LSTMCell`` without peepholes, clipping or projection.

    ``kernel`` is ``(input_depth + num_units, 4*num_units)`` with gate blocks i, j, f, o;
    ``bias`` ``(4*num_units,)``. ``4 * ((input_depth + num_units) * num_units + num_units)``
    scalars in all: 4x a ``BasicRNNCell`` of the same size.

    .. math::
        c' = c \sigma(f + b_{forget}) + \sigma(i) \tanh(j), \quad h' = \tanh(c') \sigma(o)

    State ``LSTMStateTuple(c, h)``, each ``(batch, num_units)`` (``h`` and ``c`` have the same
    size because ``h`` is a gated view of ``c``).

    Example::

        >>> cell = BasicLSTMCell(128)
        >>> out, state = cell(torch.randn(32, 100), cell.zero_state(32, torch.float32))
        >>> tuple(state.h.shape), tuple(state.c.shape), tuple(cell.kernel.shape)
        ((32, 128), (32, 128), (228, 512))
    """

    def __init__(
        self,
        num_units: int,
        forget_bias: float = 1.0,
        state_is_tuple: bool = True,
        activation: Any = None,
        **kwargs: Any,
    ):
        super().__init__(
            num_units, forget_bias=forget_bias, state_is_tuple=state_is_tuple, activation=activation, **kwargs
        )
