"""Model files by format, for ``rnnkit convert`` and Python: tell a file's format, read it into an rnnkit layer
(or TF-style cells), write a layer or cells as another format, atomically.

`FORMATS` names them (``tf``, ``keras``, ``keras-weights``, ``torch``, ``safetensors``, ``onnx``; the table of
files and directions is ``rnnkit convert --help``); `WRITABLE` are those rnnkit writes.

`read_model` and `write_model` take the command's options as attributes of one object (an
``argparse.Namespace`` from ``rnnkit convert``'s parser: ``src``, ``dst``, ``batch_first``, ``forget_bias`` ...).

Example::

    >>> detect_format("model.weights.h5", reading=True), detect_format("lstm.pt", reading=False)
    ('keras-weights', 'torch')
    >>> state, cfg = torch_nn_state_dict(rnnkit.LSTM(3, 4, forget_bias=1.0))   # folded into bias_ih's f block
    >>> cfg.forget_bias, tuple(state["bias_ih_l0"].shape)
    (0.0, (16,))
"""

from __future__ import annotations

import argparse
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..gates import gate_block
from ..saving import load, save
from ._keras_io import read_keras
from ._keras_layout import keras_layers_to_torch
from ._onnx_export import DEFAULT_OPSET, export_onnx, load_onnx
from ._tf_checkpoint import read_tf_checkpoint
from ._tf_stack import tf_to_torch
from ._tf_variables import TF_DEFAULT_FORGET_BIAS, AssumedForgetBiasWarning
from ._torch_layout import infer_config, load_torch_state_dict
from .config import LAYERS, LayerConfig, layer_from_state_dict
from .tf_cells import TFCellStack, cells_from_tf_variables, cells_to_torch, torch_to_cells

__all__ = [
    "FORMATS",
    "WRITABLE",
    "ConvertError",
    "ModelFile",
    "detect_format",
    "read_model",
    "write_model",
    "torch_nn_state_dict",
]

FORMATS = {
    "tf": "TF1 checkpoint",
    "keras": "Keras 3 archive",
    "keras-weights": "Keras 3 weights file",
    "torch": "torch.nn state dict",
    "safetensors": "rnnkit safetensors file",
    "onnx": "ONNX model",
}
WRITABLE = ("safetensors", "torch", "onnx")
_SUFFIXES = {
    ".keras": "keras",
    ".h5": "keras-weights",
    ".hdf5": "keras-weights",
    ".pt": "torch",
    ".pth": "torch",
    ".safetensors": "safetensors",
    ".onnx": "onnx",
}


class ConvertError(ValueError):
    """A problem the command reports as one line and exit code 2."""


def detect_format(path: str | os.PathLike, *, reading: bool) -> str:
    """The format of ``path`` from its name (and, for TF1 checkpoints, the files beside it)."""
    p = Path(path)
    name = p.name.lower()
    if name.endswith(".weights.h5"):
        return "keras-weights"
    if p.suffix.lower() in _SUFFIXES:
        return _SUFFIXES[p.suffix.lower()]
    if reading and (
        p.is_dir() or name.endswith(".index") or ".data-" in name or Path(f"{p}.index").is_file()
    ):  # fmt: skip
        return "tf"
    known = ", ".join(sorted(_SUFFIXES)) + ", or a TF1 checkpoint prefix/folder"
    raise ConvertError(
        f"cannot tell the format of {str(path)!r} from its name (known: {known}); pass "
        f"{'--from' if reading else '--to'} {{{','.join(FORMATS)}}}"
    )


# -- reading ------------------------------------------------------------------------------------------------
@dataclass
class ModelFile:
    """What a model file holds: an rnnkit layer, or TF-style cells (``TFCellStack`` or a cell tree), and notes on
    what reading it found."""

    layer: Any = None
    cells: Any = None
    notes: list[str] = field(default_factory=list)


def _layer_from(state: dict[str, torch.Tensor], config: LayerConfig, batch_first: bool) -> Any:
    return layer_from_state_dict(state, config, batch_first=batch_first)


