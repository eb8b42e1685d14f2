"""The one place that decides how a node runs: ``route(node, x, lengths)``.

For a lowered cell (a ``Spec``) it gives each leaf a path, ``"torch"`` (torch's own kernel,
``torch._VF.lstm/gru/rnn_*``: oneDNN or the native loop on CPU, cuDNN on CUDA, for math identical to it,
``spec.torch_mode``) or ``"fused"`` (rnnkit's kernels), or ``None`` for the reference loop. For a layer stack
(``LayerStack``) it gives ``"torch"`` (one torch call over all layers and directions, as ``torch.nn`` runs),
``"fused"`` (each layer one fused kernel call, without the per-cell plan) or ``"cells"`` (each layer and
direction routed as a cell). The predicates, by backend (``rnnkit.engine.use``):

* ``reference``, or a device without torch's RNN kernels (meta tensors, other accelerators): the reference loop.
* ``torch``: torch's kernel wherever the math is identical (no state masks), else the reference loop.
* ``fused``: rnnkit's kernels wherever they run (float32/float64, and bfloat16/float16 with float32 sums inside
  each layer, ``rnnkit.engine.precision``; CPU, or a device with registered kernels).
* ``auto``: torch's kernel when it is the fast choice (CUDA; on CPU the LSTM without projection and without
  lengths at a batch above ``FUSED_MAX_BATCH``, in float32/float64 in inference, in bfloat16 in training too), the
  fused kernels otherwise, the reference loop for what neither runs. A stack takes torch's whole-stack call under
  the same rule, never with a sequence of length 0 (torch cannot pack it); ``"fused"`` when it is one direction of
  full sequences on CPU whose every cell lowers (and no dropout between layers in training).

Parameters, states and inputs share one dtype and device by the time a node runs (``check_placement`` ran at
the entry). A stack's decision is cached on the node per configuration, so a small batch pays one lookup.

Example::

    >>> import torch, rnnkit
    >>> from rnnkit import engine
    >>> cell = rnnkit.GRUCell(8, input_size=4)
    >>> engine.explain(cell, torch.randn(5, 2, 4))
    ['fused']
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._structure import flatten
from ._leaf_specs import Spec
from ._select import current, fused_kernels
from .compiler.spec import ProgramSpec, native_runs, why_not
from .lowering import lowering_for
from .plan import full_to_none
from .precision import LOW_PRECISION
from .stack import LayerStack

__all__ = ["route", "choose_path", "explain", "torch_whole_stack", "trains", "FUSED_MAX_BATCH"]

#: what the fused kernels run: float32/float64 natively, bf16/fp16 with float32 sums (``engine.precision``)
FUSED_DTYPES = (torch.float32, torch.float64, *LOW_PRECISION)
DEVICES = ("cpu", "cuda")  # where torch's fused RNN kernels exist

# Measured on 2 cores (python -m benchmarks.run and wider sweeps): in training rnnkit's fused LSTM is at par with
# oneDNN's or faster at every shape tried (0.9-1.05 of its time at batch 1-8, 0.75-0.9 at batch 16-64), and it keeps
# only the activations for backward, once per step. In inference it is faster at a batch of 1-4 rows, where
# oneDNN's fixed cost per call dominates; above that the two are within a few percent, and torch's kernel keeps
# torch.nn's results bit for bit. TF's kernel layout reaches oneDNN only re-laid out (a copy of the weights); the
# fused kernel reads it as it is.
FUSED_MAX_BATCH = 4
#: dtypes whose CPU LSTM in torch (oneDNN) can be the faster choice under ``auto``. float16 is not: torch runs it on
#: its native loop, 2-3x slower than the fused kernels' float32 compute (21 ms against 9.7 at (100, 8, 128, 256)).
TORCH_CPU_DTYPES = (torch.float32, torch.float64, torch.bfloat16)
# bfloat16 on oneDNN (bf16 multiplies on AMX/AVX512-BF16, float32 sums), against the fused kernels (bf16 multiplies on
# the same units, ``engine.precision``), LSTM (T, B, I, H), ms torch / fused, medians of 7 (Xeon with AMX, 2 cores):
#   inference  (100, 1, 64, 128) 0.51 / 0.67   (100, 4, 128, 256) 1.37 / 3.07   (100, 8, 128, 256) 1.72 / 3.47
#              (100, 32, 128, 256) 4.0 / 7.2   (50, 64, 512, 512) 11.7 / 25.6
#   fwd+bwd    (100, 1, 64, 128) 3.35 / 1.69   (100, 4, 128, 256) 9.0 / 7.6   (100, 8, 128, 256) 9.8 / 10.1
#              (100, 32, 128, 256) 23 / 30     (50, 64, 512, 512) 66 / 89
# so in bf16 torch's kernel takes the LSTM above FUSED_MAX_BATCH rows in training too (oneDNN's fixed cost per call
# still loses at 1-4 rows in training). At 1-4 rows in inference oneDNN is faster too, but the fused kernels keep
# them: oneDNN rounds the carried h to bf16 at every step, so a sequence there would differ from the same sequence
# streamed (``step``/``stream`` run rnnkit's frames) by more than a rounding.
TORCH_TRAINS_DTYPES = (torch.bfloat16,)


def trains(*modules: torch.nn.Module) -> bool:
    """Whether autograd will differentiate the parameters of ``modules`` (cells, or a layer)."""
    return torch.is_grad_enabled() and any(p.requires_grad for m in modules for p in _own_parameters(m))


def _own_parameters(module: torch.nn.Module) -> list[Tensor]:
    """Every parameter of ``module`` and its submodules, duplicates allowed (``Module.parameters()`` hashes each
    tensor to deduplicate, which cost more than the whole check on small unrolls)."""
    out, todo = [], [module]
    while todo:
        m = todo.pop()
        out.extend(p for p in m._parameters.values() if p is not None)
        todo.extend(c for c in m._modules.values() if c is not None)
    return out


def route(node: Any, x: Tensor, lengths: Tensor | None) -> Any:
    """How ``node`` runs over time-major ``x`` ``(T, B, D)`` with ``lengths`` (through ``full_to_none``).

    A ``Spec``: ``{id(leaf): "torch" | "fused"}``, or ``None`` for the reference loop. A ``LayerStack``:
    ``"torch"``, ``"fused"`` or ``"cells"``.
    """
    if isinstance(node, LayerStack):
        return _stack_path(node, x, lengths)
    return _leaf_paths(node, x, lengths is not None)


def _leaf_paths(spec: Spec, x: Tensor, has_lengths: bool) -> dict[int, str] | None:
    backend = current()[0]
    if backend == "reference" or x.device.type not in DEVICES:
        return None  # (meta tensors, other accelerators: the reference loop, which any device runs)
    masked = spec.state_masked()
    leaves = spec.leaves()
    if backend == "torch":
        torch_ok = not masked and all(leaf.torch_mode is not None for leaf in leaves)
        return {id(leaf): "torch" for leaf in leaves} if torch_ok else None
    fused_ok = x.dtype in FUSED_DTYPES and (x.device.type == "cpu" or fused_kernels(x.device.type) is not None)
    if backend == "fused":
        return {id(leaf): "fused" for leaf in leaves} if fused_ok else None
    paths = {}
    for leaf in leaves:
        if _prefers_torch(leaf, x, has_lengths, masked):
            paths[id(leaf)] = "torch"
        elif fused_ok:
            paths[id(leaf)] = "fused"
        else:
            return None
    return paths


def _prefers_torch(leaf: Spec, x: Tensor, has_lengths: bool, masked: bool) -> bool:
    """Under ``auto``: is torch's kernel the faster choice for this leaf?"""
    if leaf.torch_mode is None or masked:
        return False
    if x.device.type != "cpu":
        return True  # cuDNN; rnnkit has no GPU kernel of its own yet
    # CPU: only the LSTM without lengths has a oneDNN kernel; GRU, vanilla RNN and packed input take
    # torch's native per-step loop, which the fused kernels beat (oneDNN has no projection: torch warns and
    # falls back to its native loop). With lengths the fused kernels, which skip finished sequences, beat
    # oneDNN run segment by segment (measured at every benchmark shape; ``use("torch")`` still runs that).
    if leaf.torch_mode != "LSTM" or has_lengths or x.dtype not in TORCH_CPU_DTYPES:
        return False
    if getattr(leaf, "has_proj", False):
        return False
    return not (x.shape[1] <= FUSED_MAX_BATCH or (x.dtype not in TORCH_TRAINS_DTYPES and trains(leaf.cell)))


