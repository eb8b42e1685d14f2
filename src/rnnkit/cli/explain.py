"""``rnnkit explain``: every parameter, formula, gate order, state and shape of a recurrent stack.

Two vocabularies:

* torch.nn: ``rnnkit explain lstm --input-size 100 --hidden-size 20 --num-layers 3 --bidirectional
  --batch 2 --seq-len 5`` (also ``rnn``, ``gru``; ``--proj-size``, ``--no-bias``, ``--batch-first``);
* TF1: ``rnnkit explain "MultiRNNCell([BasicLSTMCell(128), BasicLSTMCell(128)])" --input-shape 32,100``
  (``(batch, input_depth)`` for one step, ``(batch, time, input_depth)`` for ``dynamic_rnn``).

The model is built on PyTorch's ``meta`` device: any size is explained instantly, without memory.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from ..describe import summary
from .errors import CLIError
from .registry import LAYER_TYPES, layer_class
from .tf_expr import parse_cell

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain",
        help="describe a recurrent stack: parameters, formulas, gate orders, states, shapes",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  rnnkit explain lstm --input-size 100 --hidden-size 20 --num-layers 3 --bidirectional "
        '--batch 2 --seq-len 5\n  rnnkit explain "MultiRNNCell([BasicLSTMCell(128), BasicLSTMCell(128)])" '
        "--input-shape 32,100 --diagram stack.svg",
    )
    p.add_argument("model", help="rnn | lstm | gru (torch.nn style), or a TF1 cell expression in quotes")
    torch_style = p.add_argument_group("torch.nn style (rnn, lstm, gru)")
    torch_style.add_argument("--input-size", type=int, help="features per time step (input_size)")
    torch_style.add_argument("--hidden-size", type=int, help="hidden_size")
    torch_style.add_argument("--num-layers", type=int, default=1)
    torch_style.add_argument("--bidirectional", action="store_true")
    torch_style.add_argument("--proj-size", type=int, default=0, help="LSTM only: project h to this size")
    torch_style.add_argument("--no-bias", action="store_true", help="bias=False")
    torch_style.add_argument("--batch-first", action="store_true")
    torch_style.add_argument("--nonlinearity", choices=["tanh", "relu"], default="tanh", help="RNN only")
    torch_style.add_argument("--batch", type=int, default=1, help="batch size for the shapes (default 1)")
    torch_style.add_argument("--seq-len", type=int, default=1, help="time steps for the shapes (default 1)")
    tf_style = p.add_argument_group("TF1 style (cell expressions)")
    tf_style.add_argument(
        "--input-shape", help="batch,input_depth (one step) or batch,time,input_depth (dynamic_rnn), e.g. 32,100"
    )
    p.add_argument(
        "--diagram", metavar="FILE", help="draw the unrolled stack to FILE.svg (or FILE.png with matplotlib)"
    )
    p.set_defaults(run=run)


def _positive(value: int | None, flag: str) -> int:
    if value is None:
        raise CLIError(f"{flag} is required for a torch.nn-style layer")
    if value <= 0:
        raise CLIError(f"{flag} must be a positive integer, got {value}")
    return value


def _layer(args: argparse.Namespace):
    mode = args.model.lower()
    i = _positive(args.input_size, "--input-size")
    h = _positive(args.hidden_size, "--hidden-size")
    for flag, v in (("--num-layers", args.num_layers), ("--batch", args.batch), ("--seq-len", args.seq_len)):
        _positive(v, flag)
    kwargs = {"bias": not args.no_bias, "batch_first": args.batch_first, "bidirectional": args.bidirectional}
    if args.proj_size:
        if mode != "lstm":
            raise CLIError(f"--proj-size is an LSTM option, not one of {mode}")
        kwargs["proj_size"] = args.proj_size
    if mode == "rnn":
        kwargs["nonlinearity"] = args.nonlinearity
    # rnnkit's own layer when this rnnkit has it; torch.nn's otherwise: the same contract and parameter names.
    cls = layer_class(mode) or getattr(nn, LAYER_TYPES[mode])
    try:
        module = cls(i, h, args.num_layers, device="meta", **kwargs)
    except (ValueError, TypeError) as err:
        raise CLIError(f"{LAYER_TYPES[mode]}: {err}") from None
    shape = (args.batch, args.seq_len, i) if args.batch_first else (args.seq_len, args.batch, i)
    return module, shape, f"formulas checked against {cls.__module__}.{cls.__name__}"


def _parse_shape(text: str | None) -> tuple[int, ...]:
    if not text:
        raise CLIError("--input-shape is required for a TF cell expression, e.g. --input-shape 32,100")
    try:
        shape = tuple(int(p) for p in text.replace("x", ",").split(","))
    except ValueError:
        raise CLIError(f"--input-shape: expected comma-separated positive integers, got {text!r}") from None
    if len(shape) not in (2, 3) or min(shape) <= 0:
        raise CLIError(f"--input-shape: expected batch,input_depth or batch,time,input_depth, got {text!r}")
    return shape


def run(args: argparse.Namespace) -> int:
    with torch.device("meta"):
        if args.model.lower() in LAYER_TYPES:
            module, shape, checked = _layer(args)
        else:
            shape = _parse_shape(args.input_shape)
            try:
                module = parse_cell(args.model)
            except ValueError as err:
                raise CLIError(str(err)) from None
            checked = "formulas checked against the built rnnkit cells"
        try:
            s = summary(module, shape)
        except (ValueError, TypeError) as err:
            raise CLIError(str(err)) from None
    print(s)
    print(f"\n({checked})")
    if args.diagram:
        try:
            s.diagram(args.diagram)
        except (ValueError, OSError) as err:
            raise CLIError(f"--diagram: {err}") from None
        print(f"diagram written to {args.diagram}")
    return 0
