"""TF1's cell wrappers: ``DropoutWrapper`` and ``ResidualWrapper``.

A wrapper holds its cell as ``cell`` (parameters ``cell.kernel``, ...), forwards
``state_size``/``output_size``, and adds its own behaviour around the wrapped step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .._structure import LSTMStateTuple, flatten, map_structure, pack_as
from ._base import RNNCell, dropout_mask

__all__ = ["RNNCellWrapper", "DropoutWrapper", "ResidualWrapper"]


class RNNCellWrapper(RNNCell):
    """Base of the wrappers: the wrapped cell's sizes, building and zero state."""

    def __init__(self, cell: RNNCell):
        if not isinstance(cell, RNNCell):
            raise TypeError(f"{type(self).__name__}: expected an rnnkit RNNCell to wrap, got {type(cell).__name__}")
        super().__init__()
        self.cell = cell
        self.input_depth = cell.input_depth

    @property
    def state_size(self) -> Any:
        return self.cell.state_size

    @property
    def output_size(self) -> int:
        return self.cell.output_size

    def _build(self, input_depth: int) -> None:
        self._build_child(self.cell, input_depth)


def _default_state_filter(substate: Any) -> Any:
    """TF's default: never drop out the memory ``c`` of an ``LSTMStateTuple``."""
    if isinstance(substate, LSTMStateTuple):
        return LSTMStateTuple(c=False, h=True)
    return True


def _check_keep_prob(p: Any, name: str) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p <= 1.0:
        raise ValueError(f"DropoutWrapper: {name} must be a float in (0, 1], got {p!r}")
    return float(p)


class DropoutWrapper(RNNCellWrapper):
    """Dropout on a cell's inputs, outputs and new state (training mode only).

    ``x -> x / keep_prob * mask`` with ``mask ~ Bernoulli(keep_prob)``, for each of
    ``input_keep_prob``, ``output_keep_prob`` and ``state_keep_prob``. In eval mode the wrapper
    is the identity around the cell.

    ``variational_recurrent=True`` (Gal & Ghahramani 2016) draws one mask per sequence and
    batch element, at the start of each unroll (``begin_sequence``, called by every rnnkit
    runner), and reuses it at every time step; a cell stepped by hand keeps its masks until
    ``begin_sequence`` or ``reset_dropout_masks()`` is called.

    State dropout applies where ``dropout_state_filter_visitor(substate)`` says so; by default,
    as in TF, everything except the ``c`` of an ``LSTMStateTuple``.

    Example::

        >>> cell = DropoutWrapper(BasicLSTMCell(16), output_keep_prob=0.5, variational_recurrent=True)
        >>> out, state = cell(torch.randn(4, 8), cell.zero_state(4, torch.float32))
    """

    def __init__(
        self,
        cell: RNNCell,
        input_keep_prob: float = 1.0,
        output_keep_prob: float = 1.0,
        state_keep_prob: float = 1.0,
        variational_recurrent: bool = False,
        dropout_state_filter_visitor: Callable[[Any], Any] | None = None,
    ):
        super().__init__(cell)
        self.input_keep_prob = _check_keep_prob(input_keep_prob, "input_keep_prob")
        self.output_keep_prob = _check_keep_prob(output_keep_prob, "output_keep_prob")
        self.state_keep_prob = _check_keep_prob(state_keep_prob, "state_keep_prob")
        self.variational_recurrent = bool(variational_recurrent)
        self._state_filter = dropout_state_filter_visitor or _default_state_filter
        self._masks: dict[str, Any] = {}

    def begin_sequence(self, batch_size: int) -> None:
        self.reset_dropout_masks()
        super().begin_sequence(batch_size)

    def reset_dropout_masks(self) -> None:
        """Forget the variational masks; the next step draws new ones."""
        self._masks = {}

    def _dropout(self, x: torch.Tensor, keep_prob: float, key: str) -> torch.Tensor:
        if self.variational_recurrent:
            mask = self._masks.get(key)
            if mask is None or mask.shape != x.shape:
                mask = self._masks[key] = dropout_mask(tuple(x.shape), keep_prob, x)
            return x * mask
        return torch.nn.functional.dropout(x, p=1.0 - keep_prob)

    def _filtered_state_dropout(self, state: Any) -> Any:
        selected = flatten(self._selected(state))
        dropped = [
            self._dropout(x, self.state_keep_prob, f"state{k}") if use else x
            for k, (x, use) in enumerate(zip(flatten(state), selected, strict=True))
        ]
        return pack_as(state, dropped)

    def _selected(self, substate: Any) -> Any:
        """TF's traversal: the filter says, per (sub)structure, whether to descend into it."""
        verdict = self._state_filter(substate)
        if not isinstance(substate, (tuple, list)):
            return bool(verdict)
        parts = verdict if isinstance(verdict, (tuple, list)) else [verdict] * len(substate)
        return [
            self._selected(sub) if use else map_structure(lambda _: False, sub)
            for sub, use in zip(substate, parts, strict=True)
        ]

    def call(self, inputs: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        self._build_for(inputs)
        if not self.training:
            return self.cell.call(inputs, state)
        if self.input_keep_prob < 1.0:
            inputs = self._dropout(inputs, self.input_keep_prob, "input")
        output, new_state = self.cell.call(inputs, state)
        if self.state_keep_prob < 1.0:
            new_state = self._filtered_state_dropout(new_state)
        if self.output_keep_prob < 1.0:
            output = self._dropout(output, self.output_keep_prob, "output")
        return output, new_state


class ResidualWrapper(RNNCellWrapper):
    """``output = inputs + cell_output`` (or ``residual_fn(inputs, cell_output)``); the state is the cell's.

    The input depth must equal the cell's ``output_size``.

    Example::

        >>> cell = ResidualWrapper(GRUCell(8))
        >>> out, h = cell(torch.randn(2, 8), cell.zero_state(2, torch.float32))
    """

    def __init__(self, cell: RNNCell, residual_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None):
        super().__init__(cell)
        self.residual_fn = residual_fn

    def _build(self, input_depth: int) -> None:
        if self.residual_fn is None and input_depth != self.cell.output_size:
            raise ValueError(
                f"ResidualWrapper: inputs of depth {input_depth} cannot be added to the wrapped "
                f"{type(self.cell).__name__}'s outputs of depth {self.cell.output_size}"
            )
        super()._build(input_depth)

    def call(self, inputs: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        self._build_for(inputs)
        output, new_state = self.cell.call(inputs, state)
        if self.residual_fn is not None:
            return self.residual_fn(inputs, output), new_state
        return inputs + output, new_state