def _stack_path(node: LayerStack, x: Tensor, lengths: Tensor | None) -> str:
    choice = current()
    empty = not x.shape[0] or not x.shape[1]
    key = (choice, x.device.type, x.dtype, x.shape[1] > FUSED_MAX_BATCH, lengths is not None, empty)
    hit = node.routes.get(key)
    if hit is None:
        hit = node.routes[key] = _stack_decision(node, choice[0], x, lengths is not None)
    torch_ok, positive_lengths, untrained, otherwise = hit
    if torch_ok and positive_lengths and not bool((lengths > 0).all()):
        return otherwise  # torch's packing refuses empty sequences; the cells handle them
    if torch_ok and untrained and trains(*node.cells):
        return otherwise
    return "torch" if torch_ok else otherwise


def _stack_decision(node: LayerStack, backend: str, x: Tensor, has_lengths: bool) -> tuple[bool, bool, bool, str]:
    """``(torch's whole-stack call, provided every length > 0, provided nothing trains, else this path)``."""
    device = x.device.type
    empty = not x.shape[0] or not x.shape[1]  # torch's kernels refuse empty sequences and batches
    torch_ok = node.torch_mode is not None and backend in ("auto", "torch") and not empty and device in DEVICES
    cpu_auto = backend == "auto" and device == "cpu"
    if torch_ok and cpu_auto:
        # CPU under auto: oneDNN runs the LSTM without projection on whole sequences, in inference above a batch of
        # FUSED_MAX_BATCH rows; the rest is faster fused.
        lstm = node.torch_mode == "LSTM" and not node.has_proj
        torch_ok = lstm and not has_lengths and x.dtype in TORCH_CPU_DTYPES and x.shape[1] > FUSED_MAX_BATCH
    fused = (
        not has_lengths
        and node.directions == 1
        and backend in ("auto", "fused")
        and device == "cpu"
        and x.dtype in FUSED_DTYPES
        and not (node.dropout and len(node.layers) > 1)  # dropout between layers in training: the cells'
        and node.lowered
        and not empty
    )
    untrained = torch_ok and cpu_auto and x.dtype not in TORCH_TRAINS_DTYPES
    return torch_ok, torch_ok and has_lengths, untrained, "fused" if fused else "cells"


