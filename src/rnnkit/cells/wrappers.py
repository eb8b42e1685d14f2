"""TF1's cell wrappers: ``DropoutWrapper`` and ``ResidualWrapper``.

A wrapper holds its cell as ``cell`` (parameters ``cell.kernel``, ...), forwards
``state_size``/``output_size``, and adds its own behaviour around the wrapped step.
"""

from __future__ import annotations

import hashlib
import numbers
from collections.abc import Callable
from typing import Any

import torch

from .._structure import LSTMStateTuple, flatten, map_structure, pack_as
from ._base import RNNCell, dropout_mask
from .registry import register_cell

__all__ = ["RNNCellWrapper", "DropoutWrapper", "ResidualWrapper", "tf_op_seed", "default_state_filter"]


@register_cell(kind="base", namespaces=())
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

    @property
    def wrapped_cell(self) -> RNNCell:
        """The wrapped cell (TF's ``wrapped_cell``)."""
        return self.cell

    def zero_state(self, batch_size: int, dtype: torch.dtype | None = None, device: Any = None) -> Any:
        """The wrapped cell's ``zero_state``: TF's wrappers delegate, so a cell's own zero state is kept."""
        return self.cell.zero_state(batch_size, dtype or self._factory["dtype"], device=device)

    def _build(self, input_depth: int) -> None:
        self._build_child(self.cell, input_depth)


def default_state_filter(substate: Any) -> Any:
    """TF's default: never drop out the memory ``c`` of an ``LSTMStateTuple``."""
    if isinstance(substate, LSTMStateTuple):
        return LSTMStateTuple(c=False, h=True)
    return True


def _check_keep_prob(p: Any, name: str) -> float:
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 < p <= 1.0:
        raise ValueError(f"DropoutWrapper: {name} must be a float in (0, 1], got {p!r}")
    return float(p)


def _depth(size: Any) -> int | None:
    """TF's ``input_size`` (an int, a ``TensorShape([d])``, a 1-tuple) as a depth."""
    if size is None:
        return None
    if isinstance(size, (tuple, list)) or hasattr(size, "as_list"):
        dims = list(size.as_list() if hasattr(size, "as_list") else size)
        if len(dims) == 1:
            size = dims[0]
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size <= 0:
        raise ValueError(f"DropoutWrapper: input_size must be a positive depth (an int), got {size!r}")
    return int(size)


def tf_op_seed(seed: int, salt: str) -> int:
    """TF1's per-mask seed: ``DropoutWrapper._gen_seed`` (md5 of the seed and ``"input_0"``, ``"state_1"``...)."""
    digest = hashlib.md5((str(seed) + salt).encode("utf-8")).hexdigest()
    return int(digest[:8], 16) & 0x7FFFFFFF


