"""Whole TF1 recurrent stacks <-> the torch layout: a state dict plus `LayerConfig`.

`tf_to_torch` / `torch_to_tf` move whole stacks between TF1's variable names (parsed by
`rnnkit.convert._tf_variables.parse_tf_variables`) and a torch-layout state dict.

Topologies: ``"unidirectional"`` (``dynamic_rnn``; a ``MultiRNNCell`` of L layers is torch's
``num_layers=L``), ``"stack_bidirectional"`` (layer k+1 reads both directions of layer k: torch's
``bidirectional=True, num_layers=L``) and ``"bidirectional"`` (``bidirectional_dynamic_rnn``: with
one layer per direction the same as torch's one bidirectional layer; over two ``MultiRNNCell``s two
independent deep stacks, which no torch layer computes, so that converts only to rnnkit cells).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ._tf_layout import (
    tf_gru_to_torch,
    tf_ln_lstm_to_torch,
    tf_lstm_to_torch,
    tf_rnn_to_torch,
    torch_gru_to_tf,
    torch_ln_lstm_to_tf,
    torch_lstm_to_tf,
    torch_rnn_to_tf,
)
from ._tf_variables import (
    _DEFAULT_SCOPE,
    _TOPOLOGIES,
    TFCellVariables,
    TFRNNVariables,
    parse_tf_variables,
    resolve_forget_bias,
)
from ._torch_layout import check_state_dict, direction_params, set_direction_params
from .config import LayerConfig

__all__ = ["tf_to_torch", "torch_to_tf", "layout_to_torch", "layout_from_torch"]


def _uniform(values: list[Any], what: str) -> Any:
    if len(set(values)) != 1:
        raise ValueError(f"tf_to_torch: the cells differ in {what} ({values}); one torch layer needs one value")
    return values[0]


def layout_to_torch(
    layout: TFRNNVariables, *, target: str = "rnnkit", fold_forget_bias: bool | None = None
) -> tuple[dict[str, torch.Tensor], LayerConfig]:
    """A parsed TF stack (cells carry their run-time options) -> ``(state_dict, LayerConfig)``.

    ``target="torch.nn"`` must run in ``torch.nn.LSTM/GRU/RNN``: the forget bias is folded into the
    forget-gate bias, and peepholes, clipping, TF's GRU and layer norm are refused with the reason.
    ``target="rnnkit"`` may use ``rnnkit.LSTM/GRU/RNN``'s options; the forget bias is carried as the
    ``forget_bias`` option (bit-exact) unless ``fold_forget_bias=True``.
    """
    if target not in ("rnnkit", "torch.nn"):
        raise ValueError(f"tf_to_torch: target must be 'rnnkit' or 'torch.nn', got {target!r}")
    fold = target == "torch.nn" if fold_forget_bias is None else bool(fold_forget_bias)
    if target == "torch.nn" and not fold:
        raise ValueError("tf_to_torch: target='torch.nn' has no forget_bias option; the forget bias must be folded")
    if layout.topology == "bidirectional" and len(layout.fw) > 1:
        raise ValueError(
            f"tf_to_torch: {layout.scope!r} is bidirectional_dynamic_rnn over two {len(layout.fw)}-layer "
            "MultiRNNCells: "
            "two independent deep stacks joined only at the end. A torch bidirectional layer feeds both directions "
            "of layer k into layer k+1 (stack_bidirectional_dynamic_rnn), a different network; load it into "
            "rnnkit cells instead (rnnkit.convert.load_tf_checkpoint)"
        )
    cells = layout.fw + layout.bw
    mode = _uniform([c.mode for c in cells], "kind (LSTM, GRU, RNN)")
    hidden = _uniform([c.num_units for c in cells], "num_units")
    proj = _uniform([c.num_proj for c in cells], "num_proj")
    peepholes = _uniform([c.use_peepholes for c in cells], "use_peepholes")
    activation = _uniform([c.activation for c in cells], "activation")
    layer_norm = _uniform([c.layer_norm for c in cells], "layer_norm")
    reasons = []
    if mode != "RNN" and activation != "tanh":
        reasons.append(f"activation {activation!r}: torch-layout {mode}s use tanh")
    proj_clip = _uniform([c.proj_clip for c in cells], "proj_clip")
    if proj_clip is not None:
        reasons.append(f"proj_clip={proj_clip}: no torch-layout LSTM clips its projection")
    cell_clip = _uniform([c.cell_clip for c in cells], "cell_clip") if mode == "LSTM" else None
    if target == "torch.nn":
        if layer_norm:
            reasons.append("LayerNormBasicLSTMCell: torch.nn.LSTM has no layer norm; use target='rnnkit'")
        if peepholes:
            reasons.append("peepholes (w_*_diag): torch.nn.LSTM has none; use target='rnnkit'")
        if cell_clip is not None:
            reasons.append(f"cell_clip={cell_clip}: torch.nn.LSTM never clips its cell; use target='rnnkit'")
        if mode == "GRU":
            reasons.append(
                "TF's GRUCell applies the reset gate before the recurrent matmul (r * h), torch.nn.GRU after it "
                "(r * (W_hn h + b_hn)); no weights make them equal. Use target='rnnkit' (GRU(reset_after=False))"
            )
    if reasons:
        raise ValueError(f"tf_to_torch: {layout.scope!r} cannot be converted exactly: " + "; ".join(reasons))
    forget_bias = _uniform([c.forget_bias for c in cells], "forget_bias") if mode == "LSTM" else 0.0
    config = LayerConfig(
        mode=mode,
        input_size=layout.fw[0].input_size,
        hidden_size=hidden,
        num_layers=len(layout.fw),
        bias=not layer_norm,
        layer_norm=layer_norm,
        bidirectional=layout.topology != "unidirectional",
        proj_size=proj or 0,
        nonlinearity=activation if mode == "RNN" else "tanh",
        reset_after=mode != "GRU",
        forget_bias=0.0 if fold else forget_bias,
        peepholes=peepholes,
        cell_clip=cell_clip,
    )
    state: dict[str, torch.Tensor] = {}
    for k in range(config.num_layers):
        for reverse in config.directions():
            cell = (layout.bw if reverse else layout.fw)[k]
            if layer_norm:
                params = tf_ln_lstm_to_torch(cell.variables, forget_bias=forget_bias if fold else 0.0)
            elif mode == "LSTM":
                params = tf_lstm_to_torch(cell.variables, forget_bias=forget_bias if fold else 0.0)
            elif mode == "GRU":
                params = tf_gru_to_torch(cell.variables)
            else:
                params = tf_rnn_to_torch(cell.variables)
            set_direction_params(state, params, k, reverse)
    check_state_dict(state, config, "tf_to_torch")
    return state, config


def tf_to_torch(
    variables: Mapping[str, Any],
    scope: str | None = None,
    *,
    target: str = "rnnkit",
    forget_bias: float | None = None,
    fold_forget_bias: bool | None = None,
    cell_clip: float | None = None,
    proj_clip: float | None = None,
    activation: str = "tanh",
) -> tuple[dict[str, torch.Tensor], LayerConfig]:
    """TF1 cell variables (name -> array) -> a torch-layout state dict and its `LayerConfig`.

    A checkpoint does not store the cells' run-time options; pass what the TF code used:
    ``forget_bias`` (``None``: TF's default 1.0 for ``BasicLSTMCell``, ``LSTMCell`` and
    ``LayerNormBasicLSTMCell``, with an `AssumedForgetBiasWarning` when the stack has such cells), ``cell_clip``,
    ``proj_clip``, ``activation`` (``"relu"`` for a ``BasicRNNCell(activation=tf.nn.relu)``).
    ``target``: ``"torch.nn"`` (loads into ``torch.nn.LSTM/GRU/RNN``; forget bias folded into the
    forget-gate bias, exact up to one float rounding of that sum; peepholes, clipping and TF's GRU
    refused with the reason) or ``"rnnkit"`` (``rnnkit.LSTM/GRU/RNN``: forget bias carried as an
    option, peepholes, ``cell_clip`` and ``GRU(reset_after=False)`` allowed; bit-exact).

    Example::

        >>> tf_vars = torch_to_tf(torch.nn.LSTM(3, 4).state_dict(), LayerConfig("LSTM", 3, 4))  # or read_tf_checkpoint
        >>> state, cfg = tf_to_torch(tf_vars, target="torch.nn", forget_bias=1.0)
        >>> lstm = cfg.torch_nn_module(batch_first=True); lstm.load_state_dict(state)
        <All keys matched successfully>
    """
    layout = parse_tf_variables(variables, scope)
    cells = layout.fw + layout.bw
    forget_bias = resolve_forget_bias(forget_bias, [c.cell_type for c in cells], layout.scope, "tf_to_torch")
    for cell in cells:
        cell.forget_bias, cell.cell_clip, cell.activation = forget_bias, cell_clip, activation
        cell.proj_clip = proj_clip if cell.num_proj is not None else None
    return layout_to_torch(layout, target=target, fold_forget_bias=fold_forget_bias)


def layout_from_torch(
    state_dict: Mapping[str, Any],
    config: LayerConfig,
    *,
    forget_bias: float | None = 1.0,
    scope: str | None = None,
    topology: str | None = None,
    multi_rnn_cell: bool | None = None,
    cell_type: str | None = None,
) -> TFRNNVariables:
    """A torch-layout stack -> TF1 cells (`TFRNNVariables`) whose variables compute the same function.

    ``forget_bias``: the forget bias the TF cells will add at run time (TF's default 1.0; ``None``
    keeps ``config.forget_bias``, which needs no arithmetic); ``config.forget_bias - forget_bias`` is
    added to the forget block. ``topology``: by default ``"unidirectional"``, or for bidirectional
    configs ``"bidirectional"`` with one layer and ``"stack_bidirectional"`` with more.
    ``multi_rnn_cell`` (unidirectional/bidirectional): wrap the layers in a ``MultiRNNCell``
    (default: when there is more than one layer). ``cell_type``: ``"BasicLSTMCell"`` or
    ``"LSTMCell"`` (default: ``LSTMCell`` only when peepholes or a projection need it).
    """
    state = check_state_dict(state_dict, config, "torch_to_tf")
    if config.mode == "GRU" and config.reset_after:
        raise ValueError(
            "torch_to_tf: a torch GRU (reset_after=True: r * (W_hn h + b_hn)) has no TF GRUCell equivalent "
            "(TF applies r before the matmul: W_hn (r * h)); no weights make them equal"
        )
    if topology is None:
        topology = "unidirectional"
        if config.bidirectional:
            topology = "bidirectional" if config.num_layers == 1 else "stack_bidirectional"
    if topology not in _TOPOLOGIES:
        raise ValueError(f"torch_to_tf: topology must be one of {_TOPOLOGIES}, got {topology!r}")
    if (topology == "unidirectional") == config.bidirectional:
        raise ValueError(f"torch_to_tf: topology {topology!r} does not fit bidirectional={config.bidirectional}")
    if topology == "bidirectional" and config.num_layers > 1:
        raise ValueError(
            "torch_to_tf: a multi-layer bidirectional torch layer feeds both directions into the next layer: "
            "that is topology 'stack_bidirectional', not 'bidirectional' (two independent MultiRNNCell stacks)"
        )
    multi = config.num_layers > 1 if multi_rnn_cell is None else bool(multi_rnn_cell)
    if not multi and config.num_layers > 1 and topology != "stack_bidirectional":
        raise ValueError(f"torch_to_tf: {config.num_layers} layers need multi_rnn_cell=True")
    if config.layer_norm:
        if config.proj_size:
            raise ValueError(
                f"torch_to_tf: an LSTM(layer_norm=True, proj_size={config.proj_size}) has no TF1 cell: TF's "
                "LayerNormBasicLSTMCell has no projection (and LSTMCell no layer norm); keep it as an rnnkit layer "
                "(rnnkit.convert.save, export_onnx)"
            )
        if cell_type not in (None, "LayerNormBasicLSTMCell"):
            raise ValueError(f"torch_to_tf: a layer_norm LSTM becomes a LayerNormBasicLSTMCell, not {cell_type!r}")
        cell_type = "LayerNormBasicLSTMCell"
    elif config.mode == "LSTM":
        needs_full = config.peepholes or config.proj_size or config.cell_clip is not None
        cell_type = cell_type or ("LSTMCell" if needs_full else "BasicLSTMCell")
        if cell_type not in ("BasicLSTMCell", "LSTMCell") or (needs_full and cell_type != "LSTMCell"):
            raise ValueError(f"torch_to_tf: an LSTM with these options needs cell_type='LSTMCell', got {cell_type!r}")
    else:
        expected = "GRUCell" if config.mode == "GRU" else "BasicRNNCell"
        if cell_type not in (None, expected):
            raise ValueError(f"torch_to_tf: a {config.mode} becomes a {expected}, not {cell_type!r}")
        cell_type = expected
    shift = 0.0
    if config.mode == "LSTM" and forget_bias is not None:
        shift = float(forget_bias) - config.forget_bias
    cell_forget_bias = config.forget_bias if forget_bias is None else float(forget_bias)
    fw: list[TFCellVariables] = []
    bw: list[TFCellVariables] = []
    for k in range(config.num_layers):
        for reverse in config.directions():
            params = direction_params(state, k, reverse)
            if config.layer_norm:
                variables = torch_ln_lstm_to_tf(params, forget_bias=shift)
            elif config.mode == "LSTM":
                variables = torch_lstm_to_tf(params, forget_bias=shift)
            elif config.mode == "GRU":
                variables = torch_gru_to_tf(params)
            else:
                variables = torch_rnn_to_tf(params)
            cell = TFCellVariables(
                cell_type,
                variables,
                forget_bias=cell_forget_bias if config.mode == "LSTM" else 1.0,
                cell_clip=config.cell_clip,
                activation=config.nonlinearity,
            )
            (bw if reverse else fw).append(cell)
    scope = _DEFAULT_SCOPE[topology] if scope is None else scope.strip("/")
    return TFRNNVariables(topology, scope, fw, bw, multi_rnn_cell=multi and topology != "stack_bidirectional")


def torch_to_tf(
    state_dict: Mapping[str, Any],
    config: LayerConfig,
    *,
    forget_bias: float | None = 1.0,
    scope: str | None = None,
    topology: str | None = None,
    multi_rnn_cell: bool | None = None,
    cell_type: str | None = None,
) -> dict[str, torch.Tensor]:
    """A torch-layout state dict -> TF1 variables by full name.

    The keywords are `layout_from_torch`'s: ``forget_bias`` (TF's default 1.0), ``scope``, ``topology``,
    ``multi_rnn_cell``, ``cell_type``.

    Example::

        >>> lstm = torch.nn.LSTM(3, 4, num_layers=2)
        >>> tf_vars = torch_to_tf(lstm.state_dict(), LayerConfig.from_module(lstm))   # for BasicLSTMCell(4)
        >>> sorted(tf_vars)[0]
        'rnn/multi_rnn_cell/cell_0/basic_lstm_cell/bias'
    """
    options = dict(topology=topology, multi_rnn_cell=multi_rnn_cell, cell_type=cell_type)
    return layout_from_torch(state_dict, config, forget_bias=forget_bias, scope=scope, **options).variables()
