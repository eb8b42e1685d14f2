"""The compiled kernels on the command line: their first-use build announced, and done before any timer.

rnnkit's fused CPU kernels are a C++ extension compiled on first use (20-60 s, then cached; see
``rnnkit.engine._ext``). Left to the first training step, that build would sit silently inside the first
step and inflate the rate and ETA the progress line derives from it; ``prepare_kernels`` runs it up front.
"""

from __future__ import annotations

import os
import sys

import torch

from ..engine import _ext, current

__all__ = ["prepare_kernels", "will_build"]

# What torch.utils.cpp_extension.load leaves in the build directory: the library named after the extension.
_LIBRARY_NAMES = ("rnnkit_fused.so", "rnnkit_fused.pyd")


def will_build() -> bool:
    """Whether loading the compiled kernels now means compiling them (no cached build for this machine)."""
    if _ext.status()["tried"] or current()[1] == "python":
        return False
    if os.environ.get("RNNKIT_NO_COMPILE", "") not in ("", "0"):
        return False
    src = _ext.source_dir()
    if src is None:
        return False
    build = _ext.cache_dir(src)
    return not any((build / name).is_file() for name in _LIBRARY_NAMES)


def prepare_kernels(device: torch.device, announce: bool) -> None:
    """Build or load the compiled kernels now when ``device`` is a CPU (elsewhere the engine does not use
    them); ``announce``: say so in one line on stderr when that means a build."""
    if device.type != "cpu" or current()[1] == "python":
        return
    if announce and will_build():
        where = _ext.cache_dir(_ext.source_dir())  # type: ignore[arg-type]  # will_build checked it
        print(
            f"rnnkit: compiling the fused CPU kernels on first use (20-60 s, once; cached in {where})...",
            file=sys.stderr,
            flush=True,
        )
    _ext.load()
