"""``backend_info()``: what the engine runs on this machine, in one dictionary."""

from __future__ import annotations

from typing import Any

import torch

from . import _ext
from ._select import _DEVICE_KERNELS, current
from .compiler import build as cell_build

__all__ = ["backend_info"]


def backend_info(build: bool = True) -> dict[str, Any]:
    """Report the engine's paths: the selected backend, whether the compiled kernels are in use, and why not.

    Args:
        build: build/load the compiled kernels if that was not tried yet (the first call may then take a
            minute); ``False`` only reports what is known.

    Returns a dict with ``backend`` and ``kernels`` (what ``use`` selected), ``fused_cpu``
    (``"compiled"`` or ``"python"``: what the fused path runs on CPU), ``compiled`` (the build's
    outcome: ``loaded``, ``error``, ``build_s``, ``path``), ``cell_compiler`` (users' cells compiled from their
    ``call``: the C compiler or ``None``, the cache folder, and this process's ``compiled``, ``disk_hits`` and
    ``compile_s``; ``rnnkit.engine.explain(cell, x, reasons=True)`` says why a cell was not compiled),
    ``fused_devices`` (devices with rnnkit
    kernels), ``torch``, ``threads`` (torch's), ``kernel_threads`` (the threads a parallel region of the
    compiled kernels runs on, ``None`` when they are not loaded) and ``cuda`` (whether CUDA is available;
    there the engine uses torch's cuDNN kernels or the reference loop).

    Example::

        >>> import rnnkit
        >>> info = rnnkit.engine.backend_info()
        >>> info["fused_cpu"] in ("compiled", "python")
        True
    """
    backend, kernels = current()
    if build and kernels != "python":
        _ext.load()
    status = _ext.status()
    if kernels == "python" or (status["tried"] and not status["loaded"]):
        fused_cpu = "python"
    elif status["loaded"]:
        fused_cpu = "compiled"
    else:
        fused_cpu = "not built yet"
    return {
        "backend": backend,
        "kernels": kernels,
        "fused_cpu": fused_cpu,
        "compiled": status,
        "cell_compiler": {
            "cc": cell_build.compiler(), "cache": str(cell_build.cache_root() or "(off)"), **cell_build.stats()
        },
        "fused_devices": ["cpu", *sorted(_DEVICE_KERNELS)],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "kernel_threads": int(torch.ops.rnnkit.parallel_threads()) if status["loaded"] else None,
        "cuda": torch.cuda.is_available(),
    }
