"""``rnnkit convert SRC DST``: move a recurrent model between file formats, exactly, and say what was found.

Formats, from the file names (or ``--from`` / ``--to``):

================  ============================================================  ==========  ===========
format            files                                                         read        write
================  ============================================================  ==========  ===========
``tf``            TF1 checkpoint: prefix (``model.ckpt``), ``.index``, folder    yes         no
``keras``         Keras 3 archive ``.keras``                                     yes         no
``keras-weights`` Keras 3 ``.weights.h5`` (``--keras-config`` for exact options)  yes         no
``torch``         ``torch.nn`` state dict ``.pt`` / ``.pth`` (weights_only)       yes         yes
``safetensors``   rnnkit's save format (weights + configuration)                 yes         yes
``onnx``          ONNX (native LSTM/GRU/RNN operators, or rnnkit's Scan)         yes         yes
================  ============================================================  ==========  ===========

Everything goes through an ``rnnkit.RNN/LSTM/GRU`` layer (the torch layout), or TF-style cells when a TF1
stack is no such layer (``bidirectional_dynamic_rnn`` over two ``MultiRNNCell`` s, ``proj_clip``). TF1 and
Keras models become ``batch_first`` layers (their inputs are ``(batch, time, depth)``); ``--no-batch-first``
overrides. A conversion that cannot be exact fails with the converter's reason: e.g. a TF GRU into a
``torch.nn`` ``.pt`` (reset gate before vs after the matmul), peepholes into ``.pt``. Exit codes: 0 done,
2 anything wrong (unknown extension, impossible conversion, unreadable file), with one line on stderr.

Example::

    $ rnnkit convert tests/fixtures/tf_ckpt/multi_basic_lstm lstm.pt
    $ rnnkit convert model.keras model.safetensors
    $ rnnkit convert model.safetensors model.onnx --sequence-lens
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["add_subparser", "add_parser", "run", "detect_format", "FORMATS"]

FORMATS = {
    "tf": "TF1 checkpoint",
    "keras": "Keras 3 archive",
    "keras-weights": "Keras 3 weights file",
    "torch": "torch.nn state dict",
    "safetensors": "rnnkit safetensors file",
    "onnx": "ONNX model",
}
_WRITABLE = ("safetensors", "torch", "onnx")
_SUFFIXES = {
    ".keras": "keras",
    ".h5": "keras-weights",
    ".hdf5": "keras-weights",
    ".pt": "torch",
    ".pth": "torch",
    ".safetensors": "safetensors",
    ".onnx": "onnx",
}
EXIT_USAGE = 2


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


# -- the argument parser ------------------------------------------------------------------------------------
def add_subparser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``convert`` on an argparse ``subparsers`` object; ``args.run(args)`` then runs it."""
    p = subparsers.add_parser(
        "convert",
        help="convert a recurrent model between TF1, Keras, torch, safetensors and ONNX files",
        description=__doc__.split("\nExample::")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  rnnkit convert model.ckpt lstm.pt --forget-bias 1.0\n"
        "  rnnkit convert model.keras model.safetensors\n"
        "  rnnkit convert lstm.pt lstm.onnx --sequence-lens --batch-first",
    )
    p.add_argument("src", help="the file to read (a TF1 checkpoint prefix or folder, .keras, .weights.h5, .pt, ...)")
    p.add_argument("dst", help="the file to write (.safetensors, .pt/.pth, .onnx)")
    p.add_argument("--from", dest="src_format", choices=sorted(FORMATS), help="format of SRC (default: from its name)")
    p.add_argument("--to", dest="dst_format", choices=sorted(FORMATS), help="format of DST (default: from its name)")
    p.add_argument(
        "--batch-first",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the written layer reads (batch, time, features) (default: yes for TF1/Keras sources, else as stored)",
    )
    tf = p.add_argument_group("TF1 checkpoints (options a checkpoint does not store)")
    tf.add_argument("--scope", help="the stack's variable scope (default: the only one found)")
    tf.add_argument("--forget-bias", type=float, help="LSTM forget bias (TF default 1.0; torch sources 0.0)")
    tf.add_argument("--cell-clip", type=float, help="LSTMCell cell_clip")
    tf.add_argument("--proj-clip", type=float, help="LSTMCell proj_clip")
    tf.add_argument("--activation", choices=["tanh", "relu"], default=None, help="cell activation (default tanh)")
    keras = p.add_argument_group("Keras files")
    keras.add_argument("--keras-config", help="the .keras file or config.json of a bare .weights.h5 file")
    keras.add_argument("--layers", help="comma-separated names of the recurrent layers to read")
    torch_group = p.add_argument_group("torch state dicts (.pt/.pth)")
    torch_group.add_argument("--mode", choices=["LSTM", "GRU", "RNN"], type=str.upper, help="default: from shapes")
    torch_group.add_argument("--hidden-size", type=int, help="checked against the shapes")
    torch_group.add_argument("--nonlinearity", choices=["tanh", "relu"], help="RNN nonlinearity (default tanh)")
    torch_group.add_argument(
        "--tf-gru", action="store_true", help="the GRU uses TF's math (reset_after=False), not torch's"
    )
    torch_group.add_argument("--key", help="the state dict's entry in a checkpoint dict, e.g. 'model' or 'model.rnn'")
    out = p.add_argument_group("writing")
    out.add_argument(
        "--as",
        dest="as_kind",
        choices=["layer", "cells"],
        help="safetensors: save an rnnkit layer (default when possible) or TF-style cells",
    )
    out.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    out.add_argument(
        "--implementation",
        choices=["auto", "native", "scan"],
        default="auto",
        help="ONNX: native LSTM/GRU/RNN operators, a Scan over rnnkit's step, or native when possible",
    )
    out.add_argument("--sequence-lens", action="store_true", help="ONNX: add a sequence_lens (batch,) int32 input")
    out.add_argument(
        "--no-initial-states", action="store_true", help="ONNX: no h_0/c_0 inputs (zeros); h_n/c_n stay outputs"
    )
    p.set_defaults(run=run)
    return p


