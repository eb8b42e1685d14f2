"""Lowering: what a cell *is*, in terms of the kernels that can run it.

``lowering_for(cell)`` looks the exact cell class up in the table ``LOWERINGS`` (filled with
``register_lowering``), whose entry reads the cell's options (never trial and error) and returns a *spec*, a
small tree mirroring the cell, or ``None`` when only the reference loop can run it (a user's subclass, a
non-tanh activation, per-step dropout, zoneout...):

* ``LSTMSpec``: TF's ``LSTMCell``/``BasicLSTMCell`` (peepholes, ``cell_clip``, ``num_proj``,
  ``proj_clip``, ``forget_bias``), ``LayerNormBasicLSTMCell(layer_norm=False)``, torch-layout LSTM
  cells. It equals ``torch.lstm`` (``torch_mode == "LSTM"``) without peepholes and clips: TF's
  kernel is then reordered i, j, f, o -> i, f, g, o with ``forget_bias`` folded into the forget-gate
  bias, differentiably, so gradients reach TF's ``kernel`` and ``bias``.
* ``LNLSTMSpec``: ``LayerNormBasicLSTMCell`` (and the layer-norm torch-layout LSTM): fused only.
* ``GRUSpec``: TF's ``GRUCell`` (reset-before, fused only) and torch-layout GRUs (reset-after =
  ``torch.gru``).
* ``RNNSpec``: ``BasicRNNCell`` and the torch-layout RNN, tanh or relu (= ``torch.rnn_tanh/relu``).
* The leaves (defined in ``_leaf_specs``) of torch-layout cells in training with ``recurrent_dropout`` carry its
  per-sequence mask on the ``h`` the matmul reads (``recurrent_keep``, ``recurrent_rows``).
* ``StackSpec`` (``MultiRNNCell``, layer by layer), ``DropoutSpec`` (``DropoutWrapper``: identity in
  eval; in training only ``variational_recurrent=True``, whose masks are fixed per-sequence
  multipliers), ``ResidualSpec`` (``ResidualWrapper`` without ``residual_fn``).

Every spec reads the cell's parameters when it runs (through a reader of ``rnnkit.engine.params``), so
autograd sees the cell's own tensors. Adding a cell whose step is an existing family is one table entry, e.g.
``LOWERINGS[MyCell] = lambda cell: RNNSpec.from_tf_kernel(cell, relu=False)`` for a tanh Elman cell with TF's
``kernel`` and ``bias``.

Example::

    >>> import rnnkit
    >>> from rnnkit.engine.lowering import lowering_for
    >>> spec = lowering_for(rnnkit.BasicLSTMCell(8, input_size=4))
    >>> type(spec).__name__, spec.torch_mode
    ('LSTMSpec', 'LSTM')
    >>> lowering_for(rnnkit.BasicLSTMCell(8, activation="relu")) is None
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .. import cells
from .._structure import flatten, map_structure, pack_as, zero_state_for
from ._leaf_specs import GRUSpec, LNLSTMSpec, LSTMSpec, RNNSpec, Spec, _Leaf
from .compiler.spec import ProgramSpec, compiled_spec
from .params import TF_GRU_KERNELS, TF_KERNEL, TORCH_WEIGHTS

__all__ = [
    "LOWERINGS",
    "register_lowering",
    "lowering_for",
    "Spec",
    "LSTMSpec",
    "LNLSTMSpec",
    "GRUSpec",
    "RNNSpec",
    "StackSpec",
    "DropoutSpec",
    "ResidualSpec",
]


# ---- composites -----------------------------------------------------------------------------


class StackSpec(Spec):
    """``MultiRNNCell``: layer ``k + 1`` reads layer ``k``'s outputs; run layer by layer over the sequence."""

    def __init__(self, cell: cells.MultiRNNCell, layers: list[Spec]):
        self.cell = cell
        self.layers = layers

    def leaves(self) -> list[Spec]:
        return [leaf for layer in self.layers for leaf in layer.leaves()]

    def state_masked(self) -> bool:
        return any(layer.state_masked() for layer in self.layers)

    def split_state(self, state: Any) -> list[Any]:
        if self.cell.state_is_tuple:
            return list(state)
        return list(state.split([c.state_size for c in self.cell.cells], dim=1))

    def join_state(self, states: list[Any]) -> Any:
        return tuple(states) if self.cell.state_is_tuple else torch.cat(flatten(states), 1)

    def draw_masks(self, batch: int, like: Tensor, input_depth: int) -> None:
        depth = input_depth
        for layer, cell in zip(self.layers, self.cell.cells, strict=True):
            layer.draw_masks(batch, like, depth)
            depth = cell.output_size


