"""The stack node: layers x directions with dropout between layers, and the one loop that runs any stack.

``LayerStack`` is torch.nn's ``num_layers``/``bidirectional`` topology (TF contrib's
``stack_bidirectional_dynamic_rnn``): ``layers[k]`` is ``(cell,)`` or ``(cell_fw, cell_bw)``; layer ``k`` runs
over the whole sequence in each direction (the backward one within each length), and layer ``k + 1`` reads the
concatenation of its outputs, after dropout in training. ``run_layers`` is the one loop over layers, shared with
``MultiRNNCell``'s spec; ``torch_stack_call`` is torch's own whole-stack kernel call, for a stack of torch-layout
cells whose math is torch's. ``rnnkit.engine.route`` decides which runs.

Example::

    >>> import torch, rnnkit
    >>> from rnnkit.engine.stack import LayerStack
    >>> node = LayerStack([(rnnkit.GRUCell(4, input_size=3), rnnkit.GRUCell(4, input_size=3))])
    >>> node.directions, node.lowered, node.torch_mode is None
    (2, True, True)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cached_property
from typing import Any

import torch
from torch import Tensor
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .lowering import Spec, lowering_for
from .params import TORCH_WEIGHTS

__all__ = ["LayerStack", "run_layers", "dropout_between_layers", "torch_stack_call", "VF_CALLS"]

#: ``torch._VF``'s function for each ``torch_mode``
VF_CALLS = {"LSTM": "lstm", "GRU": "gru", "RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu"}


class LayerStack:
    """``layers[k]`` = ``(cell,)`` or ``(cell_fw, cell_bw)``, built; ``dropout`` between layers (0 outside training).

    ``stacked``: ``(to_state, from_state)`` when the caller's states are torch.nn's stacked tensors ``(h[, c])``
    each ``(L * D, B, size)`` (``to_state`` turns the parts of one (layer, direction) into its cell's state,
    ``from_state`` back): only such a stack may run as one torch call (``torch_mode``), with torch's dropout and
    ``training`` flag. Otherwise states are one per (layer, direction), ``None`` for zeros.

    A node keeps its cells' lowering and its routing decisions (``routes``): whoever keeps a node keeps its cells'
    options fixed (the layers build a new node when a cell or an option changes).
    """

    def __init__(
        self,
        layers: Sequence[Sequence[Any]],
        dropout: float = 0.0,
        training: bool = False,
        stacked: tuple[Callable[[tuple[Tensor, ...]], Any], Callable[[Any], tuple[Tensor, ...]]] | None = None,
    ):
        self.layers = tuple(tuple(units) for units in layers)
        self.cells = tuple(cell for units in self.layers for cell in units)
        widths = {len(units) for units in self.layers}
        self.directions = widths.pop() if len(widths) == 1 else 0  # (0: layers of different widths)
        self.dropout = float(dropout)
        self.training = training
        self.stacked = stacked
        self.routes: dict[tuple, tuple] = {}

    @cached_property
    def specs(self) -> tuple[tuple[Spec | None, ...], ...]:
        """Each cell's lowering, in ``layers``' shape."""
        return tuple(tuple(lowering_for(cell) for cell in units) for units in self.layers)

    @cached_property
    def lowered(self) -> bool:
        return all(spec is not None for units in self.specs for spec in units)

    @cached_property
    def torch_mode(self) -> str | None:
        """torch's kernel computing the whole stack (every cell a leaf of one torch math, sizes and biases alike, no
        state masks), or ``None``."""
        if self.stacked is None or not self.lowered or not self.directions:
            return None
        leaves = [spec for units in self.specs for spec in units]
        first = leaves[0]
        if any(leaf.torch_mode is None or leaf.leaves() != [leaf] or leaf.state_masked() for leaf in leaves):
            return None
        if any(leaf.read is not TORCH_WEIGHTS for leaf in leaves):
            return None  # torch's flat weights as they are stored (a TF layout is re-laid out per call)
        same = {(leaf.torch_mode, type(leaf.cell), _sizes(leaf), leaf.torch_params()[1]) for leaf in leaves}
        return first.torch_mode if len(same) == 1 else None

    @cached_property
    def flat_weights(self) -> tuple[list[Tensor], bool]:
        """torch's flat weights of a ``torch_mode`` stack, layer by layer and direction by direction, and
        ``has_biases``: the cells' own parameter objects (kept: the node lives as long as they are its cells')."""
        leaves = [spec for units in self.specs for spec in units]
        return [p for leaf in leaves for p in leaf.torch_params()[0]], leaves[0].torch_params()[1]

    @cached_property
    def state_sizes(self) -> tuple[int, ...]:
        """The last dimension of each of the kernels' state tensors ``(h[, c])`` of a ``torch_mode`` stack."""
        return _sizes(self.specs[0][0])

    @cached_property
    def has_proj(self) -> bool:
        return any(getattr(spec, "has_proj", False) for units in self.specs for spec in units)

    def split(self, states: Any) -> Any:
        """The caller's states -> one state (or ``None``) per (layer, direction)."""
        if states is None or self.stacked is None:
            return states
        to_state, per = self.stacked[0], self.directions
        return [[to_state(tuple(p[k * per + d] for p in states)) for d in range(per)] for k in range(len(self.layers))]

    def join(self, finals: list[tuple[Any, ...]]) -> Any:
        """One final state per (layer, direction) -> the caller's form."""
        if self.stacked is None:
            return finals
        from_state = self.stacked[1]
        flat = [from_state(state) for units in finals for state in units]
        return tuple(torch.stack(part) for part in zip(*flat, strict=True))  # each (L * D, B, size)