# ---- public views ------------------------------------------------------------------------------------------


def choose_path(spec: Spec | None, x: Tensor, has_lengths: bool, state: Any = None) -> dict[int, str] | None:
    """``{id(leaf): "torch" | "fused"}`` for the active backend, or ``None`` for the reference loop.

    A view of ``route`` for a lowered cell; parameters or a ``state`` of another dtype or device than ``x`` (which
    ``rnnkit.engine.unroll`` refuses) give ``None``.
    """
    if spec is None or not _placed_like(x, spec.root, state):
        return None
    return _leaf_paths(spec, x, has_lengths)


def _placed_like(x: Tensor, module: Any, state: Any) -> bool:
    tensors = (_own_parameters(module) if module is not None else []) + (flatten(state) if state is not None else [])
    return all(t.dtype == x.dtype and t.device == x.device for t in tensors)


def explain(cell: Any, inputs: Tensor, lengths: Tensor | None = None, *, reasons: bool = False) -> list[str]:
    """The path each leaf of ``cell`` would take for ``inputs`` ``(T, B, D)``: ``"torch"``, ``"fused"`` or
    ``"reference"`` (for ``backend_info`` and tests).

    ``reasons=True`` adds why, after a colon: for a compiled cell what its step became (``"fused: compiled MyCell
    (1 hoisted multiply, 2 recurrent multiplies, 2 stages; native)"``), and for a cell the compiler could not take the
    op or construct that stopped it (``"reference: MyCell.call: aten.bmm.default is outside the compiled op
    set"``).
    """
    spec = lowering_for(cell, inputs.shape[1] if inputs.dim() == 3 else None)
    paths = choose_path(spec, inputs, full_to_none(lengths, inputs.shape[0], inputs.device.type) is not None)
    if paths is None:
        why = why_not(cell) if reasons else None
        return [f"reference: {why}" if why is not None else "reference"]
    out = [paths[id(leaf)] for leaf in spec.leaves()]
    if reasons:
        out = [_described(leaf, path) for leaf, path in zip(spec.leaves(), out, strict=True)]
    return out


def _described(leaf: Spec, path: str) -> str:
    if not isinstance(leaf, ProgramSpec) or path != "fused":
        return path
    info = leaf.program.info
    runs = "native" if native_runs(fused_kernels("cpu")) else "interpreted (pure PyTorch)"
    counts = [(info.get("hoisted_multiplies", 0), "hoisted multipl"), (info.get("recurrent_multiplies", 0),
              "recurrent multipl"), (info.get("stages", 0), "stage")]  # fmt: skip
    said = ", ".join(f"{n} {word}{_plural(n, word)}" for n, word in counts)
    return f"fused: compiled {type(leaf.cell).__name__} ({said}; {runs})"


def _plural(n: int, stem: str) -> str:
    if stem.endswith("l"):
        return "y" if n == 1 else "ies"
    return "" if n == 1 else "s"


def torch_whole_stack(layer: Any, x: Tensor, lengths: Tensor | None = None) -> bool:
    """Whether ``layer`` (an ``rnnkit.RNN/LSTM/GRU``) runs ``x`` ``(T, B, I)`` as one call of torch's kernel over
    all its layers and directions (then it computes exactly what ``torch.nn`` does with its weights)."""
    lengths = full_to_none(lengths, x.shape[0], x.device.type)
    return route(layer.engine_stack(), x, lengths) == "torch"