add_parser = add_subparser  # rnnkit.cli's name for the same hook


# -- reading ------------------------------------------------------------------------------------------------
@dataclass
class _Model:
    """What a source holds: an rnnkit layer, or TF-style cells (``TFCellStack`` or a cell tree)."""

    layer: Any = None
    cells: Any = None
    notes: list[str] = field(default_factory=list)


def _layer_from(state: dict[str, torch.Tensor], config: Any, batch_first: bool) -> Any:
    from ._save import _LAYERS

    with torch.random.fork_rng(devices=[]):
        layer = _LAYERS[config.mode](**config.layer_kwargs(), batch_first=batch_first)
    layer.load_state_dict(state)
    return layer.eval()


def _read_tf(args: argparse.Namespace) -> _Model:
    from ._cells import cells_from_tf_variables
    from ._tf_checkpoint import read_tf_checkpoint
    from ._tf_stack import tf_to_torch
    from ._tf_variables import TF_DEFAULT_FORGET_BIAS, AssumedForgetBiasWarning

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
        return _Model(cells=cells, notes=notes)
    batch_first = True if args.batch_first is None else args.batch_first
    return _Model(layer=_layer_from(state, config, batch_first), cells=cells, notes=notes)


def _read_keras(args: argparse.Namespace) -> _Model:
    from ._keras_io import read_keras
    from ._keras_layout import keras_layers_to_torch

    names = [n.strip() for n in args.layers.split(",") if n.strip()] if args.layers else None
    layers = read_keras(args.src, config=args.keras_config, layer_names=names)
    notes = [f"Keras layer {layer.name!r} ({layer.class_name})" for layer in layers]
    state, config = keras_layers_to_torch(layers, target="rnnkit")
    batch_first = True if args.batch_first is None else args.batch_first
    return _Model(layer=_layer_from(state, config, batch_first), notes=notes)


