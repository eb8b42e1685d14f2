"""The compiled kernels on the command line: their first-use build announced, and done before any timer.

rnnkit's fused CPU kernels are a C++ extension compiled on first use (20-60 s, then cached; see
``rnnkit.engine.extension``). Left to the first training step, that build would sit silently inside the first
step and inflate the rate and ETA the progress line derives from it; ``prepare_kernels`` runs it up front.
"""

from __future__ import annotations

import os
import sys

import torch

from ..engine import current, extension

__all__ = ["prepare_kernels", "will_build"]


def will_build() -> bool:
    """Whether loading the compiled kernels now means compiling them (no cached build for this machine)."""
    if extension.status()["tried"] or current()[1] == "python":
        return False
    if os.environ.get("RNNKIT_NO_COMPILE", "") not in ("", "0"):
        return False
    return extension.build_dir() is not None and not extension.is_built()


def prepare_kernels(device: torch.device, announce: bool) -> None:
    """Build or load the compiled kernels now when ``device`` is a CPU (elsewhere the engine does not use
    them); ``announce``: say so in one line on stderr when that means a build."""
    if device.type != "cpu" or current()[1] == "python":
        return
    if announce and will_build():
        where = extension.build_dir()
        print(
            f"rnnkit: compiling the fused CPU kernels on first use (20-60 s, once; cached in {where})...",
            file=sys.stderr,
            flush=True,
        )
    extension.load()
