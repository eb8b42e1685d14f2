"""``RNNLayer``: torch.nn's recurrent-layer contract (``RNNBase``) over rnnkit's torch-layout cells and runner.

The layer owns torch's parameters under torch's names and order (``weight_ih_l{k}``, ``weight_hh_l{k}``,
``bias_ih_l{k}``, ``bias_hh_l{k}``, ``weight_hr_l{k}``, ``_reverse`` for the backward direction, then any
option's extras) and no math: it binds them into one ``TorchLayoutCell`` per (layer, direction), kept while the
parameter objects and options stay, and hands the stack of them (``engine_stack``, an ``rnnkit.engine.LayerStack``)
to the engine's ``run_stack``, which routes it: torch's own kernel over the whole stack where the math is
torch's, rnnkit's fused kernels or the reference loop cell by cell otherwise.
"""

from __future__ import annotations

import numbers
import warnings
import weakref
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from .._structure import as_torch_dtype, check_float_dtype, check_placement
from ..cells import check_units
from ..cells.torch_layout import TorchLayoutCell, check_probability, init_parameter_
from ..engine import LayerStack, run_stack
from ..errors import ArgumentTypeError, NotATensorError, ShapeError, StateStructureError
from ..runners import _check_lengths
from .stream import LayerStream, checked_step, step_frame

# layer -> {(layer index, direction): (key, cell), ("stack", training): (key, node)}; weak, so that caching never
# keeps a layer alive (nothing cached refers back to the layer).
_CELLS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

__all__ = ["RNNLayer"]