def _read_torch(args: argparse.Namespace) -> _Model:
    from ._torch_layout import infer_config, load_torch_state_dict

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
    return _Model(layer=_layer_from(state, config, bool(args.batch_first)), notes=[f"{len(state)} tensors"])


def _read_safetensors(args: argparse.Namespace) -> _Model:
    from ._cells import TFCellStack
    from ._save import _LAYERS, load

    module = load(args.src)
    if type(module) in _LAYERS.values():
        if args.batch_first is not None:
            module.batch_first = args.batch_first
        return _Model(layer=module.eval())
    if isinstance(module, TFCellStack):
        for cell in module.cells_fw + module.cells_bw:
            cell.eval()
    else:
        module.eval()
    return _Model(cells=module)


def _read_onnx(args: argparse.Namespace) -> _Model:
    from ._onnx_export import load_onnx

    layer = load_onnx(args.src)
    if args.batch_first is not None:
        layer.batch_first = args.batch_first
    return _Model(layer=layer, notes=["weights read from the ONNX initializers (a forget bias stays folded)"])


_READERS = {
    "tf": _read_tf,
    "keras": _read_keras,
    "keras-weights": _read_keras,
    "torch": _read_torch,
    "safetensors": _read_safetensors,
    "onnx": _read_onnx,
}


# -- describing ---------------------------------------------------------------------------------------------
def _count(module: Any) -> int:
    return sum(p.numel() for p in module.parameters())


def _describe_layer(layer: Any) -> list[str]:
    lines = [f"rnnkit.{type(layer).__name__}({layer.extra_repr()}): {_count(layer):,} parameters"]
    directions = 2 if layer.bidirectional else 1
    for k in range(layer.num_layers):
        names = [n for ns in layer._all_weights[k * directions : (k + 1) * directions] for n in ns]
        tensors = [getattr(layer, n) for n in names]
        depth = tensors[0].shape[1]
        shapes = ", ".join(f"{n} {tuple(t.shape)}" for n, t in zip(names, tensors, strict=True))
        lines.append(
            f"  layer {k}: input {depth} -> hidden {layer.hidden_size}"
            f"{' x 2 directions' if directions == 2 else ''}, {sum(t.numel() for t in tensors):,} parameters "
            f"({shapes})"
        )
    return lines


def _describe_cell(cell: Any, label: str) -> list[str]:
    from ..cells import MultiRNNCell, RNNCellWrapper

    if isinstance(cell, MultiRNNCell):
        lines = [f"{label}MultiRNNCell of {len(cell.cells)} cells"]
        for k, child in enumerate(cell.cells):
            lines += _describe_cell(child, f"{label}  cell_{k}: ")
        return lines
    if isinstance(cell, RNNCellWrapper):
        return _describe_cell(cell.cell, f"{label}{type(cell).__name__} > ")
    units = getattr(cell, "num_units", "?")
    depth = cell.input_depth if cell.built else "unbuilt"
    count = f"{_count(cell):,} parameters" if cell.built else "no parameters yet"
    return [f"{label}{type(cell).__name__}(num_units={units}): input depth {depth}, {count}"]


def _describe_cells(cells: Any) -> list[str]:
    from ._cells import TFCellStack

    if isinstance(cells, TFCellStack):
        total = sum(_count(c) for c in cells.cells_fw + cells.cells_bw)
        lines = [f"TF-style cells, topology {cells.topology!r}, scope {cells.scope!r}: {total:,} parameters"]
        for side, group in (("fw", cells.cells_fw), ("bw", cells.cells_bw)):
            for k, cell in enumerate(group):
                lines += _describe_cell(cell, f"  {side}[{k}] ")
        return lines
    return _describe_cell(cells, "TF-style cell: ")


