"""TF's kernels as the fused and torch kernels take them: now in `rnnkit.gates` (one table of gate layouts).

Kept as a thin delegate for ``engine/_leaf_specs.py``'s import until it reads ``rnnkit.gates`` directly.
"""

from __future__ import annotations

from ..gates import split_kernel, tf_lstm_as_torch

__all__ = ["split_kernel", "tf_lstm_as_torch"]
