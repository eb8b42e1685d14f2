"""TF1's ``MultiRNNCell``: cells stacked in depth within one time step."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch

from .._structure import flatten
from ._base import RNNCell
from .registry import register_cell

__all__ = ["MultiRNNCell"]


@register_cell(kind="stack")
class MultiRNNCell(RNNCell):
    """Stack cells: the output of layer ``k`` is the input of layer ``k + 1`` at the same step.

    ``state_size`` is a tuple with one entry per layer, e.g. ``(128, 128)`` for two
    ``BasicRNNCell(128)`` (two states of 128 units, not a 128x128 matrix); the output is the top
    layer's. With ``state_is_tuple=False`` the layer states are concatenated along the units
    axis (every layer's state must then be a single tensor).

    Parameters are named ``cell_0.kernel``, ``cell_1.kernel``, ... (TF's ``cell_0/.../kernel``).

    The TF idiom ``MultiRNNCell([cell] * n)`` (one cell object repeated) behaves as in TF1: a ``UserWarning``
    that the layers share weights, then one set of parameters (named after the first layer that holds the
    cell, e.g. ``cell_0.kernel``) used by every layer that repeats it. As in TF1 this only works where the
    shared cell sees the same input depth in each of its layers (``[BasicRNNCell(128)] * 2`` on 128-deep
    inputs); otherwise building raises a ``ValueError`` naming the layers and depths. For independent layers
    create one cell per layer: ``MultiRNNCell([BasicLSTMCell(n) for _ in range(layers)])``.

    Example::

        >>> from rnnkit.cells import BasicRNNCell
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
        if len({id(c) for c in cells}) < len(cells):
            # TF1's words (it logs them and shares the variables).
            warnings.warn(
                "MultiRNNCell: at least two cells provided to MultiRNNCell are the same object and will share "
                "weights (the `[cell] * n` idiom); create one cell per layer for independent layers",
                UserWarning,
                stacklevel=2,
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
            if all(cell is not other for other in cells[:k]):  # a repeated cell's parameters are its first layer's
                self.add_module(f"cell_{k}", cell)
        self._layers = tuple(cells)  # every layer, repeats included (children() lists each module once)
        if input_size is not None:
            self.build(input_size)
        elif all(c.built for c in cells):
            self._check_depths(cells[0].input_depth)
            self.input_depth = cells[0].input_depth

    @property
    def cells(self) -> list[RNNCell]:
        """The cell of each layer, bottom first (a cell repeated by ``[cell] * n`` appears at each of its layers)."""
        return list(self._layers)

    def first_layer_of(self, k: int) -> int:
        """The layer whose name holds layer ``k``'s parameters (``k`` itself unless its cell repeats an earlier)."""
        return next(j for j, c in enumerate(self._layers) if c is self._layers[k])

    @property
    def state_size(self) -> tuple | int:
        sizes = tuple(c.state_size for c in self.cells)
        return sizes if self.state_is_tuple else sum(sizes)

    @property
    def output_size(self) -> int:
        return self.cells[-1].output_size

    def _check_depths(self, input_depth: int) -> None:
        depth, seen = input_depth, {}
        for k, cell in enumerate(self.cells):
            first = self.first_layer_of(k)
            if first != k and seen[first] != depth:
                raise ValueError(
                    f"MultiRNNCell: cell {k} is the same {type(cell).__name__} object as cell {first}, which shares "
                    f"its weights, but cell {first} reads inputs of depth {seen[first]} and cell {k} of depth "
                    f"{depth}; one kernel cannot take both: create one cell per layer"
                )
            if cell.built and cell.input_depth != depth:
                raise ValueError(
                    f"MultiRNNCell: cell {k} ({type(cell).__name__}) is built for input depth {cell.input_depth}, "
                    f"but the layer below gives depth {depth}"
                )
            seen.setdefault(first, depth)
            depth = cell.output_size

    def _build(self, input_depth: int) -> None:
        self._check_depths(input_depth)
        depth = input_depth
        for cell in self.cells:
            if not cell.built:
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
