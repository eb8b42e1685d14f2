"""bfloat16 and float16 on the fused path: float32 compute inside a layer, the caller's dtype at its boundary.

The fused kernels (and a compiled cell's generated step) compute in float32 or float64. A layer whose inputs and
parameters are ``torch.bfloat16`` or ``torch.float16`` runs on them so:

* at the layer's entry, its inputs ``x``, its weights and biases (and peepholes, projection, layer-norm gains and
  shifts, a compiled cell's tensors), its initial state ``(h_0[, c_0])`` and its dropout masks are cast to float32
  with ``Tensor.float()``, a differentiable cast: gradients come back through it in the parameters' own dtype;
* inside, everything is float32: the input projection of all steps and each step's recurrent multiply accumulate in
  float32 (over float32 copies of the bf16 values, which are exact: a bf16 or fp16 number is a float32 number), the
  gates and activations are float32, and the carried state ``h`` and ``c`` stay float32 from step to step (they are
  never rounded inside the sequence), as are the activations kept for backward and the gradients the backward kernel
  accumulates through time;
* at the layer's exit, the outputs and the final state are rounded once to the input dtype.

So a bf16 layer differs from its float32 twin (weights and inputs the same bf16 values) only by one rounding of
each output and final state (at most a relative 2^-8 for bf16, 2^-11 for fp16: half a unit in the last place of
8 and 11 significant bits), and from a float32 model by the rounding of its weights and inputs to bf16; a stack
rounds once per layer (each layer's outputs are the next one's inputs).

Example::

    >>> import torch
    >>> from rnnkit.engine.precision import widened, narrowed
    >>> x = torch.ones(2, dtype=torch.bfloat16)
    >>> widened(x).dtype, narrowed(widened(x), torch.bfloat16).dtype, widened(x.double()).dtype
    (torch.float32, torch.bfloat16, torch.float64)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._structure import map_structure

__all__ = ["LOW_PRECISION", "COMPUTE_DTYPE", "widened", "narrowed", "all_widened", "widened_state"]

#: the dtypes that run on the fused path with float32 compute (the kernels themselves take float32/float64)
LOW_PRECISION = (torch.bfloat16, torch.float16)
#: what they compute in
COMPUTE_DTYPE = torch.float32


def widened(t: Any) -> Any:
    """``t`` as float32 when it is a bf16 or fp16 tensor (differentiably), else ``t`` itself (``None`` too)."""
    return t.float() if isinstance(t, Tensor) and t.dtype in LOW_PRECISION else t


def all_widened(tensors: Any) -> list[Any]:
    """``widened`` over a sequence."""
    return [widened(t) for t in tensors]


def widened_state(state: Any) -> Any:
    """``widened`` at every tensor of a (nested) state: tuples (named ones too) and lists, ``None`` kept."""
    return map_structure(widened, state)


def narrowed(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` (a float32 result) rounded to ``dtype`` when that is a low precision, else ``t`` itself."""
    return t.to(dtype) if dtype in LOW_PRECISION and t.dtype != dtype else t
