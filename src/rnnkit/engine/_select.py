"""Which execution path the engine takes: ``use(...)`` and the kernels behind the fused path."""

from __future__ import annotations

import contextvars
from typing import Any

from . import _ext, twin

__all__ = ["BACKENDS", "KERNELS", "use", "current", "fused_kernels", "register_device_kernels"]

#: ``auto``: torch's kernel where the math is identical and it is the fastest choice, rnnkit's fused
#: kernels otherwise, the reference loop for what neither covers. ``torch``: torch's kernel where
#: the math is identical, else the reference. ``fused``: rnnkit's fused kernels wherever they
#: apply (even where torch has a kernel), else the reference. ``reference``: always the readable
#: loop over ``cell.call`` (the oracle).
BACKENDS = ("auto", "torch", "fused", "reference")
#: Which implementation the fused path runs: ``compiled`` (C++), ``python`` (the pure-PyTorch twin),
#: ``auto`` (compiled when it builds, else the twin after one warning).
KERNELS = ("auto", "compiled", "python")

_choice: contextvars.ContextVar[tuple[str, str]] = contextvars.ContextVar("rnnkit_engine", default=("auto", "auto"))

# The seam for rnnkit's own GPU kernels: a module with the functions of ``twin`` for a device type.
_DEVICE_KERNELS: dict[str, Any] = {}


class use:
    """Select the engine's path, globally (``use("fused")``) or for a block (``with use("reference"): ...``).

    Args:
        backend: one of ``auto``, ``torch``, ``fused``, ``reference`` (see ``BACKENDS``).
        kernels: one of ``auto``, ``compiled``, ``python``: what the fused path runs.

    Example::

        >>> import torch, rnnkit
        >>> cell, x = rnnkit.GRUCell(4), torch.randn(2, 3, 5)
        >>> with rnnkit.engine.use("reference"):
        ...     out, state = rnnkit.dynamic_rnn(cell, x)    # the plain autograd loop
        >>> rnnkit.engine.current()
        ('auto', 'auto')
    """

    def __init__(self, backend: str = "auto", kernels: str = "auto"):
        if backend not in BACKENDS:
            raise ValueError(f"rnnkit.engine.use: backend must be one of {BACKENDS}, got {backend!r}")
        if kernels not in KERNELS:
            raise ValueError(f"rnnkit.engine.use: kernels must be one of {KERNELS}, got {kernels!r}")
        self.choice = (backend, kernels)
        self._token = _choice.set(self.choice)

    def __enter__(self) -> use:
        return self

    def __exit__(self, *exc: object) -> None:
        _choice.reset(self._token)

    def __repr__(self) -> str:
        return f"use(backend={self.choice[0]!r}, kernels={self.choice[1]!r})"


def current() -> tuple[str, str]:
    """The active ``(backend, kernels)`` pair."""
    return _choice.get()


def register_device_kernels(device_type: str, module: Any) -> None:
    """Give the fused path kernels for ``device_type`` (e.g. ``"cuda"``): a module with ``twin``'s functions."""
    if device_type == "cpu":
        raise ValueError("rnnkit.engine: CPU kernels are the compiled extension and its twin; register another device")
    _DEVICE_KERNELS[device_type] = module


def fused_kernels(device_type: str) -> Any | None:
    """The kernel module the fused path uses on ``device_type``, or ``None`` when it has none there."""
    if device_type != "cpu":
        return _DEVICE_KERNELS.get(device_type)
    kernels = current()[1]
    if kernels == "python":
        return twin
    ops = _ext.load()
    if ops is None and kernels == "compiled":
        raise RuntimeError(
            "rnnkit.engine: kernels='compiled' was asked for but the extension is unavailable: "
            f"{_ext.status()['error']}"
        )
    return ops if ops is not None else twin
