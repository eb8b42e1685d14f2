"""Capture a cell's step: ``cell.call(inputs, state)`` -> a ``StepProgram`` (``trace`` then ``partition``), or an
``Unsupported`` naming what stops it.

Example::

    >>> import torch, rnnkit
    >>> from rnnkit.engine.compiler.capture import capture
    >>> program = capture(rnnkit.BasicRNNCell(8, input_size=4), 4, torch.float32, "cpu")
    >>> program.info["hoisted_multiplies"], program.info["recurrent_multiplies"]
    (1, 1)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .partition import partition
from .program import StepProgram, Unsupported
from .trace import trace

__all__ = ["capture"]


def capture(
    cell: nn.Module, input_depth: int, dtype: torch.dtype = torch.float32, device: Any = "cpu", batch: int | None = None
) -> StepProgram | Unsupported:
    """``cell.call`` as a ``StepProgram`` for inputs ``(rows, input_depth)`` of ``dtype`` on ``device``, or why not.

    ``batch``: the batch of the current sequence, if ``begin_sequence(batch)`` drew per-sequence tensors: plain 2-D
    tensor attributes of ``batch`` rows become ``seq`` slots (``StepProgram.seq_names``). An unbuilt cell is built.
    The program does not depend on ``batch`` otherwise: it runs any number of rows.
    """
    traced = trace(cell, input_depth, dtype, device, batch)
    return traced if isinstance(traced, Unsupported) else partition(traced)
