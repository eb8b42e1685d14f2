"""bfloat16 and float16 on the fused path: float32 sums inside a layer, the caller's dtype at its boundary.

The fused kernels (and a compiled cell's generated step) compute in float32 or float64. A layer whose inputs and
parameters are ``torch.bfloat16`` or ``torch.float16`` runs on them so:

* at the layer's entry, its inputs ``x``, its weights and biases (and peepholes, projection, layer-norm gains and
  shifts, a compiled cell's tensors), its initial state ``(h_0[, c_0])`` and its dropout masks are cast to float32
  with ``Tensor.float()``, a differentiable cast: gradients come back through it in the parameters' own dtype;
* inside, the gates and activations are float32, and the carried state ``h`` and ``c`` stay float32 from step to
  step (never rounded inside the sequence), as are the activations kept for backward and the gradients the backward
  kernel accumulates through time. The multiplies sum in float32; in bfloat16 (``set_bf16_multiplies``, on by
  default) they read bf16 operands, as torch's own bf16 LSTM (oneDNN) does: x and the weights are bf16 values
  already, and what a step computes in float32 and multiplies (``h``, the reset-before GRU's ``r * h``, a
  projection's input; in backward the d pre-activations) is rounded to bf16 for the multiply only. On a CPU with
  bf16 multiply units (AMX, AVX512-BF16) the multiplies run on them (oneDNN's brgemm micro-kernel, through torch);
  elsewhere the same rounded operands are multiplied in float32: the same products, summed in another order. In
  float16, and in bfloat16 with ``set_bf16_multiplies(False)``, on the pure-PyTorch twins or in a compiled user
  cell's program, the multiplies read the float32 values themselves;
* at the layer's exit, the outputs and the final state are rounded once to the input dtype.

So, with float32 operands, a bf16 layer differs from its float32 twin (weights and inputs the same bf16 values)
only by one rounding of each output and final state (at most a relative 2^-8 for bf16, 2^-11 for fp16: half a unit
in the last place of 8 and 11 significant bits). With bf16 operands it is that float32 math with ``h`` rounded to
bf16 at each multiply, rounded once at the exit (``tests/test_bf16_multiplies.py``: every output within one bf16
place of it, 99% equal; gradients within 2^-6 in relative norm of float32 autograd through it, measured about
2^-8). Both differ from a float32 model by the rounding of its weights and inputs to bf16; a stack rounds once per
layer (each layer's outputs are the next one's inputs). A streamed frame (``engine.frame``) computes the same.

Example::

    >>> import torch
    >>> from rnnkit.engine.precision import widened, narrowed
    >>> x = torch.ones(2, dtype=torch.bfloat16)
    >>> widened(x).dtype, narrowed(widened(x), torch.bfloat16).dtype, widened(x.double()).dtype
    (torch.float32, torch.bfloat16, torch.float64)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from .._structure import map_structure

__all__ = [
    "LOW_PRECISION",
    "COMPUTE_DTYPE",
    "widened",
    "narrowed",
    "all_widened",
    "widened_state",
    "set_bf16_multiplies",
    "bf16_multiplies",
]

#: the dtypes that run on the fused path with float32 sums (the kernels themselves take float32/float64)
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


_BF16_MULTIPLIES = {"on": True}


def set_bf16_multiplies(enabled: bool) -> bool:
    """Whether bf16 layers multiply on the CPU's bf16 units (the default) or in float32; returns the previous setting.

    Off, a bf16 layer is its float32 twin up to one rounding of each output (above); on, each step's recurrent
    multiply also reads ``h`` rounded to bf16, as torch's own bf16 LSTM (oneDNN) does.
    """
    was = _BF16_MULTIPLIES["on"]
    _BF16_MULTIPLIES["on"] = bool(enabled)
    return was


_SCOPE = threading.local()  # the dtype of the bf16 scope this thread is in (None: none)


def multiplies_dtype() -> torch.dtype | None:
    """``torch.bfloat16`` inside a ``bf16_multiplies`` scope that took effect, else ``None``."""
    return getattr(_SCOPE, "dtype", None)


@contextmanager
def bf16_multiplies(kern: Any, dtype: torch.dtype | None) -> Iterator[None]:
    """Around a bf16 layer's kernel calls (forward, and its backward): the compiled kernels multiply on bf16 units
    (where the CPU has them; the pure-PyTorch twins multiply in float32)."""
    on = dtype is torch.bfloat16 and _BF16_MULTIPLIES["on"] and hasattr(kern, "set_bf16_multiplies")
    if not on:
        yield
        return
    was, outer = kern.set_bf16_multiplies(True), multiplies_dtype()
    _SCOPE.dtype = torch.bfloat16
    try:
        yield
    finally:
        kern.set_bf16_multiplies(was)
        _SCOPE.dtype = outer
