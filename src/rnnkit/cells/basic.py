"""TF1's ``BasicRNNCell``: the Elman recurrence."""

from __future__ import annotations

from typing import Any

import torch

from ._base import ParamFormula, SingleStateCell
from .registry import register_cell

__all__ = ["BasicRNNCell", "basic_rnn_pointwise"]


def basic_rnn_pointwise(preactivation: torch.Tensor, activation: Any = torch.tanh) -> torch.Tensor:
    """The Elman step after the matmul, for every vanilla RNN in rnnkit (TF's ``BasicRNNCell``, torch-style layers).

    ``h' = act(preactivation)`` with ``preactivation = W x + U h + b`` of shape ``(batch, num_units)``, however
    the caller lays out ``W``, ``U`` and ``b`` (TF: one ``[x, h] @ kernel + bias``; torch: two matmuls, two biases).
    """
    return activation(preactivation)


@register_cell()
class BasicRNNCell(SingleStateCell):
    r"""The most basic RNN cell: ``output = new_state = act([x, h] @ kernel + bias)``.

    .. math:: h_t = \mathrm{act}([x_t, h_{t-1}] W + b)

    Parameters (TF's names and shapes): ``kernel`` ``(input_depth + num_units, num_units)``,
    Glorot-uniform; ``bias`` ``(num_units,)``, zeros. That is ``(input_depth + num_units) *
    num_units + num_units`` scalars: 29,312 for 100 inputs and 128 units.

    Shapes: ``inputs`` ``(batch, input_depth)``, ``state`` and output ``(batch, num_units)``.

    Example::

        >>> cell = BasicRNNCell(128)
        >>> h0 = cell.zero_state(32, torch.float32)
        >>> out, h1 = cell(torch.randn(32, 100), h0)
        >>> tuple(cell.kernel.shape), tuple(h1.shape)
        ((228, 128), (32, 128))
    """

    family = "rnn"

    def _build(self, input_depth: int) -> None:
        self.kernel = self._new_parameter(input_depth + self.num_units, self.num_units)
        self.bias = self._new_parameter(self.num_units, init=0.0)

    def parameter_formulas(self, input_depth: int) -> list[ParamFormula]:
        w = {"input_depth": input_depth, "num_units": self.num_units}
        return [
            ("kernel", ("input_depth + num_units", "num_units"), w, "rows x then h"),
            ("bias", ("num_units",), w, ""),
        ]

    def call(self, inputs: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._build_for(inputs)
        preactivation = torch.addmm(self.bias, torch.cat([inputs, state], 1), self.kernel)  # (B, H)
        h = basic_rnn_pointwise(preactivation, self.activation)
        return h, h