class RNNLayer(nn.Module):
    """Base of ``RNN``, ``LSTM`` and ``GRU``. A facade sets ``cell_class`` and the names of the hidden state,
    and says which options shape the parameters (``_structure``) and which the step (``_step_options``)."""

    cell_class: ClassVar[type[TorchLayoutCell]]
    _hidden_names: ClassVar[tuple[str, ...]] = ("hx",)
    #: the facade's options beyond torch.nn's, with their defaults (``extra_repr`` shows the others) ...
    _extra_options: ClassVar[dict[str, Any]] = {}
    #: ... and those of them that the step takes (``cell_class`` keywords)
    _step_options: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        mode: str,
        input_size: int,
        hidden_size: int,
        num_layers: int,
        bias: bool,
        batch_first: bool,
        dropout: float,
        bidirectional: bool,
        proj_size: int,
        device: Any,
        dtype: Any,
        recurrent_dropout: float,
        zoneout: float,
    ):
        super().__init__()
        name = type(self).__name__
        for flag, value in (("bias", bias), ("batch_first", batch_first), ("bidirectional", bidirectional)):
            if not isinstance(value, bool):
                raise TypeError(f"{name}: {flag} should be of type bool, got: {type(value).__name__} {value!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0 <= dropout <= 1:
            # torch.nn: TypeError where float(dropout) fails (None), ValueError otherwise ("0.5", True, 1.5)
            error = ValueError if isinstance(dropout, numbers.Real) else ArgumentTypeError
            raise error(
                f"{name}: dropout should be a number in range [0, 1] representing the probability of an element "
                f"being zeroed, got {dropout!r}"
            )
        if dtype is not None:
            check_float_dtype(as_torch_dtype(dtype), f"{name} dtype")
        self.mode = mode
        self.input_size = check_units(input_size, "input_size", name)
        self.hidden_size = check_units(hidden_size, "hidden_size", name)
        self.num_layers = check_units(num_layers, "num_layers", name)
        if proj_size != 0:
            check_units(proj_size, "proj_size", name)  # 0 (any falsy number) disables the projection
        self.proj_size = int(proj_size)
        if proj_size >= hidden_size:
            raise ValueError(
                f"{name}: proj_size has to be smaller than hidden_size ({hidden_size}), got proj_size={proj_size}"
            )
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout option adds dropout after all but last recurrent layer, so non-zero dropout expects "
                f"num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}",
                stacklevel=3,
            )
        self.bias, self.batch_first, self.bidirectional = bias, batch_first, bidirectional
        self.dropout = float(dropout)
        self.recurrent_dropout = check_probability(recurrent_dropout, "recurrent_dropout", name)
        self.zoneout = check_probability(zoneout, "zoneout", name)

    def __setattr__(self, name: str, value: Any) -> None:
        # Every attribute set counts (options, mode, parameters): engine_stack compares the count instead of reading
        # the options again at every call (a streamed frame's budget is a few microseconds).
        self.__dict__["_edits"] = self.__dict__.get("_edits", 0) + 1
        super().__setattr__(name, value)

    def _create_parameters(self, device: Any, dtype: Any) -> None:
        """Register every (layer, direction)'s parameters in torch's order, then initialise them as torch does.

        Called by the facades once their options are set (the options decide the parameter set).
        """
        self._flat_weights_names: list[str] = []
        self._all_weights: list[list[str]] = []
        depth = self.input_size
        for k in range(self.num_layers):
            shapes = self.cell_class.parameter_shapes(depth, self.hidden_size, **self._structure())
            for d in range(self._directions):
                names = [self._parameter_name(role, k, d) for role in shapes]
                for param_name, shape in zip(names, shapes.values(), strict=True):
                    self.register_parameter(param_name, nn.Parameter(torch.empty(shape, device=device, dtype=dtype)))
                self._all_weights.append(names)
                self._flat_weights_names.extend(names)
            depth = (self.proj_size or self.hidden_size) * self._directions
        self._roles = tuple(shapes)
        self.reset_parameters()

    # -- what a facade provides ----------------------------------------------------------------
    def _structure(self) -> dict[str, Any]:
        """The options that decide the parameter set (``cell_class.parameter_shapes`` keywords)."""
        return {"bias": self.bias}

    def _cell_options(self) -> dict[str, Any]:
        """The cell's run-time options (``cell_class`` keywords besides the weights)."""
        options = {"recurrent_dropout": self.recurrent_dropout, "zoneout": self.zoneout}
        for name in self._step_options:
            options[name] = getattr(self, name)
        return options

    def _hidden_sizes(self) -> tuple[int, ...]:
        """The last dimension of each tensor of the hidden state, in ``_hidden_names`` order."""
        return (self.hidden_size,)

    # (static: the engine's stack node keeps them, and must not keep the layer alive)
    @staticmethod
    def _to_cell_state(parts: tuple[torch.Tensor, ...]) -> Any:
        return parts[0]

    @staticmethod
    def _from_cell_state(state: Any) -> tuple[torch.Tensor, ...]:
        return (state,)

    # -- torch.nn.RNNBase's API ----------------------------------------------------------------
    @property
    def _directions(self) -> int:
        return 2 if self.bidirectional else 1

    @staticmethod
    def _parameter_name(role: str, layer: int, direction: int) -> str:
        return f"{role}_l{layer}{'_reverse' if direction else ''}"

    @property
    def _flat_weights(self) -> list[torch.Tensor]:
        return [getattr(self, n) for n in self._flat_weights_names]

    @property
    def all_weights(self) -> list[list[torch.Tensor]]:
        """The parameters per (layer, direction), in torch's order."""
        return [[getattr(self, n) for n in names] for names in self._all_weights]

    def flatten_parameters(self) -> None:
        """A no-op, for code written for ``torch.nn`` (rnnkit's cells read the parameters where they are)."""

    def reset_parameters(self) -> None:
        """torch.nn's initialisation, in registration order so that a seed gives torch.nn's very values."""
        for names in self._all_weights:
            for role, param_name in zip(self._roles, names, strict=True):
                init_parameter_(role, getattr(self, param_name), self.hidden_size)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        defaults = {"proj_size": 0, "num_layers": 1, "bias": True, "batch_first": False, "dropout": 0.0}
        defaults.update(bidirectional=False, recurrent_dropout=0.0, zoneout=0.0)
        defaults.update(self._extra_options)
        for key, default in defaults.items():
            if getattr(self, key) != default:
                s += f", {key}={getattr(self, key)!r}"
        return s

    # -- running -------------------------------------------------------------------------------
    def forward(self, input: Any, hx: Any = None, *, lengths: Any = None) -> tuple[Any, Any]:
        """``output, h_n = layer(input, h_0)`` as ``torch.nn``; ``lengths=`` for padded variable-length input.

        Everything is checked before any math: shapes (``ShapeError``), the state's structure, then one
        ``check_placement`` of the input, the state, the lengths and the parameters (``DtypeError``,
        ``DeviceError``): each error of the class ``torch.nn`` raises for the same mistake (``rnnkit.errors``).
        """
        data, batch, unbatched = self._check_input(input, lengths)
        parts = self._check_hidden(hx, batch, unbatched)  # each (L * D, B, size), or None
        what = "PackedSequence data" if isinstance(input, PackedSequence) else "input"
        named = [(what, data), *zip(self._hidden_names, parts or (), strict=False)]
        check_placement(type(self).__name__, self, named, ("lengths", lengths))
        x, lengths, packed = self._time_major(input, lengths, unbatched)  # x: (T, B, I)
        out, parts = run_stack(self.engine_stack(), x, parts, lengths)  # (T, B, D * R), each (L * D, B, size)
        if unbatched:
            parts = tuple(p.squeeze(1) for p in parts)
        return self._format_output(out, packed, unbatched), parts[0] if len(parts) == 1 else parts

    def step(self, input: torch.Tensor, hx: Any = None) -> tuple[torch.Tensor, Any]:
        """One time step of a one-direction stack, for streaming: ``y_t, state = layer.step(x_t, state)``.

        ``x_t`` is ``(batch, input_size)`` or unbatched ``(input_size,)``; ``state`` is ``forward``'s ``h_0``
        (``None`` for zeros) and comes back as its ``h_n``. Feeding a sequence step by step equals ``forward``.
        """
        frame = checked_step(self, input, hx)  # a call placed as the last framed one: no checks to repeat
        if frame is not None:
            return frame
        name = type(self).__name__
        if self.bidirectional:
            raise ValueError(
                f"{name}.step: a bidirectional layer cannot stream (its backward direction starts "
                "from the sequence's end); call forward on the whole sequence"
            )
        if self.training and self.recurrent_dropout:
            raise ValueError(
                f"{name}.step: recurrent_dropout draws one mask per sequence, which a single step "
                "cannot keep; call eval() for streaming, or forward on the whole sequence"
            )
        if not isinstance(input, torch.Tensor):
            raise NotATensorError(f"{name}.step: expected x_t to be a tensor, got {type(input).__name__}")
        if input.dim() not in (1, 2):
            raise ShapeError(
                f"{name}.step: expected x_t of shape (batch, input_size) or (input_size,), got {tuple(input.shape)}"
            )
        unbatched = input.dim() == 1
        x = input.unsqueeze(0) if unbatched else input  # (B, I)
        self._check_features(x, "x_t")
        parts = self._check_hidden(hx, x.shape[0], unbatched)
        check_placement(name, self, [("x_t", x), *zip(self._hidden_names, parts or (), strict=False)])
        frame = step_frame(self, x, parts)  # a frame of the stack where the engine's predicate allows
        if frame is None:
            time_dim = 1 if self.batch_first and input.dim() == 2 else 0
            return self._step_as_sequence(input, hx, time_dim)
        y, parts = frame
        if unbatched:
            y, parts = y.squeeze(0), tuple(p.squeeze(1) for p in parts)
        return y, parts[0] if len(parts) == 1 else parts

    def _step_as_sequence(self, input: torch.Tensor, hx: Any, time_dim: int) -> tuple[torch.Tensor, Any]:
        output, hidden = self(input.unsqueeze(time_dim), hx)
        return output.squeeze(time_dim), hidden

    def stream(self, batch: int = 1, hx: Any = None) -> LayerStream:
        """A stream of frames through this one-direction stack: ``with layer.stream(batch) as s: y_t = s(x_t)``.

        ``x_t (batch, input_size)`` -> ``y_t (batch, hidden_size)`` (``proj_size`` with a projection), the state
        carried inside from ``hx`` (``forward``'s ``h_0`` form; ``None``: zeros); ``s.state`` is ``forward``'s
        ``h_n`` of the frames so far, ``s.reset(hx)`` starts again. The frames equal ``forward`` on the whole
        sequence; in inference on CPU a frame costs one kernel call (``rnnkit.engine.frame``).
        """
        return LayerStream(self, batch, hx)

    def engine_stack(self) -> LayerStack:
        """This layer as the engine's stack node: one cell per (layer, direction), ``dropout`` between layers in
        training, states as torch's stacked ``(h_0[, c_0])``. Kept while the parameter objects, the options and the
        mode stay the same (the attribute sets counted by ``__setattr__``), so that the engine's routing is decided
        once per configuration."""
        key = (self.__dict__.get("_edits", 0), tuple(map(id, self._parameters.values())))
        cache = _CELLS.get(self)
        if cache is None:
            cache = _CELLS[self] = {}
        hit = cache.get("stack")
        if hit is None or hit[0] != key:
            cells = [[self._cell(k, d) for d in range(self._directions)] for k in range(self.num_layers)]
            dropout = self.dropout if self.training else 0.0
            node = LayerStack(cells, dropout, self.training, (self._to_cell_state, self._from_cell_state))
            hit = cache["stack"] = (key, node)
        return hit[1]

    def _cell(self, layer: int, direction: int) -> TorchLayoutCell:
        """The step of ``(layer, direction)``: a cell over this layer's own parameter tensors.

        Built once and reused while the parameter objects and options stay the same: building an ``nn.Module``
        per call cost more than the whole fused kernel at batch 1. (In-place changes to the parameters need no
        rebuild: the cell holds the same tensors.)
        """
        params = self._parameters  # nn.Module keeps parameters here: reading it skips Module.__getattr__
        names = self._all_weights[layer * self._directions + direction]
        options = self._cell_options()
        key = (tuple(id(params[n]) for n in names), tuple(options.items()))
        cache = _CELLS.setdefault(self, {})
        hit = cache.get((layer, direction))
        if hit is None or hit[0] != key:
            weights = {role: params[n] for role, n in zip(self._roles, names, strict=True)}
            hit = cache[(layer, direction)] = (key, self.cell_class(weights, **options))
        cell = hit[1]
        return cell if cell.training == self.training else cell.train(self.training)

    # -- torch's input and output conventions --------------------------------------------------
    def _check_input(self, input: Any, lengths: Any) -> tuple[torch.Tensor, int, bool]:
        """``(the tensor holding the features, batch, unbatched)``, after the checks of torch's ``check_input``
        (rank, ``input_size``); the dtype is ``check_placement``'s."""
        name = type(self).__name__
        if isinstance(input, PackedSequence):
            if lengths is not None:
                raise ValueError(
                    f"{name}: lengths= cannot be combined with a PackedSequence input, which carries its own lengths"
                )
            if input.data.dim() != 2:
                raise ShapeError(
                    f"{name}: expected PackedSequence data of rank 2 (sum of lengths, input_size), "
                    f"got shape {tuple(input.data.shape)}"
                )
            self._check_features(input.data, "PackedSequence data")
            return input.data, int(input.batch_sizes[0]), False
        if not isinstance(input, torch.Tensor):
            raise NotATensorError(
                f"{name}: expected input to be a tensor or a PackedSequence, got {type(input).__name__}"
            )
        if input.dim() not in (2, 3):
            layout = "(batch, seq_len, input_size)" if self.batch_first else "(seq_len, batch, input_size)"
            raise ShapeError(
                f"{name}: expected input of rank 3 {layout} or rank 2 (seq_len, input_size) "
                f"unbatched, got shape {tuple(input.shape)}"
            )
        self._check_features(input, "input")
        unbatched = input.dim() == 2
        return input, 1 if unbatched else input.shape[0 if self.batch_first else 1], unbatched

    def _check_features(self, x: torch.Tensor, what: str) -> None:
        if x.shape[-1] != self.input_size:
            raise ShapeError(
                f"{type(self).__name__}: input.size(-1) must be equal to input_size. Expected {self.input_size}, got "
                f"{x.shape[-1]}: expected {what} with input_size={self.input_size} features in its last dimension, "
                f"got shape {tuple(x.shape)}"
            )

    def _time_major(self, input: Any, lengths: Any, unbatched: bool) -> tuple[torch.Tensor, Any, Any]:
        """``(x (T, B, I), lengths (B,) int64 or None, the PackedSequence or None)`` of a checked input."""
        if isinstance(input, PackedSequence):
            x, lengths = pad_packed_sequence(input)  # (T, B, I) in the caller's batch order
            return x, lengths.to(x.device), input
        if unbatched:
            x = input.unsqueeze(1)  # (T, 1, I)
            if lengths is not None and torch.as_tensor(lengths).dim() == 0:
                lengths = torch.as_tensor(lengths).reshape(1)
        else:
            x = input.transpose(0, 1) if self.batch_first else input  # (T, B, I)
        if x.shape[0] == 0:  # torch.nn refuses it too (with this message): there is no last step to return
            raise ShapeError(
                f"{type(self).__name__}: Expected sequence length to be larger than 0 in RNN, got input of shape "
                f"{tuple(input.shape)}"
            )
        name = type(self).__name__
        return x, _check_lengths(lengths, x.shape[1], x.shape[0], x.device, name, name="lengths"), None

    def _check_hidden(self, hx: Any, batch: int, unbatched: bool) -> tuple[torch.Tensor, ...] | None:
        """``h_0`` (and ``c_0``) checked as torch.nn does, each ``(num_layers * num_directions, batch, size)``
        (unbatched: given ``(L * D, size)``, returned ``(L * D, 1, size)``), or ``None``."""
        if hx is None:
            return None
        name, names = type(self).__name__, self._hidden_names
        if len(names) == 1:
            parts = (hx,)
        elif isinstance(hx, (tuple, list)) and len(hx) == len(names):
            parts = tuple(hx)
        else:
            got = f"a {type(hx).__name__} of {len(hx)}" if isinstance(hx, (tuple, list)) else type(hx).__name__
            raise StateStructureError(f"{name}: expected hx to be a tuple ({', '.join(names)}), got {got}")
        stacked, rank = self.num_layers * self._directions, 2 if unbatched else 3
        for part, part_name, size in zip(parts, names, self._hidden_sizes(), strict=True):
            if not isinstance(part, torch.Tensor):
                raise NotATensorError(f"{name}: expected {part_name} to be a tensor, got {type(part).__name__}")
            expected = (stacked, size) if unbatched else (stacked, batch, size)
            if tuple(part.shape) != expected:
                layout = "(num_layers * num_directions, " + ("" if unbatched else "batch, ") + "size)"
                kind = f"; {'unbatched 2-D' if unbatched else 'batched 3-D'} input takes a {rank}-D {part_name}"
                # torch.nn's words: "Expected hidden size ..." (the LSTM: "hidden[0]" for h_0, "hidden[1]" for c_0)
                which = "hidden" if len(names) == 1 else f"hidden[{names.index(part_name)}]"
                raise ShapeError(
                    f"{name}: Expected {which} size {expected}, got {list(part.shape)}: {part_name} must be "
                    f"{layout}" + (kind if part.dim() != rank else "")
                )
        return tuple(p.unsqueeze(1) for p in parts) if unbatched else parts

    def _format_output(self, out: torch.Tensor, packed: PackedSequence | None, unbatched: bool) -> Any:
        if packed is not None:
            sorted_out = out if packed.sorted_indices is None else out.index_select(1, packed.sorted_indices)
            valid = torch.arange(out.shape[1], device=out.device) < packed.batch_sizes.to(out.device).unsqueeze(1)
            # PackedSequence data is the valid (t, b) entries in time-major order, batch sorted by length.
            return PackedSequence(sorted_out[valid], packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
        if unbatched:
            return out.squeeze(1)  # (T, D * R)
        return out.transpose(0, 1) if self.batch_first else out
