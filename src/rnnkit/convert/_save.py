"""rnnkit's save format: the weights in a ``safetensors`` file, the module's configuration in its metadata.

A saved file reloads with ``load(path)`` and no code of the user's: the metadata key ``"rnnkit.config"`` holds
a JSON description of the module tree (classes and constructor arguments), the tensors are the module's
``state_dict()`` under its own names. Nothing is pickled, so loading a file never runs code.

What can be saved (exact classes, not subclasses, whose behaviour rnnkit cannot know):

* layers: ``rnnkit.RNN``, ``rnnkit.LSTM``, ``rnnkit.GRU`` with every option (``batch_first``, ``dropout``,
  ``proj_size``, ``forget_bias``, ``peepholes``, ``cell_clip``, ``layer_norm``, ``reset_after``,
  ``nonlinearity``, ``recurrent_dropout``, ``zoneout``); ``torch.nn.RNN/LSTM/GRU`` are saved as the
  rnnkit layer of the same configuration (a drop-in with the same state dict);
* TF-style cell trees: ``BasicRNNCell``, ``BasicLSTMCell``, ``LSTMCell``, ``GRUCell``,
  ``LayerNormBasicLSTMCell``, ``MultiRNNCell``, ``DropoutWrapper``, ``ResidualWrapper``, built or not, with
  their constructor options; activations by name (``tanh``, ``sigmoid``, ``relu``, ``elu``, ``linear``);
* ``rnnkit.convert.TFCellStack`` (the cells of a TF1 stack with their topology and scope).

A module's training flag is saved and restored. Tensors are saved on the CPU; ``load(path, device=...)``
moves the module.

Metadata layout (all values strings, as safetensors requires)::

    {"format": "pt", "rnnkit.format": "1", "rnnkit.version": "0.1.0",
     "rnnkit.config": '{"class": "LSTM", "args": {"input_size": 3, ...}, "training": false}'}

Example::

    >>> lstm = rnnkit.LSTM(3, 8, num_layers=2, forget_bias=1.0, peepholes=True).eval()
    >>> save(lstm, "lstm.safetensors")
    >>> again = load("lstm.safetensors")
    >>> torch.equal(again(x)[0], lstm(x)[0])
    True
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..cells import (
    ACTIVATIONS,
    BasicLSTMCell,
    BasicRNNCell,
    DropoutWrapper,
    GRUCell,
    LayerNormBasicLSTMCell,
    LSTMCell,
    MultiRNNCell,
    ResidualWrapper,
    RNNCell,
    default_state_filter,
)
from ..layers import GRU, LSTM, RNN
from ._cells import TFCellStack
from ._config import LayerConfig
from ._guards import loads_json, regular_file
from ._save_checks import check_config, compare_specs, header_specs, torch_dtype

__all__ = ["save", "load", "module_config", "module_from_config", "read_config", "FORMAT_VERSION", "CONFIG_KEY"]

FORMAT_VERSION = 1
CONFIG_KEY = "rnnkit.config"
_LAYERS: dict[str, type[nn.Module]] = {"RNN": RNN, "LSTM": LSTM, "GRU": GRU}
_TORCH_NN = {torch.nn.RNN: "RNN", torch.nn.LSTM: "LSTM", torch.nn.GRU: "GRU"}
_LEAVES: dict[str, type[RNNCell]] = {
    "BasicRNNCell": BasicRNNCell,
    "BasicLSTMCell": BasicLSTMCell,
    "LSTMCell": LSTMCell,
    "GRUCell": GRUCell,
    "LayerNormBasicLSTMCell": LayerNormBasicLSTMCell,
}
_KNOWN = sorted([*_LAYERS, *_LEAVES, "MultiRNNCell", "DropoutWrapper", "ResidualWrapper", "TFCellStack"])
# Other spellings of the named activations (F.relu is not torch.relu): all map to the same function.
_ACTIVATION_ALIASES = {
    torch.nn.functional.relu: "relu",
    torch.nn.functional.tanh: "tanh",
    torch.nn.functional.sigmoid: "sigmoid",
    torch.Tensor.tanh: "tanh",
    torch.Tensor.sigmoid: "sigmoid",
    torch.Tensor.relu: "relu",
}
_MAGIC = {
    b"PK\x03\x04": "a zip archive (a torch.save file or a .keras archive)",
    b"\x89HDF": "an HDF5 file (Keras weights?)",
    b"\x80": "a Python pickle (rnnkit never unpickles: it could run code)",
}


# -- module -> configuration ------------------------------------------------------------------------------
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


def _layer_config(module: nn.Module) -> dict[str, Any]:
    name = _TORCH_NN.get(type(module)) or type(module).__name__
    args = LayerConfig.from_module(module).layer_kwargs()
    args.update(batch_first=bool(module.batch_first), dropout=float(module.dropout))
    args.update(
        recurrent_dropout=float(getattr(module, "recurrent_dropout", 0.0)),
        zoneout=float(getattr(module, "zoneout", 0.0)),
    )
    return {"class": name, "args": args}


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
    if isinstance(cell, DropoutWrapper):
        _check_exact(cell, DropoutWrapper, where)
        if cell._state_filter is not default_state_filter:
            raise ValueError(
                f"rnnkit.convert.save: {where} has a custom dropout_state_filter_visitor, a function that is not "
                "serialisable: only the default filter can be saved"
            )
        args = {
            "input_keep_prob": cell.input_keep_prob,
            "output_keep_prob": cell.output_keep_prob,
            "state_keep_prob": cell.state_keep_prob,
            "variational_recurrent": cell.variational_recurrent,
            "seed": cell.seed,
        }
        return {"class": name, "args": args, "cell": _cell_config(cell.cell, f"{where}.cell ")}
    if isinstance(cell, ResidualWrapper):
        _check_exact(cell, ResidualWrapper, where)
        if cell.residual_fn is not None:
            raise ValueError(
                f"rnnkit.convert.save: {where} has a residual_fn, a function that is not serialisable: only the "
                "default residual (inputs + outputs) can be saved"
            )
        return {"class": name, "args": {}, "cell": _cell_config(cell.cell, f"{where}.cell ")}
    if type(cell) not in _LEAVES.values():
        raise TypeError(
            f"rnnkit.convert.save: cannot save a {name} at {owner or 'the top'}: rnnkit saves {_KNOWN} "
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
    if type(module) in _LAYERS.values() or type(module) in _TORCH_NN:
        config = _layer_config(module)
    elif isinstance(module, (RNN, LSTM, GRU, torch.nn.RNNBase)):
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


def _state_tensors(module: Any) -> dict[str, torch.Tensor]:
    if isinstance(module, TFCellStack):
        tensors = {}
        for side, cells in (("fw", module.cells_fw), ("bw", module.cells_bw)):
            for k, cell in enumerate(cells):
                tensors.update({f"{side}.{k}.{n}": t for n, t in cell.state_dict().items()})
        return tensors
    return dict(module.state_dict())


def save(module: Any, path: str | os.PathLike) -> None:
    """Save ``module``'s weights and configuration to a ``.safetensors`` file that `load` rebuilds it from.

    ``module``: an ``rnnkit.RNN/LSTM/GRU`` (or ``torch.nn.RNN/LSTM/GRU``), a TF-style cell tree, or a
    `TFCellStack`. Raises ``ValueError``/``TypeError`` naming what is not serialisable (a custom activation,
    a ``residual_fn``, a subclass) instead of writing a file that would not reload.

    Example::

        >>> save(rnnkit.MultiRNNCell([rnnkit.BasicLSTMCell(8, input_size=3), rnnkit.BasicLSTMCell(8)]), "s.safetensors")
    """
    from safetensors.torch import save_file

    modules = module.cells_fw + module.cells_bw if isinstance(module, TFCellStack) else [module]
    if any(parametrize.is_parametrized(m) for root in modules if isinstance(root, nn.Module) for m in root.modules()):
        raise ValueError(
            "rnnkit.convert.save: the module has parametrizations (weight_norm, spectral_norm, ...), whose functions "
            "a saved file cannot hold; bake them in first: torch.nn.utils.parametrize.remove_parametrizations"
        )
    config = module_config(module)
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in _state_tensors(module).items()}
    from .. import __version__

    metadata = {
        "format": "pt",
        "rnnkit.format": str(FORMAT_VERSION),
        "rnnkit.version": __version__,
        CONFIG_KEY: json.dumps(config, sort_keys=True),
    }
    save_file(tensors, os.fspath(path), metadata=metadata)


# -- file -> configuration and tensors --------------------------------------------------------------------
def _sniff(path: Path, who: str) -> None:
    """Refuse, with what it seems to be, a file that is not safetensors (8-byte header size, then JSON)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) == 9:
        (header_size,) = struct.unpack("<Q", head[:8])
        if header_size + 8 <= size and head[8:9] == b"{":
            return
    for magic, what in _MAGIC.items():
        if head.startswith(magic):
            raise ValueError(f"{who} is not a safetensors file: it looks like {what}")
    if len(head) < 9:
        raise ValueError(f"{who} is not a safetensors file ({size} bytes: too short)")
    raise ValueError(
        f"{who} is not a safetensors file (or is truncated): its first 8 bytes give a header of {header_size} bytes "
        f"in a file of {size}"
    )


