"""Nested state structures: the one `zero_state` builder and the one state validator.

A *state size* is an ``int`` or a nested tuple of them (``LSTMStateTuple(c=128, h=128)``,
``(128, 128)`` for a two-layer ``MultiRNNCell``). A *state* has the same structure with a
tensor of shape ``(batch, size)`` at every leaf. Every cell, wrapper and runner in rnnkit
goes through the functions here, so that a state is built, checked and mapped one way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

__all__ = [
    "LSTMStateTuple",
    "flatten",
    "pack_as",
    "map_structure",
    "zero_state_for",
    "check_state",
    "check_float_dtype",
    "as_torch_dtype",
]


class LSTMStateTuple(NamedTuple):
    """An LSTM's state, TF's order: the cell state ``c`` first, the hidden state ``h`` second.

    Each is ``(batch, num_units)`` (``h`` is ``(batch, num_proj)`` when a projection is used).
    torch orders the same pair ``(h, c)``; rnnkit's TF-style cells always use ``(c, h)``.
    """

    c: Any
    h: Any

    @property
    def dtype(self) -> torch.dtype:
        return self.c.dtype


def _is_sequence(x: Any) -> bool:
    return isinstance(x, (tuple, list))


def flatten(structure: Any) -> list[Any]:
    """The leaves of a nested tuple/list structure, depth first."""
    if _is_sequence(structure):
        return [leaf for item in structure for leaf in flatten(item)]
    return [structure]


def pack_as(structure: Any, flat: Sequence[Any]) -> Any:
    """Rebuild ``structure``'s nesting (named tuples included) from the leaves ``flat``."""
    leaves = iter(flat)

    def build(s: Any) -> Any:
        if _is_sequence(s):
            items = [build(x) for x in s]
            if isinstance(s, list):
                return items
            return type(s)(*items) if hasattr(s, "_fields") else tuple(items)
        return next(leaves)

    return build(structure)


def map_structure(fn: Callable[..., Any], structure: Any, *others: Any) -> Any:
    """Apply ``fn`` leaf-wise over ``structure`` and ``others`` (same nesting)."""
    columns = zip(flatten(structure), *(flatten(o) for o in others), strict=True)
    return pack_as(structure, [fn(*leaves) for leaves in columns])


def as_torch_dtype(dtype: Any) -> torch.dtype:
    """A torch dtype from a torch dtype, a NumPy dtype or scalar type, or a name (``"float32"``)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return torch.from_numpy(np.empty(0, dtype=np.dtype(dtype))).dtype
    except TypeError as err:
        raise TypeError(f"expected a torch or NumPy dtype, got {dtype!r}") from err


def check_float_dtype(dtype: torch.dtype, component: str) -> None:
    if not dtype.is_floating_point:
        raise TypeError(f"{component}: expected a floating-point dtype, got {dtype}")


def zero_state_for(state_size: Any, batch_size: int, dtype: torch.dtype | None = None, device: Any = None) -> Any:
    """Zeros of shape ``(batch_size, size)`` at every leaf of ``state_size``."""
    if not isinstance(batch_size, int) or batch_size < 0:
        raise ValueError(f"zero_state: batch_size must be a non-negative int, got {batch_size!r}")
    dtype = torch.get_default_dtype() if dtype is None else as_torch_dtype(dtype)
    check_float_dtype(dtype, "zero_state")
    return map_structure(lambda n: torch.zeros(batch_size, n, dtype=dtype, device=device), state_size)


def _describe(structure: Any) -> str:
    if _is_sequence(structure):
        name = type(structure).__name__ if hasattr(structure, "_fields") else ""
        return f"{name}({', '.join(_describe(s) for s in structure)})"
    if isinstance(structure, torch.Tensor):
        return f"tensor{tuple(structure.shape)}"
    return repr(structure)


def _same_nesting(state: Any, size: Any) -> bool:
    if _is_sequence(size):
        return (
            _is_sequence(state)
            and len(state) == len(size)
            and all(_same_nesting(s, z) for s, z in zip(state, size, strict=True))
        )
    return isinstance(state, torch.Tensor)


def check_state(state: Any, state_size: Any, batch_size: int, component: str) -> Any:
    """Validate ``state`` against ``state_size`` and return it in ``state_size``'s structure.

    Plain tuples are accepted where a named tuple is expected (``(c, h)`` for an
    ``LSTMStateTuple``) and come back as the named tuple. Nothing is broadcast: every leaf
    must be exactly ``(batch_size, size)`` and floating point.
    """
    if not _same_nesting(state, state_size):
        raise ValueError(
            f"{component}: state structure does not match state_size; "
            f"expected {_describe(state_size)}, got {_describe(state)}"
        )
    for leaf, size in zip(flatten(state), flatten(state_size), strict=True):
        if tuple(leaf.shape) != (batch_size, size):
            raise ValueError(
                f"{component}: expected a state of structure {_describe(state_size)} with leaves "
                f"(batch={batch_size}, size), got {_describe(state)}"
            )
        check_float_dtype(leaf.dtype, f"{component} state")
    return pack_as(state_size, flatten(state))
