"""rnnkit's TF-style cells <-> TF1 variables and the torch layout.

rnnkit's cells keep TF's parameter names (``kernel``, ``gates.kernel``, ``projection.kernel`` ...), so a
cell's TF variable name is its scope plus its parameter name with ``/`` for ``.``: a cell called
by ``dynamic_rnn`` is ``rnn/<cell scope>/``, layer ``k`` of a ``MultiRNNCell`` ``.../multi_rnn_cell/cell_k/``,
and wrappers (``DropoutWrapper``, ``ResidualWrapper``) add no scope, as in TF.

`TFCellStack` holds the cells of one stack in one of the three TF topologies and runs them with the
matching runner; `load_tf_checkpoint` builds one from a checkpoint, `cells_to_torch` and
`torch_to_cells` move it to and from the torch layout (so a ``MultiRNNCell`` of ``BasicLSTMCell``s
becomes an LSTM state dict + `LayerConfig`, and back). Loading variables into cells a user built is
``rnnkit.convert._cell_variables``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..cells import ACTIVATIONS, DropoutWrapper, MultiRNNCell, RNNCell, RNNCellWrapper
from ..cells.registry import cell_class, cell_names
from ..runners import bidirectional_dynamic_rnn, dynamic_rnn, stack_bidirectional_dynamic_rnn
from ._tf_checkpoint import read_tf_checkpoint
from ._tf_stack import layout_from_torch, layout_to_torch
from ._tf_variables import _DEFAULT_SCOPE, TFCellVariables, TFRNNVariables, parse_tf_variables, resolve_forget_bias
from .config import LayerConfig

__all__ = [
    "TFCellStack",
    "load_tf_checkpoint",
    "cells_from_tf_variables",
    "cells_to_torch",
    "torch_to_cells",
]


def _activation_name(fn: Any) -> str:
    for name, known in ACTIVATIONS.items():
        if fn is known:
            return name
    return getattr(fn, "__name__", repr(fn))


def _leaf(cell: RNNCell, component: str) -> RNNCell:
    """The cell under any ``DropoutWrapper``s (identity at inference); other wrappers change the function."""
    while isinstance(cell, RNNCellWrapper):
        if not isinstance(cell, DropoutWrapper):
            raise ValueError(
                f"{component}: a {type(cell).__name__} changes the cell's function; no layer layout expresses it"
            )
        cell = cell.cell
    leaves = cell_names(kind="leaf")  # the registry's cells with TF variables of their own
    if type(cell) not in [cell_class(name) for name in leaves]:
        raise TypeError(
            f"{component}: expected one of {sorted(leaves)} (or a MultiRNNCell of them), got {type(cell).__name__}"
        )
    if not cell.built:
        raise ValueError(f"{component}: the {type(cell).__name__} is not built yet, so it has no weights to convert")
    return cell


def _cell_variables(cell: RNNCell, component: str) -> TFCellVariables:
    cell = _leaf(cell, component)
    name = type(cell).__name__
    return TFCellVariables(
        name,
        {k.replace(".", "/"): p.detach() for k, p in cell.named_parameters()},
        forget_bias=getattr(cell, "forget_bias", 1.0),
        cell_clip=getattr(cell, "cell_clip", None),
        proj_clip=getattr(cell, "proj_clip", None),
        activation=_activation_name(cell.activation),
    )


def _make_cell(spec: TFCellVariables, dtype: torch.dtype | None = None) -> RNNCell:
    kwargs: dict[str, Any] = {"activation": spec.activation}
    if spec.cell_type in ("BasicLSTMCell", "LSTMCell", "LayerNormBasicLSTMCell"):
        kwargs["forget_bias"] = spec.forget_bias
    if spec.cell_type == "LSTMCell":
        kwargs.update(
            use_peepholes=spec.use_peepholes, cell_clip=spec.cell_clip, num_proj=spec.num_proj, proj_clip=spec.proj_clip
        )
    if spec.cell_type == "LayerNormBasicLSTMCell":
        kwargs["layer_norm"] = spec.layer_norm
    main = next(iter(spec.variables.values()))
    cell = cell_class(spec.cell_type)(spec.num_units, input_size=spec.input_size, dtype=dtype or main.dtype, **kwargs)
    with torch.no_grad():
        for name, param in cell.named_parameters():
            param.copy_(spec.variables[name.replace(".", "/")])
    return cell


def _runnable(cells: list[RNNCell], multi: bool) -> RNNCell:
    return MultiRNNCell(cells) if multi else cells[0]


class TFCellStack:
    """rnnkit TF-style cells of one recurrent stack, arranged as TF1 ran them.

    * ``"unidirectional"``: ``cell`` (a ``MultiRNNCell`` of ``cells_fw`` when ``multi_rnn_cell``, else
      ``cells_fw[0]``), run by ``dynamic_rnn``;
    * ``"bidirectional"``: ``cell_fw`` and ``cell_bw``, run by ``bidirectional_dynamic_rnn``;
    * ``"stack_bidirectional"``: ``cells_fw[k]``, ``cells_bw[k]`` per layer, run by
      ``stack_bidirectional_dynamic_rnn``.

    ``run(inputs)`` returns ``(outputs, state)`` with ``outputs`` ``(batch, time, features)`` (both
    directions concatenated) and ``state`` the runner's final state (``(state_fw, state_bw)`` for two
    directions).

    Example::

        >>> cells_fw, cells_bw = [rnnkit.BasicLSTMCell(8, input_size=3)], [rnnkit.BasicLSTMCell(8, input_size=3)]
        >>> stack = TFCellStack("bidirectional", cells_fw, cells_bw)
        >>> outputs, (state_fw, state_bw) = stack.run(torch.randn(2, 5, 3), sequence_length=[5, 3])
        >>> tuple(outputs.shape)
        (2, 5, 16)
    """

    def __init__(
        self,
        topology: str,
        cells_fw: Sequence[RNNCell],
        cells_bw: Sequence[RNNCell] = (),
        *,
        multi_rnn_cell: bool = False,
        scope: str | None = None,
    ):
        if topology not in _DEFAULT_SCOPE:
            raise ValueError(f"TFCellStack: topology must be one of {sorted(_DEFAULT_SCOPE)}, got {topology!r}")
        self.topology = topology
        self.cells_fw, self.cells_bw = list(cells_fw), list(cells_bw)
        self.multi_rnn_cell = bool(multi_rnn_cell) and topology != "stack_bidirectional"
        self.scope = _DEFAULT_SCOPE[topology] if scope is None else scope.strip("/")
        if not self.cells_fw or (topology == "unidirectional") != (not self.cells_bw):
            raise ValueError(
                f"TFCellStack: a {topology} stack needs forward cells"
                + (" and no backward cells" if topology == "unidirectional" else " and backward cells")
            )
        if topology == "stack_bidirectional" and len(self.cells_fw) != len(self.cells_bw):
            raise ValueError(
                f"TFCellStack: {len(self.cells_fw)} forward and {len(self.cells_bw)} backward layers; need as many"
            )
        if (
            not self.multi_rnn_cell
            and topology != "stack_bidirectional"
            and len(self.cells_fw + self.cells_bw) > (1 if topology == "unidirectional" else 2)
        ):
            raise ValueError("TFCellStack: several layers per direction need multi_rnn_cell=True")
        self.cell_fw = _runnable(self.cells_fw, self.multi_rnn_cell) if topology != "stack_bidirectional" else None
        self.cell_bw = _runnable(self.cells_bw, self.multi_rnn_cell) if topology == "bidirectional" else None

    @property
    def cell(self) -> RNNCell:
        """The cell a unidirectional stack runs with ``dynamic_rnn``."""
        if self.topology != "unidirectional":
            raise AttributeError(f"TFCellStack: a {self.topology} stack has cell_fw/cell_bw or cells_fw/cells_bw")
        return self.cell_fw

    def __repr__(self) -> str:
        kinds = [type(c).__name__ for c in self.cells_fw]
        return f"TFCellStack({self.topology!r}, scope={self.scope!r}, layers={kinds}, multi={self.multi_rnn_cell})"

    def run(
        self, inputs: torch.Tensor, sequence_length: Any = None, *, time_major: bool = False
    ) -> tuple[torch.Tensor, Any]:
        """Run the stack with its TF runner; ``inputs`` ``(batch, time, depth)`` (or time-major)."""
        if self.topology == "unidirectional":
            return dynamic_rnn(self.cell_fw, inputs, sequence_length, time_major=time_major)
        if self.topology == "bidirectional":
            (out_fw, out_bw), states = bidirectional_dynamic_rnn(
                self.cell_fw, self.cell_bw, inputs, sequence_length, time_major=time_major
            )
            return torch.cat([out_fw, out_bw], -1), states
        outputs, states_fw, states_bw = stack_bidirectional_dynamic_rnn(
            self.cells_fw, self.cells_bw, inputs, sequence_length=sequence_length, time_major=time_major
        )
        return outputs, (states_fw, states_bw)

    def layout(self) -> TFRNNVariables:
        """The TF view of these cells: variables by scope, with the cells' run-time options."""
        component = "TFCellStack"
        fw = [_cell_variables(c, component) for c in self.cells_fw]
        bw = [_cell_variables(c, component) for c in self.cells_bw]
        return TFRNNVariables(self.topology, self.scope, fw, bw, multi_rnn_cell=self.multi_rnn_cell)

    def tf_variables(self) -> dict[str, torch.Tensor]:
        """The variables TF1 would save for these cells, by full name."""
        return self.layout().variables()

    def to_torch(self, target: str = "rnnkit", fold_forget_bias: bool | None = None):
        """``(state_dict, LayerConfig)`` in the torch layout; see `cells_to_torch`."""
        return layout_to_torch(self.layout(), target=target, fold_forget_bias=fold_forget_bias)