def _read_header(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, tuple[str, tuple[int, ...]]], str]:
    """``(configuration, {tensor name: (dtype, shape)}, who)``: everything but the tensor data, all checked.

    ``who`` (``"rnnkit.convert.load: 'path'"``) starts every later error about this file.
    """
    path = regular_file(path, "rnnkit.convert.load")
    who = f"rnnkit.convert.load: {str(path)!r}"
    _sniff(path, who)
    metadata, specs = header_specs(path, who)
    if CONFIG_KEY not in metadata:
        raise ValueError(
            f"{who} is a safetensors file without rnnkit's configuration (metadata keys {sorted(metadata)}); it "
            "was not written by rnnkit.convert.save. Read its tensors with safetensors.torch.load_file and load "
            "them into a module you build"
        )
    version = metadata.get("rnnkit.format", "1")
    if not version.isdigit() or int(version) > FORMAT_VERSION:
        raise ValueError(
            f"{who} has rnnkit format {version[:20]!r}; this rnnkit reads format {FORMAT_VERSION} and older "
            "(upgrade rnnkit)"
        )
    config = loads_json(metadata[CONFIG_KEY], who, "the rnnkit configuration")
    if not isinstance(config, dict) or "class" not in config:
        raise ValueError(f"{who}: the rnnkit configuration has no 'class'")
    check_config(config, who)
    return config, specs, who


