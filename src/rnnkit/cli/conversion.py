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
import sys
from pathlib import Path
from typing import Any

from ..cells import MultiRNNCell, RNNCellWrapper
from ..convert.files import FORMATS, WRITABLE, ConvertError, detect_format, read_model, write_model
from ..convert.guards import one_line
from ..convert.tf_cells import TFCellStack
from .errors import EXIT_USAGE

__all__ = ["add_parser", "add_subparser", "run", "main", "detect_format", "FORMATS", "EXIT_USAGE"]


# -- the argument parser ------------------------------------------------------------------------------------
def add_subparser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``convert`` on an argparse ``subparsers`` object; ``args.run(args)`` then runs it."""
    examples = [
        "rnnkit convert model.ckpt lstm.pt --forget-bias 1.0",
        "rnnkit convert model.keras model.safetensors",
        "rnnkit convert lstm.pt lstm.onnx --sequence-lens --batch-first",
    ]
    text = {  # the module docstring above its example is the command's description
        "help": "convert a recurrent model between TF1, Keras, torch, safetensors and ONNX files",
        "description": __doc__.split("\nExample::")[0] if __doc__ else None,
        "epilog": "examples:" + "".join(f"\n  {line}" for line in examples),
    }
    p = subparsers.add_parser("convert", formatter_class=argparse.RawDescriptionHelpFormatter, **text)
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
    if isinstance(cells, TFCellStack):
        total = sum(_count(c) for c in cells.cells_fw + cells.cells_bw)
        lines = [f"TF-style cells, topology {cells.topology!r}, scope {cells.scope!r}: {total:,} parameters"]
        for side, group in (("fw", cells.cells_fw), ("bw", cells.cells_bw)):
            for k, cell in enumerate(group):
                lines += _describe_cell(cell, f"  {side}[{k}] ")
        return lines
    return _describe_cell(cells, "TF-style cell: ")


# -- the command --------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    """Run ``rnnkit convert`` with parsed ``args``; prints what it found and wrote, returns the exit code."""
    try:
        src_format = args.src_format or detect_format(args.src, reading=True)
        dst_format = args.dst_format or detect_format(args.dst, reading=False)
        if dst_format not in WRITABLE:
            raise ConvertError(
                f"writing {FORMATS[dst_format]} files is not supported; rnnkit writes "
                + ", ".join(f"{f} ({FORMATS[f]})" for f in WRITABLE)
            )
        if Path(args.src).resolve() == Path(args.dst).resolve():
            raise ConvertError("SRC and DST are the same file")
        if not Path(args.src).exists() and src_format != "tf":
            raise ConvertError(f"no such file: {args.src!r}")
        model = read_model(args, src_format)
        print(f"read {args.src} ({FORMATS[src_format]})")
        for note in model.notes:
            print(f"  {note}")
        lines = _describe_layer(model.layer) if model.layer is not None else _describe_cells(model.cells)
        print("found " + lines[0])
        for line in lines[1:]:
            print(line)
        for line in write_model(model, args, dst_format):
            print(line)
        return 0
    except (ConvertError, ValueError, TypeError, KeyError, OSError, ImportError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        # One line, whole, with no terminal escape codes or control characters (a file's bytes may reach it).
        print(f"rnnkit convert: error: {one_line(str(message))}", file=sys.stderr)
        return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    """``rnnkit convert`` on its own (for ``python -m rnnkit.cli.conversion`` and tests)."""
    parser = argparse.ArgumentParser(prog="rnnkit")
    add_subparser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
