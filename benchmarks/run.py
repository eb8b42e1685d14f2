"""rnnkit's benchmark suite: one command, one run, one markdown table.

    python -m benchmarks.run            # full table, also written to docs/benchmarks.md
    python -m benchmarks.run --quick    # two shapes, fewer repetitions, nothing written
    python -m benchmarks.run --only streaming   # one of the extra tables (streaming, bf16) alone, nothing written

Each row times rnnkit against ``torch.nn`` and against a Python loop over the equivalent cell
(``nn.LSTMCell``/``nn.GRUCell``/``nn.RNNCell`` for torch's math, rnnkit's reference loop over the
TF cell otherwise), in one process, measuring the three round-robin so that noise from other
processes falls on all of them alike. Reported per row: medians in ms, the ratio rnnkit/baseline,
microseconds per time step, achieved GFLOP/s (2·T·B·G·H·(I+R) forward FLOPs plus the projection,
3x for forward+backward) next to the machine's measured float32 matmul peak, and the bytes autograd
keeps for backward (see ``saved_bytes``).

Inference runs under ``torch.no_grad()``; forward+backward is ``out.sum() + final state`` backward.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import rnnkit
from rnnkit import engine

from . import bf16, streaming, user_cells

INFERENCE_SHAPES = [(100, 1, 64, 128), (100, 32, 128, 256), (50, 64, 512, 512), (200, 16, 256, 256)]
TRAINING_SHAPES = [(100, 1, 64, 128), (200, 16, 256, 256)]
QUICK_SHAPES = [(100, 1, 64, 128), (200, 16, 256, 256)]


# ---- measuring --------------------------------------------------------------------------------


def matmul_peak(n: int = 1024, reps: int = 10) -> float:
    """The machine's float32 matmul throughput in GFLOP/s (``n x n @ n x n``, all torch threads, median)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def round_robin(
    fns: list[Callable[[], Any] | None], reps: int, budget_s: float, sample_s: float = 0.01, settle_s: float = 0.0,
    warm: int = 1,
) -> list[float | None]:
    """Median seconds per call of each function, timed in turns after two warm-up calls.

    In each round (order shuffled, seeded) every function runs once untimed, then ``n`` times back to back
    timed as one sample (``n`` calls of at least ``sample_s`` in all, fixed per function after warm-up), so
    each timing starts from that function's own warm state (the cache-clearing Python loop no longer leaks
    into its neighbour's time) and a sub-millisecond call is not one reading of the clock: single timed
    calls of a 0.7 ms forward drifted +-10% between runs of the same build.

    ``settle_s``: an idle pause before each function's turn, for functions whose thread pools spin after a call
    (onnxruntime's, OpenMP's): without it the previous function's spinning threads take the cores from the next one's
    first calls (frames of 100 µs measured 1.5-2x slower interleaved so than each in a loop of its own). ``warm``: the
    untimed calls before each sample.
    """
    live = [f for f in fns if f is not None]
    for f in live:
        f()
        f()
    calls = []
    for f in fns:
        if f is None:
            calls.append(0)
            continue
        t = time.perf_counter()
        f()
        calls.append(max(1, min(50, int(sample_s / max(time.perf_counter() - t, 1e-6)))))
    samples: list[list[float]] = [[] for _ in fns]
    order = list(range(len(fns)))
    shuffle = random.Random(0).shuffle
    start = time.perf_counter()
    for r in range(reps):
        shuffle(order)
        for k in order:
            f = fns[k]
            if f is None:
                continue
            if settle_s:
                time.sleep(settle_s)
            for _ in range(warm):
                f()  # untimed: leaves this function's own state in the caches
            t = time.perf_counter()
            for _ in range(calls[k]):
                f()
            samples[k].append((time.perf_counter() - t) / calls[k])
        if r >= 2 and time.perf_counter() - start > budget_s:
            break
    return [statistics.median(s) if s else None for s in samples]