def _as_stack(cells: Any, component: str) -> TFCellStack:
    if isinstance(cells, TFCellStack):
        return cells
    if isinstance(cells, MultiRNNCell):
        return TFCellStack("unidirectional", cells.cells, multi_rnn_cell=True)
    if isinstance(cells, RNNCell):
        return TFCellStack("unidirectional", [cells])
    if isinstance(cells, (tuple, list)) and len(cells) == 2:
        fw, bw = cells
        if isinstance(fw, RNNCell) and isinstance(bw, RNNCell):
            multi = isinstance(fw, MultiRNNCell)
            if multi != isinstance(bw, MultiRNNCell):
                raise ValueError(f"{component}: one direction is a MultiRNNCell and the other is not")
            unpack = (lambda c: c.cells) if multi else (lambda c: [c])
            return TFCellStack("bidirectional", unpack(fw), unpack(bw), multi_rnn_cell=multi)
        if isinstance(fw, (list, tuple)) and isinstance(bw, (list, tuple)):
            return TFCellStack("stack_bidirectional", fw, bw)
    raise TypeError(
        f"{component}: expected a cell, a MultiRNNCell, a (cell_fw, cell_bw) pair, a (cells_fw, cells_bw) pair of "
        f"lists or a TFCellStack, got {type(cells).__name__}"
    )


