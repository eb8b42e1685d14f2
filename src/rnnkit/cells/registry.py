"""The one list of rnnkit's cell classes: every cell declares itself here, with the decorator ``register_cell``.

Everything that enumerates cells is derived from this registry, never from a list of its own: the TF1
namespaces (``rnnkit.nn.rnn_cell``, ``rnnkit.contrib.rnn``), the CLI's cell-expression parser, ``explain``,
the save format and converters, and the cross-cutting tests (gradcheck, engine parity, save/load).

Kinds:

* ``"leaf"``: a cell with parameters of its own and TF1 variables (``BasicLSTMCell``, ``GRUCell`` ...);
* ``"stack"``: ``MultiRNNCell``; ``"wrapper"``: a cell around one cell (``DropoutWrapper`` ...);
* ``"base"``: an abstract base TF exports (``RNNCell``), in the namespaces but never built by name;
* ``"torch"``: the torch-layout steps of ``rnnkit.RNN/LSTM/GRU``; in no TF namespace.

``namespaces`` are the TF1 modules that export the class: ``"nn.rnn_cell"`` (``tf.nn.rnn_cell``, also
``tf.compat.v1.nn.rnn_cell``) and ``"contrib.rnn"`` (``tf.contrib.rnn``).

Adding a cell (see the README's "Adding a cell"): write its file under ``rnnkit/cells/`` with
``@register_cell(...)`` on the class, and, where an existing kernel family computes its step, add one entry
to ``rnnkit.engine.lowering.LOWERINGS``.

Example::

    >>> from rnnkit.cells.registry import cell_class, cell_names
    >>> cell_class("GRUCell").__name__
    'GRUCell'
    >>> "LayerNormBasicLSTMCell" in cell_names(namespace="contrib.rnn")
    True
    >>> "LayerNormBasicLSTMCell" in cell_names(namespace="nn.rnn_cell")
    False
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["CellEntry", "KINDS", "NAMESPACES", "register_cell", "cell_entries", "cell_names", "cell_class"]

KINDS = ("leaf", "stack", "wrapper", "base", "torch")
NAMESPACES = ("nn.rnn_cell", "contrib.rnn")

T = TypeVar("T", bound=type)


@dataclass(frozen=True)
class CellEntry:
    """One registered cell class: its public name, its kind (``KINDS``) and the TF1 modules exporting it."""

    name: str
    cls: type
    kind: str
    namespaces: tuple[str, ...]


_ENTRIES: dict[str, CellEntry] = {}


def register_cell(
    kind: str = "leaf", namespaces: tuple[str, ...] = NAMESPACES, name: str | None = None
) -> Callable[[T], T]:
    """Class decorator: declare a cell class under ``name`` (its ``__name__`` by default).

    Registering a second class under a taken name is refused (``ValueError``), unless it is the same class
    (a module reloaded).
    """
    if kind not in KINDS:
        raise ValueError(f"register_cell: kind must be one of {KINDS}, got {kind!r}")
    unknown = [n for n in namespaces if n not in NAMESPACES]
    if unknown:
        raise ValueError(f"register_cell: namespaces must be among {NAMESPACES}, got {unknown}")

    def declare(cls: T) -> T:
        key = name or cls.__name__
        old = _ENTRIES.get(key)
        if old is not None and old.cls.__qualname__ != cls.__qualname__:
            raise ValueError(
                f"register_cell: {key!r} is already registered as {old.cls.__module__}.{old.cls.__qualname__}"
            )
        _ENTRIES[key] = CellEntry(key, cls, kind, tuple(namespaces))
        return cls

    return declare


def cell_entries(kind: str | tuple[str, ...] | None = None, namespace: str | None = None) -> list[CellEntry]:
    """The registered entries in registration order, optionally of ``kind`` (one or several) and ``namespace``."""
    kinds = (kind,) if isinstance(kind, str) else kind
    return [
        e
        for e in _ENTRIES.values()
        if (kinds is None or e.kind in kinds) and (namespace is None or namespace in e.namespaces)
    ]


def cell_names(kind: str | tuple[str, ...] | None = None, namespace: str | None = None) -> list[str]:
    """The names of ``cell_entries(kind, namespace)``."""
    return [e.name for e in cell_entries(kind, namespace)]


def cell_class(name: str) -> type:
    """The class registered under ``name`` (``KeyError`` naming the known ones otherwise)."""
    entry = _ENTRIES.get(name)
    if entry is None:
        raise KeyError(f"rnnkit cells: no cell class named {name!r}; known: {sorted(_ENTRIES)}")
    return entry.cls