@register_cell(kind="wrapper")
class DropoutWrapper(RNNCellWrapper):
    """Dropout on a cell's inputs, outputs and new state (training mode only), as TF1's ``DropoutWrapper``.

    ``x -> x / keep_prob * mask`` with ``mask ~ Bernoulli(keep_prob)``, for each of ``input_keep_prob``,
    ``output_keep_prob`` and ``state_keep_prob``. In eval mode the wrapper is the identity around the cell.

    Masks, as TF1 draws them:

    - default: a fresh mask of the value's shape ``(batch, depth)`` at every step.
    - ``variational_recurrent=True`` (Gal & Ghahramani 2016): one mask of shape ``(1, depth)`` per input, state
      leaf and output, **shared by every row of the batch** and every time step of an unroll (TF prepends a 1
      for the batch dimension). Each runner call (``begin_sequence``) draws new ones, as each ``session.run``
      does in TF; a cell stepped by hand keeps its masks until ``begin_sequence`` or ``reset_dropout_masks()``.
      (``rnnkit.LSTM(recurrent_dropout=)`` differs on purpose: one mask per sequence, i.e. per batch row, on
      the recurrent ``h`` only, as Keras draws it.)

    ``seed``: each mask gets a ``torch.Generator`` of its own, seeded as TF seeds that mask's op (``tf_op_seed``
    of ``seed`` and ``"input_0"``, ``"state_k"``, ``"output_0"``), so masks are reproducible and independent of
    torch's global stream; without it they come from torch's global generator. ``input_size`` and ``dtype`` are
    accepted as TF takes them (rnnkit reads both from the inputs; an ``input_size`` builds the wrapped cell
    now, as rnnkit's ``input_size=`` does everywhere).

    State dropout applies where ``dropout_state_filter_visitor(substate)`` says so; by default, as in TF,
    everything except the ``c`` of an ``LSTMStateTuple``.

    Example::

        >>> from rnnkit.cells import BasicLSTMCell
        >>> cell = DropoutWrapper(BasicLSTMCell(16), output_keep_prob=0.5, variational_recurrent=True, seed=7)
        >>> out, state = cell(torch.randn(4, 8), cell.zero_state(4, torch.float32))
        >>> mask = cell.variational_mask("output_0", 16, out)    # the mask the step drew, kept for the sequence
        >>> tuple(mask.shape), bool(torch.equal(out, state.h * mask))   # one mask for the whole batch
        ((1, 16), True)
    """

    def __init__(
        self,
        cell: RNNCell,
        input_keep_prob: float = 1.0,
        output_keep_prob: float = 1.0,
        state_keep_prob: float = 1.0,
        variational_recurrent: bool = False,
        input_size: Any = None,
        dtype: torch.dtype | None = None,
        seed: int | None = None,
        dropout_state_filter_visitor: Callable[[Any], Any] | None = None,
    ):
        super().__init__(cell)
        self.input_keep_prob = _check_keep_prob(input_keep_prob, "input_keep_prob")
        self.output_keep_prob = _check_keep_prob(output_keep_prob, "output_keep_prob")
        self.state_keep_prob = _check_keep_prob(state_keep_prob, "state_keep_prob")
        self.variational_recurrent = bool(variational_recurrent)
        if dropout_state_filter_visitor is not None and not callable(dropout_state_filter_visitor):
            raise TypeError("DropoutWrapper: dropout_state_filter_visitor must be callable")
        if dtype is not None and not isinstance(dtype, torch.dtype):
            raise TypeError(f"DropoutWrapper: dtype must be a torch.dtype or None, got {dtype!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
            raise TypeError(f"DropoutWrapper: seed must be an int or None, got {seed!r}")
        self.seed = None if seed is None else int(seed)
        self._state_filter = dropout_state_filter_visitor or default_state_filter
        self._masks: dict[str, Any] = {}
        self._generators: dict[tuple[str, str], torch.Generator] = {}
        depth = _depth(input_size)
        if depth is not None:
            self.build(depth)

    def begin_sequence(self, batch_size: int) -> None:
        self.reset_dropout_masks()
        super().begin_sequence(batch_size)

    def reset_dropout_masks(self) -> None:
        """Forget the variational masks; the next step draws new ones."""
        self._masks = {}

    def _generator(self, key: str, like: torch.Tensor) -> torch.Generator | None:
        """``key``'s own seeded stream (``seed=``), one per device, or ``None`` for torch's global one."""
        if self.seed is None:
            return None
        slot = (key, str(like.device))
        if slot not in self._generators:
            self._generators[slot] = torch.Generator(like.device).manual_seed(tf_op_seed(self.seed, key))
        return self._generators[slot]

    def variational_mask(self, key: str, depth: int, like: torch.Tensor) -> torch.Tensor:
        """The unroll's mask ``(1, depth)`` for ``key`` (``input_0``, ``state_<k>``, ``output_0``: TF's salts),
        drawn once: the reference loop and the fused path both take it from here."""
        mask = self._masks.get(key)
        if mask is None or mask.shape[-1] != depth:
            keep = getattr(self, f"{key.split('_')[0]}_keep_prob")
            mask = self._masks[key] = dropout_mask((1, depth), keep, like, self._generator(key, like))
        return mask

    def _dropout(self, x: torch.Tensor, keep_prob: float, key: str) -> torch.Tensor:
        if self.variational_recurrent:
            return x * self.variational_mask(key, x.shape[-1], x)
        generator = self._generator(key, x)
        if generator is None:
            return torch.nn.functional.dropout(x, p=1.0 - keep_prob)
        return x * dropout_mask(tuple(x.shape), keep_prob, x, generator)

    def _filtered_state_dropout(self, state: Any) -> Any:
        selected = flatten(self._selected(state))
        dropped = [
            self._dropout(x, self.state_keep_prob, f"state_{k}") if use else x
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
            inputs = self._dropout(inputs, self.input_keep_prob, "input_0")
        output, new_state = self.cell.call(inputs, state)
        if self.state_keep_prob < 1.0:
            new_state = self._filtered_state_dropout(new_state)
        if self.output_keep_prob < 1.0:
            output = self._dropout(output, self.output_keep_prob, "output_0")
        return output, new_state


@register_cell(kind="wrapper")
class ResidualWrapper(RNNCellWrapper):
    """``output = inputs + cell_output`` (or ``residual_fn(inputs, cell_output)``); the state is the cell's.

    The input depth must equal the cell's ``output_size``.

    Example::

        >>> from rnnkit.cells import GRUCell
        >>> cell = ResidualWrapper(GRUCell(8))
        >>> out, h = cell(torch.randn(2, 8), cell.zero_state(2, torch.float32))
        >>> tuple(out.shape), tuple(h.shape)
        ((2, 8), (2, 8))
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
