"""``rnnkit sample``'s speed, characters per second, before and after a change.

    python -m benchmarks.sample_speed                 # this tree against BASE (the revision before streaming)
    python -m benchmarks.sample_speed --base REV

The character model of ``rnnkit train``'s defaults (``DEFAULTS["char"]``: an embedding of 32, two layers of 128, a
softmax over the vocabulary), once with TF cells (``--cell basic_lstm``, the default: a ``MultiRNNCell`` called per
character) and once with the torch-style layer (``--layer lstm``: ``step``), on CPU with one thread as ``rnnkit
sample`` runs (``--threads 1``). Each timed call is ``rnnkit.cli.sample.generate`` of ``LENGTH`` characters after a
one-character prime, greedy (``temperature 0``: no draw in the timing), with random weights (the speed does not
depend on them). Both revisions run in worker processes of their own (``benchmarks.compare``'s machinery), timed in
pairs, medians.
"""

from __future__ import annotations

import argparse
import random
import string
import sys

from . import compare

BASE = "8e7edda"
LENGTH = 200
VOCAB = "".join(sorted(set(string.printable)))
CORES = {"TF cells (--cell basic_lstm, the default)": None, "torch-style layer (--layer lstm)": "lstm"}


def _rows() -> list[tuple[str, object]]:
    import torch

    from rnnkit.cli.models import build_model
    from rnnkit.cli.sample import generate
    from rnnkit.cli.tasks import MODEL_KEYS
    from rnnkit.cli.train import COMMON, DEFAULTS

    torch.set_num_threads(1)
    options = {**COMMON, **DEFAULTS["char"]}
    rows = []
    for name, layer in CORES.items():
        core = {k: options.get(k) for k in MODEL_KEYS} | {"layer": layer}
        torch.manual_seed(0)
        model = build_model({"task": "char", "vocab": VOCAB, "embed_size": options["embed_size"], "core": core})

        def call(model=model) -> None:
            for _ in generate(model, VOCAB, "\n", LENGTH, 0.0, torch.Generator().manual_seed(0)):
                pass

        rows.append((name, call))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default=BASE)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        compare.serve(_rows())
        return 0
    shuffle = random.Random(0).shuffle
    with compare.base_tree(args.base) as tree:
        before = compare.Side(tree / "src", [], module="benchmarks.sample_speed")
        after = compare.Side(compare.ROOT / "src", [], module="benchmarks.sample_speed")
        try:
            print(f"| model (`rnnkit sample`, {LENGTH} characters, 1 thread) | before ({args.base}) chars/s | "
                  "after chars/s | speed-up |")  # fmt: skip
            print("|---|---:|---:|---:|")
            for k, name in enumerate(before.rows):
                t_before, t_after, ratio = compare.paired(before, after, k, args.reps, 0.5, shuffle, 0.02)
                print(f"| {name} | {LENGTH / t_before:,.0f} | {LENGTH / t_after:,.0f} | {1 / ratio:.1f}x |")
        finally:
            before.close()
            after.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