class DropoutSpec(Spec):
    """``DropoutWrapper`` in training with ``variational_recurrent=True``: TF's masks ``(1, depth)`` on the
    inputs, the selected state leaves and the outputs, shared by the batch's rows, drawn once per unroll by the
    wrapper itself (``variational_mask``) in the reference loop's order, so both paths see the same masks."""

    def __init__(self, cell: cells.DropoutWrapper, inner: Spec):
        self.cell = cell
        self.inner = inner
        self.masks: dict[str, Tensor] = {}
        self.batch = 0

    def leaves(self) -> list[Spec]:
        return self.inner.leaves()

    def state_masked(self) -> bool:
        return self.cell.state_keep_prob < 1.0 or self.inner.state_masked()

    def draw_masks(self, batch: int, like: Tensor, input_depth: int) -> None:
        w = self.cell
        self.masks, self.batch = {}, batch
        if w.input_keep_prob < 1.0:
            self.masks["input"] = w.variational_mask("input_0", input_depth, like)
        self.inner.draw_masks(batch, like, input_depth)
        if w.state_keep_prob < 1.0:
            shapes = zero_state_for(w.state_size, 1, like.dtype, like.device)
            selected = flatten(w._selected(shapes))
            for k, (leaf, use) in enumerate(zip(flatten(shapes), selected, strict=True)):
                if use:
                    self.masks[f"state_{k}"] = w.variational_mask(f"state_{k}", leaf.shape[-1], like)
        if w.output_keep_prob < 1.0:
            self.masks["output"] = w.variational_mask("output_0", w.output_size, like)

    def state_masks(self) -> Any:
        """This wrapper's state masks in the state's structure, one row per sequence as the kernels take them
        (None where a leaf is not dropped)."""
        sizes = self.cell.state_size
        leaves = [self.masks.get(f"state_{k}") for k in range(len(flatten(sizes)))]
        return pack_as(sizes, [None if m is None else m.expand(self.batch, -1).contiguous() for m in leaves])


class ResidualSpec(Spec):
    """``ResidualWrapper`` (no ``residual_fn``): outputs ``x + cell(x)``, the state is the cell's."""

    def __init__(self, cell: cells.ResidualWrapper, inner: Spec):
        self.cell = cell
        self.inner = inner

    def leaves(self) -> list[Spec]:
        return self.inner.leaves()

    def state_masked(self) -> bool:
        return self.inner.state_masked()

    def draw_masks(self, batch: int, like: Tensor, input_depth: int) -> None:
        self.inner.draw_masks(batch, like, input_depth)


def combine_masks(outer: Any, inner: Any) -> Any:
    """Masks of nested wrappers on the same state leaves multiply (each wrapper drops its own)."""
    if outer is None:
        return inner
    if inner is None:
        return outer
    return map_structure(lambda a, b: b if a is None else (a if b is None else a * b), outer, inner)


# ---- the table ---------------------------------------------------------------------------------

#: ``type(cell) -> lowering(cell) -> Spec | None``: how each cell class runs on the kernels. Keyed by the exact
#: class: a subclass may change ``call``, so it is not lowered unless it has an entry of its own.
LOWERINGS: dict[type, Callable[[Any], Spec | None]] = {}


def register_lowering(*cell_types: type) -> Callable[[Callable[[Any], Spec | None]], Callable[[Any], Spec | None]]:
    """Decorator: ``lower(cell) -> Spec | None`` is the lowering of each class of ``cell_types`` (``LOWERINGS``).

    A cell whose step is an existing kernel family needs one entry, e.g. a tanh Elman cell keeping TF's
    ``kernel``/``bias``: ``LOWERINGS[MyCell] = lambda cell: RNNSpec.from_tf_kernel(cell, relu=False)``.
    Return ``None`` for the options no kernel computes (the reference loop then runs the cell).
    """

    def register(lower: Callable[[Any], Spec | None]) -> Callable[[Any], Spec | None]:
        for cell_type in cell_types:
            LOWERINGS[cell_type] = lower
        return lower

    return register


def lowering_for(cell: Any, batch: int | None = None) -> Spec | None:
    """The spec that runs ``cell`` on fused or torch kernels (``spec.root is cell``), or ``None`` for the reference
    loop only.

    Looks ``type(cell)`` up in ``LOWERINGS`` exactly: a subclass may change ``call``, so it is not lowered by its
    parent's entry. A cell that no entry lowers (a user's cell, or options no kernel family computes) is compiled
    from its ``call`` (``rnnkit.engine.compiler``) when the capture can; ``batch``: the rows of the sequence about
    to run, after ``begin_sequence(batch)`` (its per-sequence tensors). The cell must be built (the runners build
    it before unrolling).
    """
    if not isinstance(cell, cells.RNNCell) or not cell.built:
        return None
    lower = LOWERINGS.get(type(cell))
    spec = lower(cell) if lower is not None else None
    if spec is None:
        spec = compiled_spec(cell, batch)
    if spec is not None:
        spec.root = cell
    return spec


def _is_tanh(fn: Any) -> bool:
    return fn is torch.tanh