def _read_tensors(path: str | os.PathLike, who: str) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file whose header `_read_header` checked (so at most the file's size)."""
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            return {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open has no iteration)
    except Exception as err:  # safetensors raises its own SafetensorError, and OSError/ValueError for bad files
        raise ValueError(f"{who} is not a readable safetensors file: {err}") from None


def read_config(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The rnnkit configuration (parsed JSON, its structure checked) and the tensors of a file written by `save`."""
    config, _, who = _read_header(path)
    return config, _read_tensors(path, who)


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
        if name in ("DropoutWrapper", "ResidualWrapper"):
            inner = _build_cell(config.get("cell") or {}, dtype, f"{where}.cell")
            return (DropoutWrapper if name == "DropoutWrapper" else ResidualWrapper)(inner, **args)
        if name in _LEAVES:
            depth = config.get("input_depth")  # None: saved unbuilt, to build lazily on its first inputs
            return _LEAVES[name](**args, input_size=depth, dtype=dtype if depth is not None else None)
    except (TypeError, ValueError) as err:
        if str(err).startswith(where.split(": ")[0] + ": "):
            raise  # an inner cell's error, already complete
        raise ValueError(f"{where}: cannot rebuild the {name} from {args}: {err}") from None
    raise ValueError(f"{where}: unknown class {name!r}; rnnkit saves {_KNOWN}")


def module_from_config(
    config: dict[str, Any], dtype: torch.dtype = torch.float32, who: str = "rnnkit.convert.load"
) -> Any:
    """A new module (fresh weights) from `module_config`'s description; `load` then fills in the weights.

    ``who`` starts the error messages (`load` passes ``"rnnkit.convert.load: 'the file'"``). Under
    ``with torch.device("meta")`` this builds the shapes only, which `load` checks against the file first.
    """
    name = config.get("class")
    where = f"{who}: {name}"
    if name in _LAYERS:
        try:
            module = _LAYERS[name](**_args(config, where), dtype=dtype)
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


def load(path: str | os.PathLike, device: Any = None) -> Any:
    """Rebuild the module `save` wrote to ``path``: the same class, options, weights and training flag.

    Errors (``ValueError``, naming the file): a file that is not safetensors (a pickle, a zip, HDF5,
    truncated), a safetensors file without rnnkit's configuration, a configuration of the wrong structure,
    types or sizes, an unknown class, tensors that do not fit the configuration (names, shapes, dtypes).
    Everything is checked on the header and a ``meta``-device build before any tensor is read or any weight
    allocated, so a file costs at most about twice its size. ``device``: where to put the module (default CPU).

    Example::

        >>> cell = load("s.safetensors")       # the MultiRNNCell saved above, weights and all
        >>> outputs, state = rnnkit.dynamic_rnn(cell, torch.randn(2, 5, 3))
    """
    config, specs, who = _read_header(path)
    floats = {torch_dtype(dtype) for dtype, _ in specs.values()} - {None}
    dtype = floats.pop() if len(floats) == 1 else torch.float32
    with torch.device("meta"):  # shapes only: checked against the file before anything is allocated
        skeleton = module_from_config(config, dtype, who)
    compare_specs(_state_tensors(skeleton), specs, who)
    tensors = _read_tensors(path, who)
    # Building draws initial weights that the file then overwrites: keep the caller's random stream untouched.
    with torch.random.fork_rng(devices=[]):
        module = module_from_config(config, dtype, who)
    training = bool(config.get("training", False))
    if isinstance(module, TFCellStack):
        for side, cells in (("fw", module.cells_fw), ("bw", module.cells_bw)):
            for k, cell in enumerate(cells):
                prefix = f"{side}.{k}."
                cell.load_state_dict({n[len(prefix) :]: t for n, t in tensors.items() if n.startswith(prefix)})
                cell.train(training)
                if device is not None:
                    cell.to(device)
        return module
    module.load_state_dict(tensors, strict=True)
    module.train(training)
    if device is not None:
        module.to(device)
    return module
