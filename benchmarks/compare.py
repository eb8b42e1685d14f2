"""Before and after a change, row by row: rnnkit at a base revision against rnnkit in this tree.

    python -m benchmarks.compare --base REV            # every row of benchmarks.run; writes docs/benchmark-change.md
    python -m benchmarks.compare --base REV --quick    # two shapes, fewer repetitions, nothing written
    python -m benchmarks.compare --base REV --runs 3   # three whole comparisons; each row's median of the three
    python -m benchmarks.compare --base REV --bf16     # the bf16 table's rnnkit rows (docs/benchmark-change-bf16.md)

Two rnnkits cannot live in one process (the compiled kernels register one ``torch.ops.rnnkit``), so each side
runs in a worker process of its own: the base revision checked out into a temporary ``git worktree``, this tree
as it is. Both workers build the same cases from *this* tree's ``benchmarks.run`` (the same configurations,
shapes, seeds and inputs) and time only rnnkit's callable. The coordinator asks them in turns, sample by sample
(the order within each pair shuffled, seeded), so drift of the shared machine falls on both sides alike; each
row's figure is the median of the paired ratios after/before, next to each side's median time. Each side's sample
starts after an idle pause (``--settle``, 10 ms): the other worker's OpenMP threads spin for a while after its
calls. On a shared machine a row's ratio still moves by a few percent between whole runs (other tenants' load
comes in bursts longer than a pair): with ``--runs N`` each row reports every run's ratio and their median, which
is the figure held against the 3% bound.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 1.03  # the change's bound: no row more than 3% slower
# An idle pause before each side's sample: after its calls a worker's OpenMP threads spin for a while, and on a
# machine of two cores they would share them with the other side's first calls (measured: a row of 0.17 ms timed
# at 0.22 ms without the pause, and its ratio swinging by 10% between runs).
SETTLE_S = 0.01


# ---- the worker: one rnnkit, every case, timed on request -------------------------------------------


def _worker(quick: bool, filter_text: str, shape_text: str, bf16: bool = False) -> None:
    import torch

    from benchmarks import run as bench

    torch.manual_seed(0)
    bench.machine()  # builds the extension before any timing
    if bf16:
        serve(_bf16_rows(filter_text, shape_text))
        return
    plan = [(s, False) for s in (bench.QUICK_SHAPES if quick else bench.INFERENCE_SHAPES)]
    plan += [(s, True) for s in (bench.QUICK_SHAPES[:1] if quick else bench.TRAINING_SHAPES)]
    rows: list[tuple[dict[str, Any], Any]] = []
    for shape, train in plan:
        if shape_text and shape_text != ",".join(map(str, shape)):
            continue
        for case in bench.cases(shape):
            if filter_text and filter_text not in case.config:
                continue
            rows.append((_row_id(case.config, shape, train), _callable(bench, case, train)))
    serve(rows)


def _bf16_rows(filter_text: str, shape_text: str) -> list[tuple[dict[str, Any], Callable[[], None]]]:
    """rnnkit's side of every whole-sequence row of the bf16 table (``benchmarks.bf16``): its model and input in
    bfloat16, timed as that table times them."""
    import torch

    from benchmarks import bf16
    from benchmarks import run as bench

    rows = []
    for train in (False, True):
        for shape in bf16.SHAPES:
            if shape_text and shape_text != ",".join(map(str, shape)):
                continue
            for spec in bf16.SPECS:
                if filter_text and filter_text not in spec.config:
                    continue
                T, B, I, H = shape
                torch.manual_seed(0)
                x = torch.randn(T, B, I, dtype=bf16.BF16)
                model = spec.rnnkit(I, H).to(bf16.BF16)
                run = bench.timed_call(lambda m=model, x=x: m(x), list(model.parameters()), train)
                rows.append((_row_id(f"bf16 {spec.config}", shape, train), run))
    return rows


def serve(rows: list[tuple[Any, Callable[[], Any]]]) -> None:
    """A worker's side of the protocol: print the rows' ids (JSON, one line), then for each request ``[k, calls]``
    read on stdin run row ``k``'s callable once untimed and ``calls`` times timed, and print the seconds per call.
    Shared by every benchmark that times a base revision in a worker (``benchmarks.streaming`` too)."""
    out = sys.stdout
    sys.stdout = sys.stderr  # (nothing but the protocol on the pipe)
    print(json.dumps([r for r, _ in rows]), file=out, flush=True)
    for line in sys.stdin:
        k, calls = json.loads(line)
        fn = rows[k][1]
        fn()  # untimed: this side's own state in the caches
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        print(json.dumps((time.perf_counter() - t) / calls), file=out, flush=True)


def _row_id(config: str, shape: tuple[int, ...], train: bool) -> dict[str, Any]:
    return {"config": config, "shape": ", ".join(map(str, shape)), "mode": "fwd+bwd" if train else "inference"}


def _callable(bench: Any, case: Any, train: bool) -> Any:
    import torch

    if train:

        def run() -> None:
            for p in case.params:
                p.grad = None
            bench._loss(case.rnnkit()).backward()

        return run

    def infer() -> None:
        with torch.no_grad():
            case.rnnkit()

    return infer


# ---- the coordinator -------------------------------------------------------------------------------


class Side:
    """One rnnkit in a worker process: ``python -m <module> --worker <args>`` with ``src`` first on its path (the
    benchmark code itself from this tree); ``time(k, calls)`` asks it for row ``k``'s seconds per call."""

    def __init__(self, src: Path, args: list[str], module: str = "benchmarks.compare"):
        env = dict(os.environ, PYTHONPATH=f"{src}{os.pathsep}{ROOT}")
        cmd = [sys.executable, "-m", module, "--worker", *args]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.rows = json.loads(self._read())

    def _read(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmarks.compare: a worker ended early (exit {self.proc.wait()})")
        return line

    def time(self, k: int, calls: int) -> float:
        self.proc.stdin.write(json.dumps((k, calls)) + "\n")
        self.proc.stdin.flush()
        return json.loads(self._read())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def compare(
    base_src: Path, reps: int, quick: bool, filter_text: str, shape_text: str = "", sample_s: float = 0.02,
    settle_s: float = SETTLE_S, bf16: bool = False,
) -> list[dict[str, Any]]:
    worker_args = (["--quick"] if quick else []) + (["--filter", filter_text] if filter_text else [])
    worker_args += ["--bf16"] if bf16 else []
    worker_args += ["--shape", shape_text] if shape_text else []
    before, after = Side(base_src, worker_args), Side(ROOT / "src", worker_args)
    try:
        if before.rows != after.rows:
            raise RuntimeError("benchmarks.compare: the two sides built different cases")
        shuffle = random.Random(0).shuffle
        results = []
        for k, row in enumerate(after.rows):
            t_before, t_after, ratio = paired(before, after, k, reps, sample_s, shuffle, settle_s)
            result = dict(row, before=t_before * 1e3, after=t_after * 1e3, ratio=ratio)
            results.append(result)
            print(
                f"{row['config'][:58]:58s} {row['shape']:>17s} {row['mode']:9s} "
                f"{result['before']:9.3f} -> {result['after']:9.3f} ms  x{result['ratio']:.3f}",
                flush=True,
            )
        return results
    finally:
        before.close()
        after.close()


def paired(
    before: Side, after: Side, k: int, reps: int, sample_s: float, shuffle: Callable[[list[Any]], None],
    settle_s: float = 0.0,
) -> tuple[float, float, float]:
    """Row ``k`` timed on both sides in ``reps`` pairs (order within a pair shuffled): each side's median seconds
    per call and the median of the paired ratios after / before. ``settle_s``: an idle pause before each side's
    sample, for calls of a few hundred µs whose OpenMP threads spin after them (the other worker's spinning threads
    would otherwise share the cores with the side being timed)."""
    one = max(before.time(k, 1), after.time(k, 1))
    calls = max(1, min(50, int(sample_s / max(one, 1e-6))))
    t_before, t_after, pairs = [], [], []
    for _ in range(reps):
        sides = [("before", before), ("after", after)]
        shuffle(sides)
        got = {}
        for name, side in sides:
            if settle_s:
                time.sleep(settle_s)
            got[name] = side.time(k, calls)
        t_before.append(got["before"])
        t_after.append(got["after"])
        pairs.append(got["after"] / got["before"])
    return statistics.median(t_before), statistics.median(t_after), statistics.median(pairs)


@contextlib.contextmanager
def base_tree(rev: str) -> Iterator[Path]:
    """``rev`` checked out (detached) into a temporary ``git worktree`` of this repository, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="rnnkit-base-") as tmp:
        tree = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(tree), rev], cwd=ROOT, check=True)
        try:
            yield tree
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)


def table(runs: list[list[dict[str, Any]]]) -> tuple[str, list[dict[str, Any]]]:
    """The markdown table of one or more whole runs, and each row's merged figures (medians over the runs)."""
    merged = []
    for rows in zip(*runs, strict=True):
        row = dict(rows[0], ratios=[r["ratio"] for r in rows])
        row["before"] = statistics.median(r["before"] for r in rows)
        row["after"] = statistics.median(r["after"] for r in rows)
        row["ratio"] = statistics.median(row["ratios"])
        merged.append(row)
    per_run = " | ".join(f"run {k + 1}" for k in range(len(runs)))
    lines = [
        f"| config | T, B, I, H | mode | before ms | after ms | {per_run} | after / before | within 3% |",
        "|---|---|---|---:|---:|" + "---:|" * len(runs) + "---:|:---:|",
    ]
    for r in merged:
        ok = "yes" if r["ratio"] <= LIMIT else "**no**"
        ratios = " | ".join(f"{x:.3f}" for x in r["ratios"])
        lines.append(
            f"| {r['config']} | {r['shape']} | {r['mode']} | {r['before']:.3f} | {r['after']:.3f} | {ratios} | "
            f"**{r['ratio']:.3f}** | {ok} |"
        )
    return "\n".join(lines) + "\n", merged


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", help="the git revision before the change")
    ap.add_argument("--quick", action="store_true", help="two shapes, fewer repetitions, nothing written")
    ap.add_argument("--reps", type=int, default=None, help="timed pairs per row (median)")
    ap.add_argument("--runs", type=int, default=1, help="whole comparisons; each row reports their median")
    ap.add_argument("--filter", default="", help="only configs containing this text")
    ap.add_argument("--shape", default="", help="only this shape, written T,B,I,H (e.g. 50,64,512,512)")
    ap.add_argument("--settle", type=float, default=SETTLE_S, help="idle seconds before each side's sample")
    ap.add_argument("--bf16", action="store_true", help="the bf16 table's whole-sequence rows instead")
    ap.add_argument("--out", default=None, help="the table's file (docs/benchmark-change[-bf16].md)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _worker(args.quick, args.filter, args.shape.replace(" ", ""), args.bf16)
        return 0
    out = args.out or str(ROOT / "docs" / ("benchmark-change-bf16.md" if args.bf16 else "benchmark-change.md"))
    if not args.base:
        ap.error("--base REV is required")
    reps = args.reps or (7 if args.quick else 15)
    started = datetime.datetime.now()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    with base_tree(args.base) as tree:
        load0 = os.getloadavg()
        runs = [
            compare(
                tree / "src", reps, args.quick, args.filter, args.shape.replace(" ", ""), settle_s=args.settle,
                bf16=args.bf16,
            )
            for _ in range(args.runs)
        ]
        load1 = os.getloadavg()
    md, results = table(runs)
    worst = max(results, key=lambda r: r["ratio"])
    verdict = (
        f"Slowest row: {worst['config']} ({worst['shape']}, {worst['mode']}) at x{worst['ratio']:.3f}; "
        f"{sum(r['ratio'] > LIMIT for r in results)} of {len(results)} rows beyond x{LIMIT}.\n"
    )
    print()
    print(md)
    print(verdict)
    if not args.quick:
        doc = (
            "# Benchmarks: before and after a change\n\n"
            f"Produced by `python -m benchmarks.compare --base {args.base}{' --bf16' if args.bf16 else ''}` on "
            f"{started:%Y-%m-%d %H:%M}: rnnkit at "
            f"`{args.base}` (before) against the tree at `{head.stdout.strip()}` plus its uncommitted changes "
            f"(after): {args.runs} whole run(s), {reps} paired samples per row in each, the two sides timed in turns "
            f"in two worker processes, {args.settle:g} s idle before each sample; *after / before* is the median "
            "over the runs of each run's median ratio. "
            f"Load average before/after: {load0[0]:.2f} / {load1[0]:.2f}.\n\n" + md + "\n" + verdict
        )
        Path(out).write_text(doc, encoding="utf-8")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
