"""TF1's ``GRUCell``: the reset gate multiplies ``h`` before the candidate's matrix multiply."""

from __future__ import annotations

from typing import Any

import torch

from ._base import Dense, RNNCell, check_units, get_activation

__all__ = ["GRUCell"]


class GRUCell(RNNCell):
    r"""Gated recurrent unit, TF1's math (Cho et al. 2014; "reset before", Keras ``reset_after=False``)::

        r, u = split(sigmoid([x, h] @ gates.kernel + gates.bias), 2)   # reset, update
        c    = act([x, r * h] @ candidate.kernel + candidate.bias)
        h'   = u * h + (1 - u) * c

    This differs from torch's ``nn.GRU`` ("reset after", ``r * (W_hn h + b_hn)``): no weights
    make the two equal in general.

    Parameters: ``gates.kernel`` ``(input_depth + num_units, 2*num_units)`` (blocks r, u),
    ``gates.bias`` ``(2*num_units,)`` initialised to 1.0; ``candidate.kernel``
    ``(input_depth + num_units, num_units)``, ``candidate.bias`` ``(num_units,)`` zeros.

    State and output: ``(batch, num_units)``.

    Example::

        >>> cell = GRUCell(16)
        >>> out, h = cell(torch.randn(4, 8), cell.zero_state(4, torch.float32))
        >>> tuple(cell.gates.kernel.shape), tuple(h.shape)
        ((24, 32), (4, 16))
    """

    def __init__(self, num_units: int, activation: Any = None, **kwargs: Any):
        self.num_units = check_units(num_units, "num_units", type(self).__name__)
        self.activation = get_activation(activation)
        super().__init__(**kwargs)

    @property
    def state_size(self) -> int:
        return self.num_units

    @property
    def output_size(self) -> int:
        return self.num_units

    def _build(self, input_depth: int) -> None:
        n, rows = self.num_units, input_depth + self.num_units
        self.gates = Dense(self._new_parameter(rows, 2 * n), self._new_parameter(2 * n, init=1.0))
        self.candidate = Dense(self._new_parameter(rows, n), self._new_parameter(n, init=0.0))

    def call(self, inputs: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._build_for(inputs)
        r, u = torch.sigmoid(self.gates(torch.cat([inputs, state], 1))).chunk(2, dim=1)  # each (B, N)
        c = self.activation(self.candidate(torch.cat([inputs, r * state], 1)))  # (B, N)
        new_h = u * state + (1 - u) * c
        return new_h, new_h