def _sizes(leaf: Any) -> tuple[int, ...]:
    """The last dimension of each of the kernels' state tensors ``(h[, c])``."""
    return (leaf.cell.output_size, leaf.num_units) if hasattr(leaf, "num_units") else (leaf.cell.output_size,)


def run_layers(
    layers: Sequence[Sequence[Any]],
    x: Tensor,
    states: Sequence[Sequence[Any]] | None,
    run_one: Callable[[Any, Tensor, Any, int], tuple[Tensor, Any]],
    between: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, list[tuple[Any, ...]]]:
    """The one loop over a stack: ``run_one(unit, x, state, direction) -> (y, final)`` for each unit of layer ``k``
    on the same ``x`` (``(..., D)``: padded or packed rows), then layer ``k + 1`` reads the units' outputs
    concatenated along the last dimension, through ``between`` when given. ``states[k][d]``: the initial state
    (``states`` ``None``: ``None`` for each). Returns the top layer's output and the final states per layer."""
    finals = []
    for k, units in enumerate(layers):
        if k and between is not None:
            x = between(x)
        outputs, ends = [], []
        for d, unit in enumerate(units):
            y, state = run_one(unit, x, None if states is None else states[k][d], d)
            outputs.append(y)
            ends.append(state)
        x = torch.cat(outputs, -1) if len(outputs) > 1 else outputs[0]
        finals.append(tuple(ends))
    return x, finals


def dropout_between_layers(x: Tensor, p: float, lengths: Tensor | None) -> Tensor:
    """torch.nn's dropout between layers, with its draws: on the whole ``(T, B, D)`` output, or, where the
    sequences have lengths (not all full), on the packed rows that torch's packed kernels drop (time-major,
    longest sequence first), so that a seed gives ``torch.nn``'s masks; padding stays zero."""
    if lengths is None:
        return torch.nn.functional.dropout(x, p, training=True)
    ran = (lengths > 0).nonzero().squeeze(1)  # torch cannot pack an empty sequence; it draws nothing for one
    if not ran.numel():
        return x  # no sequence ran: the outputs are all padding (zeros), and there is nothing to draw
    packed = pack_padded_sequence(x.index_select(1, ran), lengths.index_select(0, ran).cpu(), enforce_sorted=False)
    dropped = torch.nn.functional.dropout(packed.data, p, training=True)
    padded, _ = pad_packed_sequence(packed._replace(data=dropped), total_length=x.shape[0])
    return x.new_zeros(x.shape).index_copy(1, ran, padded)


def torch_stack_call(
    node: LayerStack, x: Tensor, parts: tuple[Tensor, ...] | None, lengths: Tensor | None
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """One call of torch's kernel for every layer and direction of ``node`` (``node.torch_mode``), as torch.nn runs
    it (oneDNN or cuDNN, torch's dropout between layers included).

    ``x`` ``(T, B, I)``; ``parts``: ``(h_0[, c_0])`` each ``(L * D, B, size)``, or ``None`` for zeros; ``lengths``
    ``(B,)`` int64, every value > 0, or ``None``. Returns ``(output (T, B, D * R), (h_n[, c_n]))``.
    """
    lstm = node.torch_mode == "LSTM"
    if parts is None:
        parts = tuple(x.new_zeros(len(node.cells), x.shape[1], size) for size in node.state_sizes)
    flat, has_bias = node.flat_weights
    fn = getattr(torch._VF, VF_CALLS[node.torch_mode])
    args = (flat, has_bias, len(node.layers), node.dropout, node.training, node.directions == 2)
    if lengths is None:
        out, *final = fn(x, parts if lstm else parts[0], *args, False)
        return out, tuple(final)  # (h_n[, c_n])
    packed = pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
    order = packed.sorted_indices.to(x.device)
    state = tuple(p.index_select(1, order) for p in parts)
    data, *final = fn(packed.data, packed.batch_sizes, state if lstm else state[0], *args)
    out, _ = pad_packed_sequence(packed._replace(data=data), total_length=x.shape[0])
    back = packed.unsorted_indices.to(x.device)
    return out, tuple(f.index_select(1, back) for f in final)
