"""TF's shape object, as a user cell's ``build(inputs_shape)`` reads it.

A cell written for TF1's protocol receives ``inputs_shape``, a ``TensorShape`` of its inputs
``(batch, input_depth)``, and reads its depth the way TF1 or TF2 code does::

    input_depth = inputs_shape[1].value          # TF1: a Dimension with .value
    input_depth = inputs_shape[-1]               # TF2: an int
    input_depth = int(inputs_shape[-1])          # either
    batch, input_depth = inputs_shape.as_list()  # ints, or None where unknown

So a known ``Dimension`` here is an ``int`` (arithmetic, comparisons, ``torch.empty(dim)`` work, and give plain
ints) that also has TF1's ``.value``. An unknown one (the batch of a build before any call, ``input_size=``) is
``Dimension(None)``: ``.value`` is ``None``, ``== None`` holds, and ``int()`` of it raises ``TypeError`` as TF1's
does.

Example::

    >>> shape = TensorShape([32, 100])
    >>> shape[1].value, shape[-1] + 28, int(shape[-1]), shape.as_list(), shape.ndims, len(shape)
    (100, 128, 100, [32, 100], 2, 2)
    >>> TensorShape([None, 100])[0].value is None, TensorShape([None, 100])
    (True, TensorShape([None, 100]))
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["Dimension", "TensorShape", "depth_and_batch"]


class Dimension(int):
    """A known dimension: an ``int`` with TF1's ``.value``. ``Dimension(None)`` gives the unknown one."""

    __slots__ = ()

    def __new__(cls, value: Any) -> Any:
        if value is None or isinstance(value, UnknownDimension):
            return UNKNOWN
        return super().__new__(cls, _as_dim(value))

    @property
    def value(self) -> int:
        return int(self)

    def __repr__(self) -> str:
        return f"Dimension({int(self)})"


class UnknownDimension:
    """TF1's ``Dimension(None)``: ``.value`` is ``None``; it equals ``None`` and itself; it has no ``int``."""

    __slots__ = ()
    value = None

    def __eq__(self, other: object) -> bool:
        return other is None or isinstance(other, UnknownDimension)

    def __hash__(self) -> int:
        return hash(None)

    def __int__(self) -> int:
        raise TypeError("TensorShape: an unknown dimension (None: the batch of a build before any call) has no int")

    __index__ = __int__

    def __repr__(self) -> str:
        return "Dimension(None)"


UNKNOWN = object.__new__(UnknownDimension)


def _as_dim(value: Any) -> int | None:
    """``value`` as a dimension: ``None`` (unknown) or a non-negative ``int`` (a ``Dimension``'s too)."""
    if value is None or isinstance(value, UnknownDimension):
        return None
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"TensorShape: a dimension must be an int or None, got {type(value).__name__} ({value!r})")
    value = value.__index__()
    if value < 0:
        raise ValueError(f"TensorShape: a dimension must be non-negative, got {value}")
    return int(value)


class TensorShape:
    """A tensor's shape as TF gives it to ``build``: dimensions that are ``int`` or ``None`` (unknown).

    ``shape[i]`` is a ``Dimension`` (``shape[i:j]`` a ``TensorShape``); ``as_list()``, ``ndims``/``rank``, ``dims``,
    ``len()``, iteration, ``==`` with a shape, list or tuple, ``is_fully_defined()``, ``num_elements()``,
    ``with_rank(n)``, ``with_rank_at_least(n)`` and ``concatenate(other)`` behave as TF's.
    """

    __slots__ = ("_dims",)

    def __init__(self, dims: Iterable[Any]):
        if isinstance(dims, TensorShape):
            dims = dims.as_list()
        self._dims: tuple[int | None, ...] = tuple(_as_dim(d) for d in dims)

    @property
    def ndims(self) -> int:
        return len(self._dims)

    rank = ndims

    @property
    def dims(self) -> list[Any]:
        return [Dimension(d) for d in self._dims]

    def as_list(self) -> list[int | None]:
        return list(self._dims)

    def __len__(self) -> int:
        return len(self._dims)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.dims)

    def __getitem__(self, key: int | slice) -> Any:
        if isinstance(key, slice):
            return TensorShape(self._dims[key])
        return Dimension(self._dims[key])

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TensorShape):
            return self._dims == other._dims
        if isinstance(other, (list, tuple)):
            return list(self._dims) == [None if d is None else d for d in other]
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._dims)

    def is_fully_defined(self) -> bool:
        return None not in self._dims

    def num_elements(self) -> int | None:
        """The product of the dimensions, ``None`` if one is unknown."""
        if not self.is_fully_defined():
            return None
        count = 1
        for d in self._dims:
            count *= d
        return count

    def with_rank(self, rank: int) -> TensorShape:
        if self.ndims != rank:
            raise ValueError(f"Shape {self} must have rank {rank}")
        return self

    def with_rank_at_least(self, rank: int) -> TensorShape:
        if self.ndims < rank:
            raise ValueError(f"Shape {self} must have rank at least {rank}")
        return self

    def concatenate(self, other: Iterable[Any]) -> TensorShape:
        return TensorShape([*self._dims, *TensorShape(other)._dims])

    def __repr__(self) -> str:
        return f"TensorShape({self.as_list()})"

    def __str__(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self._dims)
        return f"({dims}{',' if self.ndims == 1 else ''})"


def depth_and_batch(inputs_shape: Any, component: str) -> tuple[Any, int | None]:
    """The input depth (the last dimension, known) and the batch (the first, or ``None``) of what ``build`` got:
    a shape (``TensorShape``, ``torch.Size``, list, tuple), or a depth (rnnkit's ``build(input_depth)``), returned
    as it came (unchecked)."""
    if not isinstance(inputs_shape, (TensorShape, list, tuple)):  # torch.Size is a tuple
        return inputs_shape, None  # a depth: the caller checks it is a positive int
    dims = TensorShape(inputs_shape).as_list()
    if not dims or dims[-1] is None:
        raise ValueError(f"{component}: build needs the inputs' last dimension (the input depth), got shape {dims}")
    return dims[-1], (dims[0] if len(dims) >= 2 else None)
