"""Compiling a user's cell into the engine (issue 13): capture, partition, code generation, native runner.

See ``program`` for the intermediate form every part shares.
"""

from __future__ import annotations

from .program import MatMul, Slot, Stage, StepProgram, Unsupported

__all__ = ["MatMul", "Slot", "Stage", "StepProgram", "Unsupported"]