# -- TF variables -> cells -----------------------------------------------------------------------------
def cells_from_tf_variables(
    variables: Mapping[str, Any],
    scope: str | None = None,
    *,
    forget_bias: float | None = None,
    cell_clip: float | None = None,
    proj_clip: float | None = None,
    activation: str = "tanh",
    dtype: torch.dtype | None = None,
) -> TFCellStack:
    """Build the rnnkit cells that TF1 variables (name -> array) describe, weights loaded.

    Cell classes come from the scope names (``basic_lstm_cell`` -> ``BasicLSTMCell``), sizes from
    the shapes, peepholes and projection from ``w_*_diag`` / ``projection/kernel``. The run-time
    options a checkpoint does not store are keywords: ``forget_bias`` (``None``, the default: TF's
    default 1.0, with an `AssumedForgetBiasWarning` when there are LSTM cells: pass what the TF code used),
    ``cell_clip``, ``proj_clip`` (``LSTMCell``), ``activation`` (``"tanh"``), and ``dtype`` (the variables').
    """
    options = dict(cell_clip=cell_clip, proj_clip=proj_clip, activation=activation, dtype=dtype)
    return _cells_from_tf_variables(variables, scope, "cells_from_tf_variables", forget_bias, **options)


def _cells_from_tf_variables(
    variables: Mapping[str, Any],
    scope: str | None,
    component: str,
    forget_bias: float | None,
    *,
    cell_clip: float | None = None,
    proj_clip: float | None = None,
    activation: str = "tanh",
    dtype: torch.dtype | None = None,
) -> TFCellStack:
    layout = parse_tf_variables(variables, scope)
    specs = layout.fw + layout.bw
    # The caller's caller is the user's code: this frame, the public function, then theirs.
    forget_bias = resolve_forget_bias(forget_bias, [s.cell_type for s in specs], layout.scope, component, 4)
    for spec in specs:
        spec.forget_bias, spec.activation = forget_bias, activation
        if spec.cell_type == "LSTMCell":
            spec.cell_clip = cell_clip
            spec.proj_clip = proj_clip if spec.num_proj is not None else None
    return TFCellStack(
        layout.topology,
        [_make_cell(s, dtype) for s in layout.fw],
        [_make_cell(s, dtype) for s in layout.bw],
        multi_rnn_cell=layout.multi_rnn_cell,
        scope=layout.scope,
    )