@register_lowering(cells.LSTMCell, cells.BasicLSTMCell)
def _tf_lstm(cell: Any) -> Spec | None:
    if not _is_tanh(cell.activation) or 0.0 in (cell.cell_clip, cell.proj_clip):
        return None  # (the kernels read a clip of 0 as none; TF's clips to 0, which the loop does)
    return LSTMSpec(
        cell, TF_KERNEL, peepholes=cell.use_peepholes, cell_clip=cell.cell_clip, proj_clip=cell.proj_clip,
        forget_bias=cell.forget_bias, proj=cell.num_proj is not None, state_is_tuple=cell.state_is_tuple,
        num_units=cell.num_units,
    )  # fmt: skip


@register_lowering(cells.LayerNormBasicLSTMCell)
def _tf_layer_norm_lstm(cell: Any) -> Spec | None:
    if not _is_tanh(cell.activation) or (cell.training and cell.dropout_keep_prob < 1.0):
        return None  # the candidate's dropout draws a fresh mask every step
    if cell.layer_norm:
        return LNLSTMSpec(cell, TF_KERNEL, cell.num_units, cell.forget_bias)
    return LSTMSpec(cell, TF_KERNEL, forget_bias=cell.forget_bias, num_units=cell.num_units)


@register_lowering(cells.GRUCell)
def _tf_gru(cell: Any) -> Spec | None:
    return GRUSpec(cell, TF_GRU_KERNELS, reset_after=False) if _is_tanh(cell.activation) else None


@register_lowering(cells.BasicRNNCell)
def _tf_rnn(cell: Any) -> Spec | None:
    if cell.activation is torch.tanh or cell.activation is torch.relu:
        return RNNSpec.from_tf_kernel(cell, relu=cell.activation is torch.relu)
    return None


def _torch_layout(lower: Callable[[Any], _Leaf | None]) -> Callable[[Any], Spec | None]:
    """A torch-layout cell of ``rnnkit.RNN/LSTM/GRU``: zoneout stays on the reference loop; training-time recurrent
    dropout (a mask on the matmul's ``h`` only) runs fused, its mask drawn by ``draw_masks``."""

    def lowering(cell: Any) -> Spec | None:
        spec = None if cell.zoneout else lower(cell)
        if spec is not None and cell.training and cell.recurrent_dropout:
            spec.recurrent_keep = 1.0 - cell.recurrent_dropout
        return spec

    return lowering


@register_lowering(cells.TorchLSTMCell)
@_torch_layout
def _torch_lstm(cell: Any) -> _Leaf | None:
    if cell.cell_clip == 0.0:
        return None  # (the kernels read a clip of 0 as none; a clip to 0 runs on the loop)
    if cell.layer_norm:
        # The layer-norm kernel has no projection: a projected layer-norm LSTM stays on the loop.
        return None if cell.proj_size else LNLSTMSpec(cell, TORCH_WEIGHTS, cell.hidden_size, cell.forget_bias)
    return LSTMSpec(
        cell, TORCH_WEIGHTS, peepholes=cell.peepholes, cell_clip=cell.cell_clip, forget_bias=cell.forget_bias,
        proj=bool(cell.proj_size), num_units=cell.hidden_size,
    )  # fmt: skip


LOWERINGS[cells.TorchGRUCell] = _torch_layout(lambda cell: GRUSpec(cell, TORCH_WEIGHTS, cell.reset_after))
LOWERINGS[cells.TorchRNNCell] = _torch_layout(lambda c: RNNSpec.from_torch_weights(c, c.nonlinearity == "relu"))


@register_lowering(cells.MultiRNNCell)
def _stack(cell: Any) -> Spec | None:
    layers = [lowering_for(c) for c in cell.cells]
    if any(layer is None for layer in layers):
        return None
    # The reference loop steps the layers together, so two layers drawing at every step interleave their draws:
    # then the stack is compiled whole (one program, its draws in that order), not layer by layer.
    random = [leaf for layer in layers for leaf in layer.leaves() if leaf.draws_random()]
    return None if len(random) > 1 else StackSpec(cell, layers)


@register_lowering(cells.DropoutWrapper)
def _dropout(cell: Any) -> Spec | None:
    inner = lowering_for(cell.cell)
    if inner is None or not cell.training:
        return inner  # eval: the wrapper is the identity around its cell
    if not cell.variational_recurrent:
        return None  # per-step masks: the reference loop draws them
    if cell.state_keep_prob < 1.0 and any(isinstance(leaf, ProgramSpec) for leaf in inner.leaves()):
        return None  # a compiled step takes no state masks: the wrapper as a whole is captured, or the loop runs it
    if inner.draws_random() or any(leaf.draws_random() for leaf in inner.leaves()):
        return None  # the wrapper's masks come between the cell's draws in the reference loop
    return DropoutSpec(cell, inner)


@register_lowering(cells.ResidualWrapper)
def _residual(cell: Any) -> Spec | None:
    inner = lowering_for(cell.cell)
    return ResidualSpec(cell, inner) if (inner is not None and cell.residual_fn is None) else None
