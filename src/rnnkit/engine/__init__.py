"""rnnkit's execution engine: how a cell's unroll actually runs.

Paths (see ``rnnkit.engine.unroll``): the readable ``reference`` loop over ``cell.call`` (the oracle),
torch's own fused kernels where the math is identical (``torch``: oneDNN/cuDNN), and rnnkit's fused
kernels (``fused``: a C++ extension compiled on first use, or its pure-PyTorch twin) for everything
else. ``use("auto")`` (the default) picks per layer; ``use(...)`` also works as a context manager.

Modules: ``lowering`` (cell -> spec, the table ``LOWERINGS``), ``params`` (where specs read weights), ``stack``
(layers x directions, the one loop over layers), ``route`` (the one decision of a path), ``plan`` (packing by
lengths), ``unroll`` (the entries and the running), ``_functions`` and ``twin`` (the fused kernels: ``csrc/`` compiled,
or their pure-PyTorch twin), ``frame`` (streaming: one frame of a stack per kernel call), ``extension`` (the
compiled extension's build and status).

Example::

    >>> import torch, rnnkit
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

from . import extension, frame  # (frame: registers the cells' frame runner)
from ._ext import FusedKernelUnavailableWarning
from ._select import BACKENDS, KERNELS, current, register_device_kernels, use
from .info import backend_info
from .lowering import LOWERINGS, lowering_for, register_lowering
from .plan import Plan, make_plan, reverse_sequence
from .route import FUSED_MAX_BATCH, choose_path, explain
from .stack import LayerStack
from .unroll import reference_unroll, run_cell, run_stack, unroll

__all__ = [
    "BACKENDS",
    "KERNELS",
    "FUSED_MAX_BATCH",
    "LOWERINGS",
    "FusedKernelUnavailableWarning",
    "LayerStack",
    "Plan",
    "backend_info",
    "choose_path",
    "current",
    "explain",
    "extension",
    "frame",
    "lowering_for",
    "make_plan",
    "reference_unroll",
    "register_device_kernels",
    "register_lowering",
    "reverse_sequence",
    "run_cell",
    "run_stack",
    "unroll",
    "use",
]
