"""TF1's ``MultiRNNCell``: cells stacked in depth within one time step."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .._structure import flatten
from ._base import RNNCell

__all__ = ["MultiRNNCell"]


class MultiRNNCell(RNNCell):
    """Stack cells: the output of layer ``k`` is the input of layer ``k + 1`` at the same step.

    ``state_size`` is a tuple with one entry per layer, e.g. ``(128, 128)`` for two
    ``BasicRNNCell(128)`` (two states of 128 units, not a 128x128 matrix); the output is the top
    layer's. With ``state_is_tuple=False`` the layer states are concatenated along the units
    axis (every layer's state must then be a single tensor).

    Parameters are named ``cell_0.kernel``, ``cell_1.kernel``, ... (TF's ``cell_0/.../kernel``).

    The TF idiom ``MultiRNNCell([cell] * n)`` repeats one cell object: in TF >= 1.0 that is an
    error or silently shares weights. rnnkit refuses it, since a repeated cell would share its
    parameters across layers and could not even build when the layers see different depths.

    Example::

        >>> stack = MultiRNNCell([BasicRNNCell(128) for _ in range(2)])
        >>> stack.state_size
        (128, 128)
        >>> out, states = stack(torch.randn(32, 128), stack.zero_state(32, torch.float32))
        >>> tuple(out.shape), len(states)
        ((32, 128), 2)
    """

    def __init__(self, cells: Sequence[RNNCell], state_is_tuple: bool = True, **kwargs: Any):
        cells = list(cells)
        if not cells:
            raise ValueError("MultiRNNCell: expected at least one cell, got none")
        for k, cell in enumerate(cells):
            if not isinstance(cell, RNNCell):
                raise TypeError(f"MultiRNNCell: cell {k} must be an rnnkit RNNCell, got {type(cell).__name__}")
            if any(cell is other for other in cells[:k]):
                raise ValueError(
                    f"MultiRNNCell: cell {k} is the same object as an earlier cell (the `[cell] * n` idiom); "
                    "create one cell per layer, e.g. MultiRNNCell([BasicLSTMCell(n) for _ in range(layers)])"
                )
        if not state_is_tuple:
            nested = [k for k, c in enumerate(cells) if not isinstance(c.state_size, int)]
            if nested:
                raise ValueError(
                    f"MultiRNNCell: state_is_tuple=False needs cells whose state is one tensor; cell {nested[0]} "
                    f"has state_size {cells[nested[0]].state_size} (use state_is_tuple=False on that cell too)"
                )
        self.state_is_tuple = bool(state_is_tuple)
        # Build for input_size= only once the layers are registered: building before would build nothing.
        input_size = kwargs.pop("input_size", None)
        super().__init__(**kwargs)
        for k, cell in enumerate(cells):
            self.add_module(f"cell_{k}", cell)
        if input_size is not None:
            self.build(input_size)
        elif all(c.built for c in cells):
            self._check_depths(cells[0].input_depth)
            self.input_depth = cells[0].input_depth

    @property
    def cells(self) -> list[RNNCell]:
        return list(self.children())  # type: ignore[arg-type]

    @property
    def state_size(self) -> tuple | int:
        sizes = tuple(c.state_size for c in self.cells)
        return sizes if self.state_is_tuple else sum(sizes)

    @property
    def output_size(self) -> int:
        return self.cells[-1].output_size

    def _check_depths(self, input_depth: int) -> None:
        depth = input_depth
        for k, cell in enumerate(self.cells):
            if cell.built and cell.input_depth != depth:
                raise ValueError(
                    f"MultiRNNCell: cell {k} ({type(cell).__name__}) is built for input depth {cell.input_depth}, "
                    f"but the layer below gives depth {depth}"
                )
            depth = cell.output_size

    def _build(self, input_depth: int) -> None:
        self._check_depths(input_depth)
        depth = input_depth
        for cell in self.cells:
            self._build_child(cell, depth)
            depth = cell.output_size

    def call(self, inputs: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        self._build_for(inputs)
        if self.state_is_tuple:
            states = state
        else:
            states = state.split([c.state_size for c in self.cells], dim=1)
        new_states = []
        x = inputs
        for cell, s in zip(self.cells, states, strict=True):
            x, s = cell.call(x, s)
            new_states.append(s)
        if self.state_is_tuple:
            return x, tuple(new_states)
        return x, torch.cat(flatten(new_states), 1)