def load_tf_checkpoint(
    path: str | os.PathLike,
    scope: str | None = None,
    *,
    forget_bias: float | None = None,
    cell_clip: float | None = None,
    proj_clip: float | None = None,
    activation: str = "tanh",
    dtype: torch.dtype | None = None,
) -> TFCellStack:
    """Read a TF1 checkpoint (no TensorFlow needed) and build its recurrent stack as rnnkit cells.

    ``path``: a checkpoint prefix, its ``.index`` file, or a folder with TF's ``checkpoint`` file.
    The keywords are `cells_from_tf_variables`'s; pass ``forget_bias`` (a checkpoint does not store it:
    without it TF's default 1.0 is assumed, with an `AssumedForgetBiasWarning`).

    Example::

        stack = load_tf_checkpoint("ckpt/model.ckpt", forget_bias=1.0)
        stack   # TFCellStack('unidirectional', scope='rnn', layers=['BasicLSTMCell', 'BasicLSTMCell'], multi=True)
        outputs, state = stack.run(inputs, sequence_length=lengths)
    """
    options = dict(cell_clip=cell_clip, proj_clip=proj_clip, activation=activation, dtype=dtype)
    return _cells_from_tf_variables(read_tf_checkpoint(path), scope, "load_tf_checkpoint", forget_bias, **options)


# -- cells <-> torch layout ----------------------------------------------------------------------------
def cells_to_torch(
    cells: Any, *, target: str = "rnnkit", fold_forget_bias: bool | None = None
) -> tuple[dict[str, torch.Tensor], LayerConfig]:
    """rnnkit TF-style cells -> ``(state_dict, LayerConfig)`` in the torch layout.

    ``cells``: a cell, a ``MultiRNNCell`` (one direction, ``num_layers`` = its depth), a
    ``(cell_fw, cell_bw)`` pair of single cells (one bidirectional layer), a ``(cells_fw, cells_bw)``
    pair of lists (stacked bidirectional layers) or a `TFCellStack`. ``DropoutWrapper``s are
    dropped (inference). ``target`` and ``fold_forget_bias`` as in `tf_to_torch`: with
    ``target="torch.nn"`` a ``MultiRNNCell`` of ``BasicLSTMCell``s becomes a ``torch.nn.LSTM`` state
    dict with the forget bias folded into the forget-gate bias.

    Example::

        >>> stack = MultiRNNCell([rnnkit.BasicLSTMCell(8, input_size=3), rnnkit.BasicLSTMCell(8, input_size=8)])
        >>> state, cfg = cells_to_torch(stack, target="torch.nn")
        >>> lstm = cfg.torch_nn_module(); lstm.load_state_dict(state)
        <All keys matched successfully>
    """
    stack = _as_stack(cells, "cells_to_torch")
    return layout_to_torch(stack.layout(), target=target, fold_forget_bias=fold_forget_bias)


def torch_to_cells(
    state_dict: Mapping[str, Any],
    config: LayerConfig,
    *,
    forget_bias: float | None = None,
    topology: str | None = None,
    multi_rnn_cell: bool | None = None,
    cell_type: str | None = None,
    scope: str | None = None,
) -> TFCellStack:
    """A torch-layout stack -> rnnkit TF-style cells computing the same function.

    LSTM -> ``BasicLSTMCell`` (``LSTMCell`` with peepholes, projection or ``cell_clip``), GRU with
    ``reset_after=False`` -> ``GRUCell`` (a torch-math GRU is refused: no TF cell computes it),
    RNN -> ``BasicRNNCell``. ``forget_bias``: the cells' forget bias (``None``: ``config.forget_bias``,
    which moves no value); ``topology``, ``multi_rnn_cell``, ``cell_type`` and ``scope`` as in
    `layout_from_torch`.

    Example::

        >>> lstm = torch.nn.LSTM(3, 8, num_layers=2)
        >>> stack = torch_to_cells(lstm.state_dict(), LayerConfig.from_module(lstm))
        >>> type(stack.cell).__name__, stack.cells_fw[0].forget_bias
        ('MultiRNNCell', 0.0)
    """
    layout = layout_from_torch(
        state_dict, config, forget_bias=forget_bias, topology=topology, multi_rnn_cell=multi_rnn_cell,
        cell_type=cell_type, scope=scope,
    )  # fmt: skip
    return TFCellStack(
        layout.topology,
        [_make_cell(s) for s in layout.fw],
        [_make_cell(s) for s in layout.bw],
        multi_rnn_cell=layout.multi_rnn_cell,
        scope=layout.scope,
    )
