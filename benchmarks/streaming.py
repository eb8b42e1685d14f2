"""Streaming: one frame per call, float32, batch 1 (and one batch-4 row), under ``torch.inference_mode()``.

    python -m benchmarks.streaming           # the table, printed (``benchmarks.run`` adds it to docs/benchmarks.md)
    python -m benchmarks.streaming --quick   # three rows, few repetitions

Each row feeds one frame ``x_t`` (batch, input_size) per call and the state back, the way a streaming recogniser,
a sampler or a decoder step does, and times per frame, round-robin in one process (``benchmarks.run.round_robin``):
rnnkit's ``y, state = layer.step(x_t, state)``; rnnkit's streaming API ``with layer.stream(batch) as s: y = s(x_t)``
(``-`` where this rnnkit has none); ``torch.nn.LSTM``/``GRU`` on ``(1, batch, I)`` with its state fed back; a
Python loop of ``torch.nn.LSTMCell``/``GRUCell`` over the layers; and onnxruntime running rnnkit's own ONNX
export (``rnnkit.convert.export_onnx``, ``h_n``/``c_n`` fed back as ``h_0``/``c_0``). *weights/frame*: every
parameter's bytes, which each frame reads once (the memory-traffic floor of a step at batch 1); *GB/s*: those bytes
over ``step()``'s time. *today's step()*: ``step()`` of the revision before issue 14 (``BASE``), in a worker process
from a temporary git worktree, timed in pairs against this tree's ``step()`` in a worker of its own
(``benchmarks.compare``'s machinery); *x* is the median paired speed-up. The TF row calls a ``MultiRNNCell`` of
``rnnkit.LSTMCell`` per frame (``y, state = cells(x_t, state)``) against onnxruntime running that cell's export.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import random
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import rnnkit

BASE = "8e7edda"  # the revision before issue 14's streaming engine: "today's step()"
_FILES = itertools.count()  # names of exported models in a table's temporary folder
ORT_SETTINGS: list[int | None] = [None, 1, 2]  # intra_op_num_threads tried (None: SessionOptions' defaults)
# Each side's turn starts after an idle pause and a few untimed frames: onnxruntime's and OpenMP's thread pools spin
# after a call, and interleaved without a pause each side's spinning threads slowed the other's frames 1.5-2x.
SETTLE_S, WARM = 0.02, 5


@dataclass(frozen=True)
class Config:
    """One streamed model: ``family`` LSTM or GRU (``reset_after=False``: TF's GRU), sizes, batch."""

    family: str
    input_size: int
    hidden_size: int
    num_layers: int
    batch: int = 1
    reset_after: bool = True

    @property
    def label(self) -> str:
        if self.family == "LSTM":
            return "LSTM"
        return "GRU (torch's math)" if self.reset_after else "GRU reset_after=False (TF's math)"

    @property
    def sizes(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, {self.num_layers}"


CONFIGS = [
    *(Config("LSTM", *s) for s in [(80, 256, 2), (128, 128, 1), (256, 512, 1), (512, 512, 3), (80, 256, 3)]),
    *(Config("GRU", *s) for s in [(80, 256, 2), (128, 128, 1), (512, 512, 1)]),
    *(Config("GRU", *s, reset_after=False) for s in [(80, 256, 2), (128, 128, 1), (512, 512, 1)]),
    Config("LSTM", 80, 256, 2, batch=4),
]
QUICK = [CONFIGS[0], CONFIGS[5], CONFIGS[8]]
TODAY = CONFIGS[0]  # the row compared with BASE's step()
CELLS = Config("LSTM", 80, 256, 2)  # the TF MultiRNNCell row


# ---- pure helpers ------------------------------------------------------------------------------


def weight_bytes(module: nn.Module) -> int:
    """Bytes of all of ``module``'s parameters: what one frame at batch 1 reads (every weight, once)."""
    return sum(p.numel() * p.element_size() for p in module.parameters())


def bandwidth_gbs(nbytes: int, seconds: float) -> float:
    """GB/s (1e9 bytes) implied by reading ``nbytes`` in ``seconds``."""
    return nbytes / seconds / 1e9


def fastest(times: dict[Any, float | None]) -> Any:
    """The key of the smallest time (ties: the first); keys with no time are skipped."""
    timed = [(t, k) for k, t in times.items() if t is not None]
    return min(timed, key=lambda tk: tk[0])[1] if timed else None


def setting_name(threads: int | None) -> str:
    return "SessionOptions defaults" if threads is None else f"intra_op_num_threads={threads}"


# ---- one frame per call, for each side ------------------------------------------------------------


def make_layer(cfg: Config, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The rnnkit layer of ``cfg``, in eval mode, in ``dtype``."""
    size = (cfg.input_size, cfg.hidden_size, cfg.num_layers)
    layer = rnnkit.LSTM(*size) if cfg.family == "LSTM" else rnnkit.GRU(*size, reset_after=cfg.reset_after)
    return layer.eval().to(dtype)


def step_frame(layer: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    """``y, state = layer.step(x_t, state)``, the state fed back."""
    state: list[Any] = [None]

    def frame() -> Any:
        y, state[0] = layer.step(x, state[0])
        return y

    return frame


def stream_frame(layer: nn.Module, x: torch.Tensor, stack: contextlib.ExitStack) -> Callable[[], Any] | None:
    """``s(x_t)`` inside ``layer.stream(batch)`` (entered on ``stack``), or None where the layer has no ``stream``."""
    if not hasattr(layer, "stream"):
        return None
    s = stack.enter_context(layer.stream(x.shape[0]))
    return lambda: s(x)


def torch_frame(cfg: Config, x: torch.Tensor) -> Callable[[], Any]:
    """``torch.nn.LSTM``/``GRU`` of ``cfg``'s sizes on ``(1, batch, I)``, the state fed back."""
    make = nn.LSTM if cfg.family == "LSTM" else nn.GRU
    model, x3 = make(cfg.input_size, cfg.hidden_size, cfg.num_layers).eval(), x.unsqueeze(0)
    state: list[Any] = [None]

    def frame() -> Any:
        y, state[0] = model(x3, state[0])
        return y

    return frame


def cell_loop_frame(cfg: Config, x: torch.Tensor) -> Callable[[], Any]:
    """A Python loop of ``torch.nn.LSTMCell``/``GRUCell`` over the layers, each cell's state fed back."""
    lstm = cfg.family == "LSTM"
    make = nn.LSTMCell if lstm else nn.GRUCell
    cells = [make(cfg.input_size if k == 0 else cfg.hidden_size, cfg.hidden_size) for k in range(cfg.num_layers)]
    states: list[Any] = [None] * cfg.num_layers

    def frame() -> Any:
        inp = x
        for k, cell in enumerate(cells):
            states[k] = cell(inp, states[k])
            inp = states[k][0] if lstm else states[k]
        return inp

    return frame


def ort_frame(path: str, x: np.ndarray, states: dict[str, np.ndarray], threads: int | None) -> Callable[[], Any]:
    """onnxruntime on the model at ``path``: ``x`` (one time step) and ``states`` in, the outputs after the first
    fed back as the states (in the order the graph lists them)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    names = list(states)
    feeds = {"input": x, **states}

    def frame() -> Any:
        out = session.run(None, feeds)
        feeds.update(zip(names, out[1:], strict=True))
        return out[0]

    return frame


def ort_layer_frames(layer: nn.Module, x: torch.Tensor, tmp: str) -> list[Callable[[], Any]]:
    """``ort_layer_frame`` at every setting of ``ORT_SETTINGS``: a row times them all and takes the fastest."""
    return [ort_layer_frame(layer, x, tmp, t) for t in ORT_SETTINGS]


def ort_best(times: list[float | None]) -> tuple[float | None, int | None]:
    """The fastest of onnxruntime's times at ``ORT_SETTINGS`` (in that order), and its setting (``None``, the
    defaults, is a setting: no time at all gives ``(None, None)``)."""
    k = fastest(dict(enumerate(times)))
    return (None, None) if k is None else (times[k], ORT_SETTINGS[k])


def ort_layer_frame(layer: nn.Module, x: torch.Tensor, tmp: str, threads: int | None) -> Callable[[], Any]:
    """onnxruntime running ``export_onnx(layer)`` (a float32 copy) on ``x`` (batch, I) as ``(1, batch, I)``,
    ``h_n`` (``c_n``) fed back as ``h_0`` (``c_0``); returns the frame's output ``(1, batch, H)``. A float32 ``x``
    is shared, not copied: writing a new frame into it feeds the next call."""
    path = str(Path(tmp) / f"layer{next(_FILES)}.onnx")
    rnnkit.convert.export_onnx(copy.deepcopy(layer).float(), path)
    zeros = np.zeros((layer.num_layers, x.shape[0], layer.hidden_size), np.float32)
    states = {"h_0": zeros} | ({"c_0": zeros.copy()} if isinstance(layer, rnnkit.LSTM) else {})
    return ort_frame(path, x.float().numpy()[None], states, threads)


# ---- the rows ---------------------------------------------------------------------------------------


def _row(label: str, cfg: Config, times: list[float | None], nbytes: int) -> dict[str, Any]:
    step, stream, tnn, loop, *orts = times
    ort, setting = ort_best(orts)
    return {
        "config": label, "sizes": cfg.sizes, "batch": cfg.batch, "step": step * 1e6,
        "stream": stream * 1e6 if stream else None, "torch_nn": tnn * 1e6 if tnn else None,
        "cells": loop * 1e6 if loop else None, "ort": ort * 1e6 if ort else None,
        "step_ort": step / ort if ort else None, "stream_ort": stream / ort if stream and ort else None,
        "fps": 1 / step, "weight_kb": nbytes / 1024,
        "gbs": bandwidth_gbs(nbytes, step), "today": None, "today_x": None, "ort_setting": setting,
    }  # fmt: skip


def layer_row(cfg: Config, reps: int, budget: float, tmp: str) -> dict[str, Any]:
    from .run import round_robin

    layer, x = make_layer(cfg), torch.randn(cfg.batch, cfg.input_size)
    with contextlib.ExitStack() as stack, torch.inference_mode():
        fns = [
            step_frame(layer, x), stream_frame(layer, x, stack), torch_frame(cfg, x), cell_loop_frame(cfg, x),
            *ort_layer_frames(layer, x, tmp),
        ]  # fmt: skip
        times = round_robin(fns, reps, budget, settle_s=SETTLE_S, warm=WARM)
    return _row(cfg.label, cfg, times, weight_bytes(layer))


def cells_row(reps: int, budget: float, tmp: str) -> dict[str, Any]:
    """TF's way: a ``MultiRNNCell`` of ``rnnkit.LSTMCell`` called per frame, against onnxruntime running its export
    (inputs ``input`` (batch, 1, I), ``state_0..`` in TF's flattened order c, h per layer)."""
    from .run import round_robin

    cfg, b = CELLS, CELLS.batch
    cells = rnnkit.MultiRNNCell([rnnkit.LSTMCell(cfg.hidden_size) for _ in range(cfg.num_layers)]).eval()
    cells.build(cfg.input_size)
    x = torch.randn(b, cfg.input_size)
    state: list[Any] = [cells.zero_state(b, torch.float32)]

    def tf_frame() -> Any:
        y, state[0] = cells(x, state[0])
        return y

    path = str(Path(tmp) / "cells.onnx")
    rnnkit.convert.export_onnx(cells, path, input_size=cfg.input_size)
    zeros = {f"state_{k}": np.zeros((b, cfg.hidden_size), np.float32) for k in range(2 * cfg.num_layers)}
    xo = x.numpy()[:, None]  # (batch, 1, I): the cell's export is batch-major, as dynamic_rnn's default
    with torch.inference_mode():
        orts = [ort_frame(path, xo, {k: v.copy() for k, v in zeros.items()}, t) for t in ORT_SETTINGS]
        fns = [tf_frame, None, torch_frame(cfg, x), cell_loop_frame(cfg, x), *orts]
        times = round_robin(fns, reps, budget, settle_s=SETTLE_S, warm=WARM)
    label = f"TF MultiRNNCell of {cfg.num_layers} rnnkit.LSTMCell, cells(x_t, state)"
    return _row(label, cfg, times, weight_bytes(cells))


def today(reps: int, base: str = BASE) -> tuple[float, float, float]:
    """``TODAY``'s ``step()`` at ``base`` and in this tree, each in a worker (``benchmarks.compare``): seconds per
    frame of both (medians) and the median paired speed-up base / this tree."""
    from . import compare

    with compare.base_tree(base) as tree:
        before = compare.Side(tree / "src", [], "benchmarks.streaming")
        after = compare.Side(compare.ROOT / "src", [], "benchmarks.streaming")
        try:
            t_before, t_after, ratio = compare.paired(before, after, 0, reps, 0.02, random.Random(0).shuffle, SETTLE_S)
        finally:
            before.close()
            after.close()
    return t_before, t_after, 1 / ratio


def _has_revision(rev: str) -> bool:
    root = Path(__file__).resolve().parents[1]
    found = subprocess.run(["git", "cat-file", "-e", f"{rev}^{{commit}}"], cwd=root, capture_output=True, check=False)
    return found.returncode == 0


def _worker() -> None:
    from . import compare

    torch.manual_seed(0)
    layer, x = make_layer(TODAY), torch.randn(TODAY.batch, TODAY.input_size)
    with torch.inference_mode():
        compare.serve([(TODAY.label, step_frame(layer, x))])


def ort_note(rows: list[dict[str, Any]]) -> str:
    """Which onnxruntime setting each row's figure is (the fastest of ``ORT_SETTINGS`` in that row)."""
    won = [r["ort_setting"] for r in rows if "ort_setting" in r and r.get("ort") is not None]
    counts = ", ".join(f"{setting_name(s)} in {won.count(s)}" for s in ORT_SETTINGS if won.count(s))
    tried = ", ".join(setting_name(s) for s in ORT_SETTINGS)
    return (
        f"onnxruntime is timed at each of ({tried}) in every row's round robin, and the row takes the fastest "
        f"(its pool with the defaults spins after a call and swung 56-353 µs a frame under the round robin; a setting "
        f"fixed once for the table made some rows' onnxruntime 2-5x slower than it can be). Fastest: {counts}"
    )


def rows(quick: bool = False, reps: int = 11, budget: float = 2.0, base: str | None = BASE) -> list[dict[str, Any]]:
    """Every row of the table (``quick``: three); ``base=None`` leaves out today's step()."""
    torch.manual_seed(0)
    out = []
    with tempfile.TemporaryDirectory(prefix="rnnkit-stream-") as tmp:
        for cfg in QUICK if quick else CONFIGS:
            out.append(layer_row(cfg, reps, budget, tmp))
            print(_line(out[-1]), flush=True)
        out.append(cells_row(reps, budget, tmp))
        print(_line(out[-1]), flush=True)
    if base is not None and not _has_revision(base):
        print(f"today's step(): no revision {base} in this checkout; column left out", flush=True)
    elif base is not None:
        t_before, _, speedup = today(reps, base)
        row = next(r for r in out if r["config"] == TODAY.label and r["sizes"] == TODAY.sizes and r["batch"] == 1)
        row["today"], row["today_x"] = t_before * 1e6, speedup
        print(f"today's step() at {base}: {t_before * 1e6:.0f} µs/frame, this tree x{speedup:.1f} faster", flush=True)
    return out


# ---- the table ----------------------------------------------------------------------------------------


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def _line(r: dict[str, Any]) -> str:
    return (
        f"{r['config'][:40]:40s} {r['sizes']:>12s} b{r['batch']} step {r['step']:8.1f} µs  "
        f"stream {_fmt(r['stream'], '.1f')}  torch.nn {_fmt(r['torch_nn'], '.1f')}  ort {_fmt(r['ort'], '.1f')}  "
        f"step/ort {_fmt(r['step_ort'])}"
    )


def table(results: list[dict[str, Any]]) -> str:
    head = (
        ort_note(results) + "; µs per frame, medians.\n\n"
        + "| model | I, H, layers | batch | step() µs | stream µs | torch.nn µs | cell loop µs | onnxruntime µs | "
        "step / ort | stream / ort | frames/s (step) | weights/frame KB | GB/s at step() | today's step() µs |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = [
        f"| {r['config']} | {r['sizes']} | {r['batch']} | {r['step']:.1f} | {_fmt(r['stream'], '.1f')} | "
        f"{_fmt(r['torch_nn'], '.1f')} | {_fmt(r['cells'], '.1f')} | {_fmt(r['ort'], '.1f')} | "
        f"**{_fmt(r['step_ort'])}** | {_fmt(r['stream_ort'])} | {r['fps']:.0f} | {r['weight_kb']:.0f} | "
        f"{r['gbs']:.1f} | {_fmt(r['today'], '.0f')}" + (f" (x{r['today_x']:.1f})" if r["today_x"] else "") + " |"
        for r in results
    ]
    return head + "\n".join(lines) + "\n"


def frame_target_lines(rows: list[dict[str, Any]], label: str, bound_text: str, bound: float) -> list[str]:
    """The target rows of per-frame ratios to onnxruntime, ``step()``'s and ``stream``'s: each row's value and how
    many meet ``bound`` (shared with ``benchmarks.bf16``'s frames)."""
    out = []
    for key, what in (("step_ort", "step()"), ("stream_ort", "stream")):
        hits = [r for r in rows if r[key] is not None]
        if hits:
            values = "; ".join(f"{r['config'].split(' (')[0]} {r['sizes']}: {r[key]:.2f}" for r in hits)
            out.append(
                f"| {label}, {what} | {bound_text} | {values} | {sum(r[key] <= bound for r in hits)}/{len(hits)} |"
            )
    return out


def targets(results: list[dict[str, Any]]) -> str:
    """Issue 14's streaming bounds against this run: the target rows ``benchmarks.run`` prints."""
    layers = [r for r in results if r["batch"] == 1 and not r["config"].startswith("TF ")]
    cells = [r for r in results if r["config"].startswith("TF ")]
    out = frame_target_lines(layers, "streaming float32, batch 1", "<= 1.0x onnxruntime per frame", 1.0)
    hits = [r for r in cells if r["step_ort"] is not None]
    if hits:
        values = "; ".join(f"{r['sizes']}: {r['step_ort']:.2f}" for r in hits)
        met = sum(r["step_ort"] <= 1.3 for r in hits)
        out.append(f"| TF MultiRNNCell of LSTMCell per frame | <= 1.3x onnxruntime | {values} | {met}/{len(hits)} |")
    hits = [r for r in results if r["today_x"] is not None]
    if hits:
        values = "; ".join(f"{r['config']} {r['sizes']}: x{r['today_x']:.1f}" for r in hits)
        met = sum(r["today_x"] >= 10 for r in hits)
        out.append(f"| step() against today's ({BASE}) | >= 10x faster | {values} | {met}/{len(hits)} |")
    return "\n".join(out) + ("\n" if out else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="three rows, few repetitions")
    ap.add_argument("--base", default=BASE, help="the revision whose step() is 'today's' (default %(default)s)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _worker()
        return 0
    results = rows(args.quick, 5 if args.quick else 11, 1.0 if args.quick else 2.0, args.base)
    print(table(results))
    print(targets(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