# -- writing ------------------------------------------------------------------------------------------------
def _as_layer(model: _Model, batch_first: bool | None, why: str) -> Any:
    if model.layer is not None:
        return model.layer
    from ._cells import cells_to_torch

    try:
        state, config = cells_to_torch(model.cells, target="rnnkit")
    except (TypeError, ValueError) as err:
        raise ConvertError(f"{why} needs an RNN/LSTM/GRU layer, and these cells are none: {err}") from None
    return _layer_from(state, config, True if batch_first is None else batch_first)  # TF runners are batch-major


def _torch_nn_state(layer: Any) -> tuple[dict[str, torch.Tensor], Any]:
    from ._config import LayerConfig

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
    if config.forget_bias:  # torch.nn has no forget bias: add it to the forget gate's block (i, f, g, o)
        if not config.bias:
            raise ConvertError(
                f"a torch.nn.LSTM state dict cannot carry forget_bias={config.forget_bias} without biases "
                "(bias=False); write .safetensors instead"
            )
        h = config.hidden_size
        for key in state:
            if key.startswith("bias_ih_l"):
                state[key][h : 2 * h] += config.forget_bias
        config = LayerConfig(**{**config.to_dict(), "forget_bias": 0.0})
    return state, config


def _write(model: _Model, args: argparse.Namespace, dst_format: str) -> list[str]:
    from ._cells import torch_to_cells
    from ._config import LayerConfig
    from ._save import save

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
        state, config = _torch_nn_state(layer)
        torch.save(state, dst)
        kwargs = ", ".join(f"{k}={v!r}" for k, v in config.torch_nn_kwargs().items())
        first = f", batch_first={bool(layer.batch_first)!r}" if layer.batch_first else ""
        return [f"wrote {dst}: torch.nn state dict for torch.nn.{config.mode}({kwargs}{first})"]
    if dst_format == "onnx":
        from ._onnx_export import DEFAULT_OPSET, export_onnx

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
        + ", ".join(f"{f} ({FORMATS[f]})" for f in _WRITABLE)
    )


def _write_atomically(model: _Model, args: argparse.Namespace, dst_format: str) -> list[str]:
    """``_write`` into a file beside DST, renamed over DST once whole: a failed write leaves DST as it was."""
    dst = Path(args.dst)
    tmp = dst.with_name(f".{dst.stem}.partial-{os.getpid()}{dst.suffix}")
    try:
        lines = _write(model, argparse.Namespace(**{**vars(args), "dst": str(tmp)}), dst_format)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return [line.replace(str(tmp), str(args.dst)) for line in lines]


# -- the command --------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    """Run ``rnnkit convert`` with parsed ``args``; prints what it found and wrote, returns the exit code."""
    try:
        src_format = args.src_format or detect_format(args.src, reading=True)
        dst_format = args.dst_format or detect_format(args.dst, reading=False)
        if dst_format not in _WRITABLE:
            raise ConvertError(
                f"writing {FORMATS[dst_format]} files is not supported; rnnkit writes "
                + ", ".join(f"{f} ({FORMATS[f]})" for f in _WRITABLE)
            )
        if Path(args.src).resolve() == Path(args.dst).resolve():
            raise ConvertError("SRC and DST are the same file")
        if not Path(args.src).exists() and src_format != "tf":
            raise ConvertError(f"no such file: {args.src!r}")
        model = _READERS[src_format](args)
        print(f"read {args.src} ({FORMATS[src_format]})")
        for note in model.notes:
            print(f"  {note}")
        lines = _describe_layer(model.layer) if model.layer is not None else _describe_cells(model.cells)
        print("found " + lines[0])
        for line in lines[1:]:
            print(line)
        for line in _write_atomically(model, args, dst_format):
            print(line)
        return 0
    except (ConvertError, ValueError, TypeError, KeyError, OSError, ImportError) as err:
        from ._guards import one_line

        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        # One line, whole, with no terminal escape codes or control characters (a file's bytes may reach it).
        print(f"rnnkit convert: error: {one_line(str(message))}", file=sys.stderr)
        return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    """``rnnkit convert`` on its own (for ``python -m rnnkit.convert._command`` and tests)."""
    parser = argparse.ArgumentParser(prog="rnnkit")
    add_subparser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
