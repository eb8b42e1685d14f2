"""rnnkit's command line: ``rnnkit explain``, ``rnnkit train``, ``rnnkit sample``, ``rnnkit convert``.

``main(argv)`` parses the arguments, runs the subcommand and returns its exit code. Bad input (a missing
data file, an impossible size, a checkpoint that does not match) is reported as one line on stderr with a
nonzero code (2 usage, 3 data, 4 checkpoint, 130 interrupted), never as a traceback.

Example::

    $ rnnkit explain "BasicRNNCell(128)" --input-shape 32,100
    $ rnnkit train --steps 200 --out runs/char
    $ rnnkit sample runs/char --prime "def " --length 200
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .errors import CLIError

__all__ = ["main", "build_parser", "CLIError"]


def build_parser() -> argparse.ArgumentParser:
    from . import conversion, explain, sample, train

    parser = argparse.ArgumentParser(
        prog="rnnkit",
        description="Explain, train and sample recurrent networks (TF1 cells and torch.nn-style layers).",
        epilog="exit codes: 0 ok, 2 bad usage, 3 bad data, 4 bad checkpoint, 130 interrupted (checkpoint saved)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    explain.add_parser(sub)
    train.add_parser(sub)
    sample.add_parser(sub)
    conversion.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.run(args)
    except CLIError as err:
        print(f"rnnkit {args.command}: error: {err}", file=sys.stderr)
        return err.code
    except BrokenPipeError:  # `rnnkit sample ... | head`
        return 0