def _read_tf(args: argparse.Namespace) -> ModelFile:

    variables = read_tf_checkpoint(args.src)
    options = {
        "forget_bias": args.forget_bias,
        "cell_clip": args.cell_clip,
        "proj_clip": args.proj_clip,
        "activation": args.activation or "tanh",
    }
    notes = [f"{len(variables)} variables in the checkpoint"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cells = cells_from_tf_variables(variables, args.scope, **options)
    for caught_warning in caught:  # the report shows the assumed forget bias; any other warning goes on as it was
        if issubclass(caught_warning.category, AssumedForgetBiasWarning):
            notes.append(f"warning: {caught_warning.message}")
        else:
            warnings.warn(caught_warning.message, caught_warning.category, stacklevel=2)
    options["forget_bias"] = TF_DEFAULT_FORGET_BIAS if args.forget_bias is None else args.forget_bias
    try:
        state, config = tf_to_torch(variables, args.scope, target="rnnkit", **options)
    except ValueError as err:  # no torch-layout layer computes it: keep the cells
        notes.append(f"kept as TF-style cells: {err}")
        return ModelFile(cells=cells, notes=notes)
    batch_first = True if args.batch_first is None else args.batch_first
    return ModelFile(layer=_layer_from(state, config, batch_first), cells=cells, notes=notes)


def _read_keras(args: argparse.Namespace) -> ModelFile:

    names = [n.strip() for n in args.layers.split(",") if n.strip()] if args.layers else None
    layers = read_keras(args.src, config=args.keras_config, layer_names=names)
    notes = [f"Keras layer {layer.name!r} ({layer.class_name})" for layer in layers]
    state, config = keras_layers_to_torch(layers, target="rnnkit")
    batch_first = True if args.batch_first is None else args.batch_first
    return ModelFile(layer=_layer_from(state, config, batch_first), notes=notes)


def _read_torch(args: argparse.Namespace) -> ModelFile:

    state = load_torch_state_dict(args.src, key=args.key)
    config = infer_config(
        state,
        args.mode,
        nonlinearity=args.nonlinearity or "tanh",
        reset_after=not args.tf_gru,
        forget_bias=args.forget_bias or 0.0,
        cell_clip=args.cell_clip,
    )
    if args.hidden_size is not None and args.hidden_size != config.hidden_size:
        raise ConvertError(
            f"--hidden-size {args.hidden_size} does not match the state dict, whose shapes give hidden_size "
            f"{config.hidden_size}"
        )
    return ModelFile(layer=_layer_from(state, config, bool(args.batch_first)), notes=[f"{len(state)} tensors"])


def _read_safetensors(args: argparse.Namespace) -> ModelFile:

    module = load(args.src)
    if type(module) in LAYERS.values():
        if args.batch_first is not None:
            module.batch_first = args.batch_first
        return ModelFile(layer=module.eval())
    if isinstance(module, TFCellStack):
        for cell in module.cells_fw + module.cells_bw:
            cell.eval()
    else:
        module.eval()
    return ModelFile(cells=module)


def _read_onnx(args: argparse.Namespace) -> ModelFile:

    layer = load_onnx(args.src)
    if args.batch_first is not None:
        layer.batch_first = args.batch_first
    return ModelFile(layer=layer, notes=["weights read from the ONNX initializers (a forget bias stays folded)"])


_READERS: dict[str, Any] = {
    "tf": _read_tf,
    "keras": _read_keras,
    "keras-weights": _read_keras,
    "torch": _read_torch,
    "safetensors": _read_safetensors,
    "onnx": _read_onnx,
}


def read_model(args: argparse.Namespace, src_format: str) -> ModelFile:
    """Read ``args.src`` as ``src_format`` (a key of `FORMATS`), with the command's options in ``args``."""
    return _READERS[src_format](args)


# -- writing ------------------------------------------------------------------------------------------------
def _as_layer(model: ModelFile, batch_first: bool | None, why: str) -> Any:
    if model.layer is not None:
        return model.layer

    try:
        state, config = cells_to_torch(model.cells, target="rnnkit")
    except (TypeError, ValueError) as err:
        raise ConvertError(f"{why} needs an RNN/LSTM/GRU layer, and these cells are none: {err}") from None
    return _layer_from(state, config, True if batch_first is None else batch_first)  # TF runners are batch-major


def torch_nn_state_dict(layer: Any) -> tuple[dict[str, torch.Tensor], LayerConfig]:
    """A ``torch.nn.LSTM/GRU/RNN`` state dict computing ``layer`` (a copy), and its `LayerConfig`.

    A forget bias is folded into ``bias_ih``'s forget block; options ``torch.nn`` lacks (peepholes, ``cell_clip``,
    layer norm, TF's GRU, zoneout) raise `ConvertError` naming them.
    """

    config = LayerConfig.from_module(layer)
    state = {k: v.detach().clone() for k, v in layer.state_dict().items()}
    # What torch.nn lacks comes first (a forget bias folds into the biases, if any, so it is no reason here).
    reasons = LayerConfig(**{**config.to_dict(), "forget_bias": 0.0}).torch_nn_incompatibilities()
    if getattr(layer, "zoneout", 0.0):  # not in LayerConfig (no parameters), yet it changes the eval function
        reasons.append(f"zoneout={layer.zoneout} (torch.nn has no zoneout; its eval output blends in the old state)")
    if reasons:
        raise ConvertError(
            f"no torch.nn.{config.mode} computes this model: " + "; ".join(reasons) + ". Write .safetensors "
            "(rnnkit's format keeps every option) or .onnx instead"
        )
    if config.forget_bias:  # torch.nn has no forget bias: add it to the forget gate's block
        if not config.bias:
            raise ConvertError(
                f"a torch.nn.LSTM state dict cannot carry forget_bias={config.forget_bias} without biases "
                "(bias=False); write .safetensors instead"
            )
        forget = gate_block(4 * config.hidden_size, "LSTM", "torch", "f")
        for key in state:
            if key.startswith("bias_ih_l"):
                state[key][forget] += config.forget_bias
        config = LayerConfig(**{**config.to_dict(), "forget_bias": 0.0})
    return state, config


def _write(model: ModelFile, args: argparse.Namespace, dst_format: str) -> list[str]:

    dst = args.dst
    if dst_format == "safetensors":
        if args.as_kind == "cells" or (args.as_kind is None and model.layer is None):
            cells = model.cells
            if cells is None:
                layer = model.layer
                if getattr(layer, "zoneout", 0.0):  # no parameters, so torch_to_cells would drop it silently
                    raise ConvertError(
                        f"--as cells: zoneout={layer.zoneout}: no TF1 cell has zoneout (its eval output blends in "
                        "the old state); save the layer instead (--as layer)"
                    )
                try:
                    cells = torch_to_cells(layer.state_dict(), LayerConfig.from_module(layer))
                except (TypeError, ValueError) as err:
                    raise ConvertError(f"--as cells: {err}") from None
            save(cells, dst)
            return [f"wrote {dst}: rnnkit save format, TF-style cells (load with rnnkit.convert.load)"]
        layer = _as_layer(model, args.batch_first, "--as layer")
        save(layer, dst)
        return [f"wrote {dst}: rnnkit save format, rnnkit.{type(layer).__name__} (load with rnnkit.convert.load)"]
    if dst_format == "torch":
        layer = _as_layer(model, args.batch_first, "a torch.nn state dict")
        state, config = torch_nn_state_dict(layer)
        torch.save(state, dst)
        kwargs = ", ".join(f"{k}={v!r}" for k, v in config.torch_nn_kwargs().items())
        first = f", batch_first={bool(layer.batch_first)!r}" if layer.batch_first else ""
        return [f"wrote {dst}: torch.nn state dict for torch.nn.{config.mode}({kwargs}{first})"]
    if dst_format == "onnx":
        layer = _as_layer(model, args.batch_first, "ONNX export")
        model_proto = export_onnx(
            layer,
            dst,
            sequence_lens=args.sequence_lens,
            initial_states=not args.no_initial_states,
            implementation=args.implementation,
            opset=args.opset or DEFAULT_OPSET,
        )
        kinds = sorted({n.op_type for n in model_proto.graph.node if n.op_type in ("LSTM", "GRU", "RNN", "Scan")})
        inputs = ", ".join(i.name for i in model_proto.graph.input)
        outputs = ", ".join(o.name for o in model_proto.graph.output)
        return [f"wrote {dst}: ONNX opset {model_proto.opset_import[0].version}, {'/'.join(kinds)} ops; "
                f"inputs {inputs}; outputs {outputs}"]  # fmt: skip
    raise ConvertError(
        f"writing {FORMATS[dst_format]} files is not supported; rnnkit writes "
        + ", ".join(f"{f} ({FORMATS[f]})" for f in WRITABLE)
    )


def write_model(model: ModelFile, args: argparse.Namespace, dst_format: str) -> list[str]:
    """Write ``model`` to ``args.dst`` as ``dst_format``; returns lines saying what was written.

    Written into a file beside ``args.dst``, renamed over it once whole: a failed write leaves it as it was.
    """
    dst = Path(args.dst)
    tmp = dst.with_name(f".{dst.stem}.partial-{os.getpid()}{dst.suffix}")
    try:
        lines = _write(model, argparse.Namespace(**{**vars(args), "dst": str(tmp)}), dst_format)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return [line.replace(str(tmp), str(args.dst)) for line in lines]


