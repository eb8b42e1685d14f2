"""rnnkit's save format, the configuration half: a module <-> the JSON description of its constructors.

`module_config` describes a module (the exact classes rnnkit knows: its layers, ``torch.nn``'s as rnnkit's, the
registered TF-style cells, ``TFCellStack``); `module_from_config` builds a new module (fresh weights) from such a
description. The cell classes come from the cell registry (``rnnkit.cells.registry``): leaves, the stack
(``MultiRNNCell``) and the wrappers, each with its constructor options.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..cells import (
    ACTIVATIONS,
    DropoutWrapper,
    LayerNormBasicLSTMCell,
    LSTMCell,
    MultiRNNCell,
    ResidualWrapper,
    RNNCell,
    default_state_filter,
)
from ..cells.registry import cell_class, cell_names
from ..convert.config import LAYERS, TORCH_NN_LAYERS, layer_description
from ..convert.tf_cells import TFCellStack

__all__ = ["module_config", "module_from_config", "known_classes"]


def _leaves() -> dict[str, type]:
    """The registered leaf cells by name (read when used: a cell registered later counts too)."""
    return {name: cell_class(name) for name in cell_names(kind="leaf")}


def known_classes() -> list[str]:
    """The class names a saved file may hold: rnnkit's layers, the registered cells (leaves, stack, wrappers) and
    ``TFCellStack``."""
    return sorted([*LAYERS, *cell_names(kind=("leaf", "stack", "wrapper")), "TFCellStack"])


# Other spellings of the named activations (F.relu is not torch.relu): all map to the same function.
_ACTIVATION_ALIASES = {
    torch.nn.functional.relu: "relu",
    torch.nn.functional.tanh: "tanh",
    torch.nn.functional.sigmoid: "sigmoid",
    torch.Tensor.tanh: "tanh",
    torch.Tensor.sigmoid: "sigmoid",
    torch.Tensor.relu: "relu",
}


# -- module -> configuration ---------------------------------------------------------------------------------
def _activation_name(fn: Any, owner: str) -> str:
    for name, known in ACTIVATIONS.items():
        if fn is known:
            return name
    for known, name in _ACTIVATION_ALIASES.items():
        if fn is known:
            return name
    raise ValueError(
        f"rnnkit.convert.save: the {owner}'s activation {getattr(fn, '__name__', repr(fn))!r} is not serialisable "
        f"by name: a saved file must reload without your code, so only {sorted(ACTIVATIONS)} can be saved "
        "(pass activation='relu' etc., or torch.relu / torch.tanh ...)"
    )


def _check_exact(module: nn.Module, base: type, owner: str) -> None:
    if type(module) is not base:
        raise TypeError(
            f"rnnkit.convert.save: cannot save a {type(module).__name__} (a subclass of {base.__name__}) at {owner}: "
            "a subclass may change the behaviour, which a saved file could not reproduce without your code"
        )


def _not_serialisable(where: str, what: str, default: str) -> None:
    raise ValueError(
        f"rnnkit.convert.save: {where} has {what}, a function that is not serialisable: only {default} can be saved"
    )


def _cell_config(cell: RNNCell, owner: str) -> dict[str, Any]:
    """The JSON description of a TF-style cell tree (``owner`` says where, for the errors)."""
    name = type(cell).__name__
    where = f"{owner}{name}"
    if isinstance(cell, MultiRNNCell):
        _check_exact(cell, MultiRNNCell, where)
        # A cell repeated by `[cell] * n` is saved once; its later layers refer to its first.
        firsts = [cell.first_layer_of(k) for k in range(len(cell.cells))]
        cells = [
            {"same_as": j} if j != k else _cell_config(c, f"{where}.cell_{k} ")
            for k, (c, j) in enumerate(zip(cell.cells, firsts, strict=True))
        ]
        return {"class": name, "args": {"state_is_tuple": cell.state_is_tuple}, "cells": cells}
    if isinstance(cell, (DropoutWrapper, ResidualWrapper)):
        dropout = isinstance(cell, DropoutWrapper)
        _check_exact(cell, DropoutWrapper if dropout else ResidualWrapper, where)
        if dropout and cell._state_filter is not default_state_filter:
            _not_serialisable(where, "a custom dropout_state_filter_visitor", "the default filter")
        if not dropout and cell.residual_fn is not None:
            _not_serialisable(where, "a residual_fn", "the default residual (inputs + outputs)")
        options: dict[str, Any] = {}
        if dropout:
            options = {
                "input_keep_prob": cell.input_keep_prob,
                "output_keep_prob": cell.output_keep_prob,
                "state_keep_prob": cell.state_keep_prob,
                "variational_recurrent": cell.variational_recurrent,
                "seed": cell.seed,
            }
        return {"class": name, "args": options, "cell": _cell_config(cell.cell, f"{where}.cell ")}
    if type(cell) not in _leaves().values():
        raise TypeError(
            f"rnnkit.convert.save: cannot save a {name} at {owner or 'the top'}: rnnkit saves {known_classes()} "
            "(exact classes), whose configuration it knows"
        )
    args: dict[str, Any] = {"num_units": cell.num_units, "activation": _activation_name(cell.activation, where)}
    if isinstance(cell, LSTMCell):  # BasicLSTMCell too
        args.update(forget_bias=cell.forget_bias, state_is_tuple=cell.state_is_tuple)
        if type(cell) is LSTMCell:
            args.update(
                use_peepholes=cell.use_peepholes, cell_clip=cell.cell_clip, num_proj=cell.num_proj,
                proj_clip=cell.proj_clip,
            )  # fmt: skip
    if isinstance(cell, LayerNormBasicLSTMCell):
        args.update(
            forget_bias=cell.forget_bias, layer_norm=cell.layer_norm, norm_gain=cell.norm_gain,
            norm_shift=cell.norm_shift, dropout_keep_prob=cell.dropout_keep_prob,
        )  # fmt: skip
    return {"class": name, "args": args, "input_depth": cell.input_depth}


def module_config(module: Any) -> dict[str, Any]:
    """The JSON-ready description of ``module`` that `save` writes (``ValueError``/``TypeError`` if it cannot).

    Example::

        >>> module_config(rnnkit.GRU(3, 4, reset_after=False))["args"]["reset_after"]
        False
    """
    if isinstance(module, TFCellStack):
        config = {
            "class": "TFCellStack",
            "args": {"topology": module.topology, "scope": module.scope, "multi_rnn_cell": module.multi_rnn_cell},
            "cells_fw": [_cell_config(c, f"cells_fw[{k}] ") for k, c in enumerate(module.cells_fw)],
            "cells_bw": [_cell_config(c, f"cells_bw[{k}] ") for k, c in enumerate(module.cells_bw)],
            "training": any(c.training for c in module.cells_fw + module.cells_bw),
        }
        return config
    if type(module) in LAYERS.values() or type(module) in TORCH_NN_LAYERS:
        config = layer_description(module)
    elif isinstance(module, (*LAYERS.values(), torch.nn.RNNBase)):
        raise TypeError(
            f"rnnkit.convert.save: cannot save a {type(module).__name__}, a subclass of a recurrent layer: a subclass "
            "may change the behaviour, which a saved file could not reproduce without your code"
        )
    elif isinstance(module, RNNCell):
        config = _cell_config(module, "")
    else:
        raise TypeError(
            f"rnnkit.convert.save: expected an rnnkit layer (RNN, LSTM, GRU), a TF-style cell tree or a TFCellStack, "
            f"got {type(module).__name__}"
        )
    config["training"] = bool(module.training)
    return config


# -- configuration -> module --------------------------------------------------------------------------------
def _args(config: dict[str, Any], where: str) -> dict[str, Any]:
    args = config.get("args", {})
    if not isinstance(args, dict):
        raise ValueError(f"{where}: 'args' must be an object, got {type(args).__name__}")
    return args


def _build_cell(config: dict[str, Any], dtype: torch.dtype, where: str) -> RNNCell:
    name = config.get("class")
    args = _args(config, where)
    try:
        if name == "MultiRNNCell":
            cells: list[RNNCell] = []
            for k, c in enumerate(config.get("cells", [])):
                same = c.get("same_as")  # an earlier layer's index (checked by _save_checks)
                cells.append(cells[same] if same is not None else _build_cell(c, dtype, f"{where}.cell_{k}"))
            return MultiRNNCell(cells, **args)
        if name in cell_names(kind="wrapper"):
            inner = _build_cell(config.get("cell") or {}, dtype, f"{where}.cell")
            return cell_class(name)(inner, **args)
        leaves = _leaves()
        if name in leaves:
            depth = config.get("input_depth")  # None: saved unbuilt, to build lazily on its first inputs
            return leaves[name](**args, input_size=depth, dtype=dtype if depth is not None else None)
    except (TypeError, ValueError) as err:
        if str(err).startswith(where.split(": ")[0] + ": "):
            raise  # an inner cell's error, already complete
        raise ValueError(f"{where}: cannot rebuild the {name} from {args}: {err}") from None
    raise ValueError(f"{where}: unknown class {name!r}; rnnkit saves {known_classes()}")


def module_from_config(
    config: dict[str, Any], dtype: torch.dtype = torch.float32, who: str = "rnnkit.convert.load"
) -> Any:
    """A new module (fresh weights) from `module_config`'s description; `load` then fills in the weights.

    ``who`` starts the error messages (`load` passes ``"rnnkit.convert.load: 'the file'"``). Under
    ``with torch.device("meta")`` this builds the shapes only, which `load` checks against the file first.
    """
    name = config.get("class")
    where = f"{who}: {name}"
    if name in LAYERS:
        try:
            module = LAYERS[name](**_args(config, where), dtype=dtype)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: cannot rebuild the {name} from {config.get('args')}: {err}") from None
    elif name == "TFCellStack":
        fw = [_build_cell(c, dtype, f"{who}: cells_fw[{k}]") for k, c in enumerate(config.get("cells_fw", []))]
        bw = [_build_cell(c, dtype, f"{who}: cells_bw[{k}]") for k, c in enumerate(config.get("cells_bw", []))]
        try:
            return TFCellStack(cells_fw=fw, cells_bw=bw, **_args(config, where))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: cannot rebuild the TFCellStack from {config.get('args')}: {err}") from None
    else:
        module = _build_cell(config, dtype, where)
    return module