def saved_bytes(forward: Callable[[], Any], exclude: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages autograd saves for backward during ``forward()``, parameters and inputs
    excluded: the activations a training step keeps alive until backward (the dominant term of its peak memory;
    transient buffers inside a kernel are not counted)."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(seen.values())


# ---- what is timed ------------------------------------------------------------------------------


@dataclass
class Case:
    """One configuration at one shape: three callables returning ``(outputs, final-state tensors)``."""

    config: str
    baseline: str
    gates: int
    rnnkit: Callable[[], Any]
    torch_nn: Callable[[], Any] | None
    loop: Callable[[], Any] | None
    params: list[torch.Tensor]
    inputs: list[torch.Tensor]
    flops_fwd: float
    extra: dict[str, Any] = field(default_factory=dict)


def _flat(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flat(o)]
    return []


def _loss(out: Any) -> torch.Tensor:
    return sum(t.float().sum() for t in _flat(out))


def timed_call(fn: Callable[[], Any] | None, params: list[torch.Tensor], train: bool) -> Callable[[], None] | None:
    """What a table times of ``fn``: its call under ``torch.no_grad()``, or (``train``) its outputs' sum backward
    from cleared gradients of ``params``; ``None`` stays ``None`` (a side that has no such call)."""
    if fn is None:
        return None

    def run() -> None:
        if train:
            for p in params:
                p.grad = None
            _loss(fn()).backward()
        else:
            with torch.no_grad():
                fn()

    return run


def _torch_loop(cell: nn.Module, x: torch.Tensor, lstm: bool) -> Any:
    h = torch.zeros(x.shape[1], cell.hidden_size)
    c = torch.zeros_like(h)
    outs = []
    for t in range(x.shape[0]):
        if lstm:
            h, c = cell(x[t], (h, c))
        else:
            h = cell(x[t], h)
        outs.append(h)
    return torch.stack(outs), h


def _reference(fn: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        with engine.use("reference"):
            return fn()

    return run


def _tf_case(
    config: str,
    cell: rnnkit.RNNCell,
    x: torch.Tensor,
    torch_nn: nn.Module,
    baseline: str,
    gates: int,
    flops: float,
    lengths: torch.Tensor | None = None,
    torch_loop: Callable[[], Any] | None = None,
) -> Case:
    run = lambda: rnnkit.dynamic_rnn(cell, x, sequence_length=lengths, time_major=True)  # noqa: E731
    cell.build(x.shape[-1])
    return Case(
        config,
        baseline,
        gates,
        run,
        lambda: torch_nn(x),
        torch_loop or _reference(run),
        list(cell.parameters()) + list(torch_nn.parameters()),
        [x],
        flops,
    )


def _lstm_flops(T: int, B: int, I: int, H: int, P: int = 0, gates: int = 4) -> float:
    R = P or H
    return 2.0 * T * B * (gates * H * (I + R) + (H * P if P else 0))


def cases(shape: tuple[int, int, int, int]) -> list[Case]:
    """Every configuration of the table at one shape ``(T, B, I, H)``."""
    T, B, I, H = shape
    x = torch.randn(T, B, I)
    f4, f3, f1 = _lstm_flops(T, B, I, H), _lstm_flops(T, B, I, H, gates=3), _lstm_flops(T, B, I, H, gates=1)
    torch_lstm, torch_gru, torch_rnn = nn.LSTM(I, H), nn.GRU(I, H), nn.RNN(I, H)
    lstm_cell, gru_cell, rnn_cell = nn.LSTMCell(I, H), nn.GRUCell(I, H), nn.RNNCell(I, H)
    out: list[Case] = []

    if hasattr(rnnkit, "LSTM"):
        layer = rnnkit.LSTM(I, H)
        out.append(
            Case(
                "LSTM: rnnkit.LSTM (torch's math)",
                "torch.nn.LSTM",
                4,
                lambda: layer(x),
                lambda: torch_lstm(x),
                lambda: _torch_loop(lstm_cell, x, True),
                list(layer.parameters()) + list(torch_lstm.parameters()),
                [x],
                f4,
            )
        )
    out.append(
        _tf_case(
            "LSTM: TF BasicLSTMCell via dynamic_rnn", rnnkit.BasicLSTMCell(H), x, torch_lstm, "torch.nn.LSTM", 4, f4
        )
    )
    if hasattr(rnnkit, "GRU"):
        gru = rnnkit.GRU(I, H)
        out.append(
            Case(
                "GRU: rnnkit.GRU (torch's math, reset-after)",
                "torch.nn.GRU",
                3,
                lambda: gru(x),
                lambda: torch_gru(x),
                lambda: _torch_loop(gru_cell, x, False),
                list(gru.parameters()) + list(torch_gru.parameters()),
                [x],
                f3,
                {"vs_lstm": lambda: torch_lstm(x)},
            )
        )
        gru_tf = rnnkit.GRU(I, H, reset_after=False)
        out.append(
            Case(
                "GRU: rnnkit.GRU(reset_after=False) (TF's math)",
                "torch.nn.GRU",
                3,
                lambda: gru_tf(x),
                lambda: torch_gru(x),
                _reference(lambda: gru_tf(x)),
                list(gru_tf.parameters()) + list(torch_gru.parameters()),
                [x],
                f3,
                {"vs_lstm": lambda: torch_lstm(x)},
            )
        )
    case = _tf_case(
        "GRU: TF GRUCell via dynamic_rnn (reset-before)", rnnkit.GRUCell(H), x, torch_gru, "torch.nn.GRU", 3, f3
    )
    case.extra["vs_lstm"] = lambda: torch_lstm(x)
    out.append(case)
    if hasattr(rnnkit, "RNN"):
        rnn = rnnkit.RNN(I, H)
        out.append(
            Case(
                "RNN: rnnkit.RNN (tanh)",
                "torch.nn.RNN",
                1,
                lambda: rnn(x),
                lambda: torch_rnn(x),
                lambda: _torch_loop(rnn_cell, x, False),
                list(rnn.parameters()) + list(torch_rnn.parameters()),
                [x],
                f1,
            )
        )
    out.append(
        _tf_case("RNN: TF BasicRNNCell via dynamic_rnn", rnnkit.BasicRNNCell(H), x, torch_rnn, "torch.nn.RNN", 1, f1)
    )
    P = H // 2
    full = rnnkit.LSTMCell(H, use_peepholes=True, cell_clip=3.0, num_proj=P)
    out.append(
        _tf_case(
            f"LSTMCell peepholes + cell_clip + num_proj={P}",
            full,
            x,
            torch_lstm,
            "torch.nn.LSTM (no proj)",
            4,
            _lstm_flops(T, B, I, H, P),
        )
    )
    out.append(
        _tf_case("LayerNormBasicLSTMCell", rnnkit.LayerNormBasicLSTMCell(H), x, torch_lstm, "torch.nn.LSTM", 4, f4)
    )
    drop = rnnkit.DropoutWrapper(rnnkit.BasicLSTMCell(H), 0.9, 0.9, 0.9, variational_recurrent=True)
    drop.train()
    out.append(
        _tf_case(
            "DropoutWrapper(BasicLSTMCell), variational, training mode", drop, x, torch_lstm, "torch.nn.LSTM", 4, f4
        )
    )
    if B > 1:
        g = torch.Generator().manual_seed(0)
        lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
        lengths[0] = T
        cell = rnnkit.BasicLSTMCell(H)
        padded = lambda: rnnkit.dynamic_rnn(cell, x, time_major=True)  # noqa: E731
        case = _tf_case(
            f"variable lengths (U[T/2, T], mean {lengths.float().mean():.0f}): BasicLSTMCell",
            cell,
            x,
            torch_lstm,
            "same batch padded (rnnkit)",
            4,
            f4,
            lengths=lengths,
        )
        case.torch_nn = padded
        out.append(case)
        gcell = rnnkit.GRUCell(H)
        gcase = _tf_case(
            "variable lengths: TF GRUCell", gcell, x, torch_gru, "same batch padded (rnnkit)", 3, f3, lengths=lengths
        )
        gcase.torch_nn = lambda: rnnkit.dynamic_rnn(gcell, x, time_major=True)
        out.append(gcase)
    return out


# ---- the table ----------------------------------------------------------------------------------


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "" if v is None else format(v, spec)


def measure(case: Case, shape: tuple[int, ...], train: bool, reps: int, budget: float, peak: float) -> dict[str, Any]:
    T = shape[0]

    def step(fn: Callable[[], Any] | None) -> Callable[[], None] | None:
        return timed_call(fn, case.params, train)

    fns = [step(case.rnnkit), step(case.torch_nn), step(case.loop)]
    if "vs_lstm" in case.extra:
        fns.append(step(case.extra["vs_lstm"]))
    times = round_robin(fns, reps, budget)
    r, t, loop = times[0], times[1], times[2]
    flops = case.flops_fwd * (3 if train else 1)
    row = {
        "config": case.config,
        "shape": ", ".join(map(str, shape)),
        "mode": "fwd+bwd" if train else "inference",
        "rnnkit": r * 1e3,
        "baseline": case.baseline,
        "base_ms": None if t is None else t * 1e3,
        "ratio": None if t is None else r / t,
        "loop_ms": None if loop is None else loop * 1e3,
        "loop_x": None if loop is None else loop / r,
        "us_step": r * 1e6 / T,
        "gflops": flops / r / 1e9,
        "peak_pct": 100 * flops / r / 1e9 / peak,
        "vs_lstm": None,
    }
    if len(times) > 3 and times[3]:
        row["vs_lstm"] = r / times[3]
    if train:
        for p in case.params:
            p.grad = None
        row["saved_mb"] = saved_bytes(case.rnnkit, case.params + case.inputs) / 2**20
        if case.torch_nn is not None:
            row["saved_base_mb"] = saved_bytes(case.torch_nn, case.params + case.inputs) / 2**20
    return row


def table(rows: list[dict[str, Any]], peak: float) -> str:
    head = (
        "| config | T, B, I, H | mode | rnnkit ms | baseline | baseline ms | ratio | vs torch.nn.LSTM | "
        "Python loop ms | loop / rnnkit | µs/step | GFLOP/s | % of peak | saved MB (rnnkit / baseline) |\n"
        "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for r in rows:
        mem = ""
        if "saved_mb" in r:
            mem = f"{r['saved_mb']:.1f} / {_fmt(r.get('saved_base_mb'), '.1f')}"
        lines.append(
            f"| {r['config']} | {r['shape']} | {r['mode']} | {r['rnnkit']:.3f} | {r['baseline']} | "
            f"{_fmt(r['base_ms'], '.3f')} | **{_fmt(r['ratio'])}** | {_fmt(r['vs_lstm'])} | "
            f"{_fmt(r['loop_ms'], '.2f')} | "
            f"{_fmt(r['loop_x'], '.1f')}x | {r['us_step']:.1f} | {r['gflops']:.1f} | {r['peak_pct']:.0f}% | {mem} |"
        )
    return (
        head
        + "\n".join(lines)
        + f"\n\nMachine float32 matmul peak (1024³, {torch.get_num_threads()} threads): {peak:.1f} GFLOP/s\n"
    )


TARGETS = [
    # (label, row filter, measured value of a row, bound, what the issue asks)
    ("LSTM, torch's math (rnnkit.LSTM)", "LSTM: rnnkit.LSTM", "ratio", 1.05, "rnnkit / torch.nn.LSTM <= 1.05"),
    ("TF BasicLSTMCell via dynamic_rnn", "LSTM: TF BasicLSTMCell", "ratio", 1.10, "rnnkit / torch.nn.LSTM <= 1.10"),
    ("GRU (both maths)", "GRU:", "vs_lstm", 0.85, "GRU time / torch.nn.LSTM time <= 0.85"),
    ("vanilla RNN", "RNN:", "ratio", 1.0, "rnnkit / torch.nn.RNN <= 1.0"),
    ("variable lengths", "variable lengths", "ratio", 1.0, "with lengths / same batch padded <= 1.0"),
    ("LSTMCell peepholes + clip + projection", "LSTMCell peepholes", "ratio", 1.30, "<= 1.30 of torch.nn.LSTM"),
    ("LayerNormBasicLSTMCell", "LayerNormBasicLSTMCell", "ratio", 1.30, "<= 1.30 of torch.nn.LSTM"),
    ("DropoutWrapper, variational", "DropoutWrapper", "ratio", 1.30, "<= 1.30 of torch.nn.LSTM"),
]


def targets(rows: list[dict[str, Any]]) -> str:
    """The issue's targets against this run, row by row: every measured value, and whether it meets the bound."""
    out = ["| target | bound | measured (shape, mode: value) | met |", "|---|---|---|---|"]
    for label, match, key, bound, text in TARGETS:
        hits = [r for r in rows if r["config"].startswith(match) and r.get(key) is not None]
        if not hits:
            continue
        values = "; ".join(f"{r['shape']} {r['mode']}: {r[key]:.2f}" for r in hits)
        met = sum(r[key] <= bound for r in hits)
        out.append(f"| {label} | {text} | {values} | {met}/{len(hits)} |")
    batch1 = [r for r in rows if r["shape"].split(", ")[1] == "1" and r["config"].startswith(
        ("LSTMCell peepholes", "LayerNormBasicLSTMCell", "DropoutWrapper"))]  # fmt: skip
    if batch1:
        values = "; ".join(f"{r['config'].split(',')[0][:22]} {r['mode']}: {r['loop_x']:.1f}x" for r in batch1)
        met = sum(r["loop_x"] >= 3 for r in batch1)
        out.append(
            f"| cells torch lacks, batch 1 | >= 3x faster than the Python loop | {values} | {met}/{len(batch1)} |"
        )
    mem = [r for r in rows if r.get("saved_base_mb") is not None]
    if mem:
        values = "; ".join(
            f"{r['config'][:28]} {r['shape']}: {r['saved_mb']:.1f}/{r['saved_base_mb']:.1f}" for r in mem
        )
        met = sum(r["saved_mb"] <= r["saved_base_mb"] * 1.001 for r in mem)
        out.append(f"| training memory | saved MB <= baseline's | {values} | {met}/{len(mem)} |")
    return "\n".join(out) + "\n"


def machine() -> str:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = engine.backend_info()
    return (
        f"- CPU: {cpu}, {os.cpu_count()} logical cores; torch threads {torch.get_num_threads()}\n"
        f"- {platform.platform()}; Python {platform.python_version()}; torch {torch.__version__}\n"
        f"- rnnkit engine: backend `{info['backend']}`, fused kernels on CPU: `{info['fused_cpu']}`"
        + (f" (built in {info['compiled']['build_s']:.0f} s this run)" if info["compiled"]["build_s"] else "")
        + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="two shapes, few repetitions, nothing written")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions per measurement (median)")
    ap.add_argument("--budget", type=float, default=None, help="seconds per measurement before stopping early")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"))
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--filter", default="", help="only configs containing this text")
    ap.add_argument("--no-streaming", action="store_true", help="leave out the streaming (per-frame) table")
    ap.add_argument("--no-bf16", action="store_true", help="leave out the bfloat16 table")
    ap.add_argument(
        "--only", choices=["streaming", "bf16"], help="only this table (with --quick: its short form); nothing written"
    )
    args = ap.parse_args(argv)
    reps = args.reps or (5 if args.quick else 11)
    budget = args.budget or (2.0 if args.quick else 6.0)
    torch.manual_seed(0)
    started = datetime.datetime.now()
    load0 = os.getloadavg()
    desc = machine()  # builds the extension first, so no build lands inside a timing
    peak = matmul_peak()
    print(desc)
    rows = []
    plan = [(s, False) for s in (QUICK_SHAPES if args.quick else INFERENCE_SHAPES)]
    plan += [(s, True) for s in (QUICK_SHAPES[:1] if args.quick else TRAINING_SHAPES)]
    if args.only:
        plan = []
    for shape, train in plan:
        for case in cases(shape):
            if args.filter and args.filter not in case.config:
                continue
            row = measure(case, shape, train, reps, budget, peak)
            rows.append(row)
            print(
                f"{row['config'][:60]:60s} {row['shape']:>18s} {row['mode']:9s} rnnkit {row['rnnkit']:9.3f} ms  "
                f"ratio {_fmt(row['ratio'])}  vsLSTM {_fmt(row['vs_lstm'])}  loop/rnnkit {_fmt(row['loop_x'], '.1f')}",
                flush=True,
            )
    own, frames, half, half_frames = [], [], [], []
    full = not args.quick and not args.filter and not args.only
    if not args.quick and not args.only and (not args.filter or args.filter in "user cells"):
        own = user_cells.rows(reps, budget)
    if args.only == "streaming" or (full and not args.no_streaming):
        frames = streaming.rows(args.quick, reps, 1.0 if args.quick else 2.0)
    if args.only == "bf16" or (full and not args.no_bf16):
        half, half_frames = bf16.rows(args.quick, reps, 0.5 if args.quick else 1.5)
    load1 = os.getloadavg()
    md = table(rows, peak) if rows else ""
    extra = ("\n" + streaming.table(frames) if frames else "") + ("\n" + bf16.table(half, half_frames) if half else "")
    summary = (targets(rows) if rows else "| target | bound | measured | met |\n|---|---|---|---|\n") + (
        (user_cells.targets(own) if own else "")
        + (streaming.targets(frames) if frames else "")
        + (bf16.targets(half, half_frames) if half else "")
    )
    print()
    print(md + extra)
    print(summary)
    if not args.quick and not args.no_write and not args.only:
        doc = (
            "# Benchmarks\n\n"
            f"Produced by `python -m benchmarks.run` on {started:%Y-%m-%d %H:%M} (one run; medians of up to {reps} "
            f"round-robin repetitions per measurement). Load average before/after: {load0[0]:.2f} / {load1[0]:.2f}.\n\n"
            + desc
            + "\nColumns: *ratio* = rnnkit / baseline (lower is better); *vs torch.nn.LSTM* = rnnkit GRU time / "
            "torch.nn.LSTM time at the same size; *saved MB* = bytes autograd keeps for backward after the "
            "forward (distinct storages, parameters and inputs excluded), i.e. the activation memory of training; "
            "GFLOP/s from 2·T·B·G·H·(I+R) per forward (+ projection), 3x for forward+backward.\n\n"
            + md
            + ("\n## Your own cells, compiled\n\n" + user_cells.__doc__.split("\n\n", 2)[2] + "\n" +
               user_cells.table(own) if own else "")
            + ("\n## Streaming: one frame per call\n\n" + streaming.__doc__.split("\n\n", 2)[2] + "\n"
               + streaming.table(frames) if frames else "")
            + ("\n## bfloat16\n\n" + bf16.__doc__.split("\n\n", 2)[2] + "\n"
               + bf16.table(half, half_frames) if half else "")
            + "\n## The issue's targets, row by row\n\n"
            + summary
        )
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(doc, encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
