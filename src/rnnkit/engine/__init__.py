"""rnnkit's execution engine: how a cell's unroll actually runs.

Paths (see ``rnnkit.engine.unroll``): the readable ``reference`` loop over ``cell.call`` (the oracle),
torch's own fused kernels where the math is identical (``torch``: oneDNN/cuDNN), and rnnkit's fused
kernels (``fused``: a C++ extension compiled on first use, or its pure-PyTorch twin) for everything
else. ``use("auto")`` (the default) picks per layer; ``use(...)`` also works as a context manager.

Example::

    >>> import rnnkit
    >>> from rnnkit import engine
    >>> cell = rnnkit.LSTMCell(64, use_peepholes=True, cell_clip=3.0, input_size=32)
    >>> x = torch.randn(20, 4, 32)                                   # (time, batch, depth)
    >>> out, state = engine.unroll(cell, x, cell.zero_state(4, torch.float32))   # fused kernel
    >>> with engine.use("reference"):
    ...     ref, _ = engine.unroll(cell, x, cell.zero_state(4, torch.float32))
    >>> bool(torch.allclose(out, ref, atol=1e-5))
    True
"""

from __future__ import annotations

from ._ext import FusedKernelUnavailableWarning
from ._select import BACKENDS, KERNELS, current, register_device_kernels, use
from .info import backend_info
from .lowering import lowering_for
from .plan import Plan, make_plan
from .unroll import choose_path, explain, reference_unroll, unroll

__all__ = [
    "BACKENDS",
    "KERNELS",
    "FusedKernelUnavailableWarning",
    "Plan",
    "backend_info",
    "choose_path",
    "current",
    "explain",
    "lowering_for",
    "make_plan",
    "reference_unroll",
    "register_device_kernels",
    "unroll",
    "use",
]
