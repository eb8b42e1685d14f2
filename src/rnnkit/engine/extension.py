"""rnnkit's compiled kernels as a C++ extension: whether it is built, where, and building or loading it now.

The extension is compiled on first use from the sources shipped in ``rnnkit/engine/csrc`` into a cache folder
keyed by those sources, torch, Python and the CPU (``$RNNKIT_EXTENSIONS_DIR`` or ``~/.cache/rnnkit/ext``); the
engine loads it when its fused path first runs on a CPU. These functions let a tool announce or do that build up
front (the CLI does, before any timer starts).

Example::

    >>> from rnnkit.engine import extension
    >>> sorted(extension.status())
    ['build_s', 'error', 'loaded', 'path', 'tried']
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import _ext
from ._ext import FusedKernelUnavailableWarning

__all__ = ["FusedKernelUnavailableWarning", "load", "status", "build_dir", "is_built"]


def load() -> Any | None:
    """Build (first use) or load the compiled kernels: ``torch.ops.rnnkit``, or ``None`` after one
    :class:`FusedKernelUnavailableWarning` when they cannot be built (the pure-PyTorch twins run then)."""
    return _ext.load()


def status() -> dict[str, Any]:
    """What :func:`load` found: ``{"tried", "loaded", "error", "build_s", "path"}``; starts no build."""
    return _ext.status()


def build_dir() -> Path | None:
    """The cache folder of this machine's build of the current sources (``None`` when the sources are missing)."""
    src = _ext.source_dir()
    return None if src is None else _ext.cache_dir(src)


def is_built() -> bool:
    """Whether :func:`build_dir` holds a built library, so that :func:`load` only loads it."""
    where = build_dir()
    return where is not None and any((where / name).is_file() for name in _ext.LIBRARY_NAMES)
