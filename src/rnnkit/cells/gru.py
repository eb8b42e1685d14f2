"""TF1's ``GRUCell``, and the GRU step functions every rnnkit GRU shares.

Two GRUs exist (see ``conventions.md``): "reset before" (TF1, Keras ``reset_after=False``), where the reset
gate multiplies ``h`` before the candidate's matrix multiply, and "reset after" (torch, cuDNN, Keras's
default), where it multiplies the result of that multiply. Each is written once, here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ._base import Dense, ParamFormula, SingleStateCell
from .registry import register_cell

__all__ = ["GRUCell", "gru_update", "gru_reset_before_step", "gru_reset_after_pointwise"]


def gru_update(u: torch.Tensor, h: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
    """The state update of every rnnkit GRU: ``h' = u * h + (1 - u) * candidate`` (``u`` is torch's ``z``)."""
    return u * h + (1 - u) * candidate


def gru_reset_before_step(
    gates: torch.Tensor,
    h: torch.Tensor,
    candidate: Callable[[torch.Tensor], torch.Tensor],
    activation: Any = torch.tanh,
    h_recurrent: torch.Tensor | None = None,
) -> torch.Tensor:
    """TF's GRU step ("reset before") after the gates' matmul, for ``GRUCell`` and ``GRU(reset_after=False)``::

        r, u = sigmoid(gates)                           # gates: (batch, 2 * units), blocks r, u
        c    = act(candidate(r * h_recurrent))          # candidate: r * h -> (batch, units) pre-activation
        h'   = u * h + (1 - u) * c

    ``candidate`` adds the input's part and the bias to the matmul of ``r * h``, in whatever layout the caller
    keeps them. ``h_recurrent`` is what the recurrent matmuls read (``h`` unless a recurrent-dropout mask
    applies); the update always blends the unmasked ``h``.
    """
    r, u = torch.sigmoid(gates).chunk(2, dim=1)  # each (B, N)
    c = activation(candidate(r * (h if h_recurrent is None else h_recurrent)))  # (B, N)
    return gru_update(u, h, c)


def gru_reset_after_pointwise(
    gates_x: torch.Tensor, gates_h: torch.Tensor, h: torch.Tensor, activation: Any = torch.tanh
) -> torch.Tensor:
    """torch's GRU step ("reset after"; cuDNN, Keras ``reset_after=True``) after both matmuls::

        r  = sigmoid(x_r + h_r),  z = sigmoid(x_z + h_z)
        n  = act(x_n + r * h_n)
        h' = (1 - z) * n + z * h

    ``gates_x = W_ih x + b_ih`` and ``gates_h = W_hh h + b_hh``, each ``(batch, 3 * units)`` in torch's block
    order r, z, n; ``h`` the previous state ``(batch, units)``.
    """
    x_rz, x_n = gates_x.tensor_split([2 * h.shape[1]], dim=1)
    h_rz, h_n = gates_h.tensor_split([2 * h.shape[1]], dim=1)
    r, z = torch.sigmoid(x_rz + h_rz).chunk(2, dim=1)  # each (B, N)
    return gru_update(z, h, activation(x_n + r * h_n))


@register_cell()
class GRUCell(SingleStateCell):
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

    family = "gru"

    def _build(self, input_depth: int) -> None:
        n, rows = self.num_units, input_depth + self.num_units
        self.gates = Dense(self._new_parameter(rows, 2 * n), self._new_parameter(2 * n, init=1.0))
        self.candidate = Dense(self._new_parameter(rows, n), self._new_parameter(n, init=0.0))

    def parameter_formulas(self, input_depth: int) -> list[ParamFormula]:
        w = {"input_depth": input_depth, "num_units": self.num_units}
        return [
            ("gates.kernel", ("input_depth + num_units", "2*num_units"), w, "columns r|u; rows x then h"),
            ("gates.bias", ("2*num_units",), w, "r|u (initialised to 1.0)"),
            ("candidate.kernel", ("input_depth + num_units", "num_units"), w, "rows x then r*h"),
            ("candidate.bias", ("num_units",), w, ""),
        ]

    def call(self, inputs: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._build_for(inputs)
        gates = self.gates(torch.cat([inputs, state], 1))  # (B, 2N)
        new_h = gru_reset_before_step(
            gates, state, lambda rh: self.candidate(torch.cat([inputs, rh], 1)), self.activation
        )
        return new_h, new_h
