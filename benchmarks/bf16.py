"""bfloat16: rnnkit against ``torch.nn`` in bfloat16 (``model.to(torch.bfloat16)``), whole sequences and frames.

    python -m benchmarks.bf16           # the table, printed (``benchmarks.run`` adds it to docs/benchmarks.md)
    python -m benchmarks.bf16 --quick   # the smallest shape and the first streamed model, few repetitions

Whole sequences ``(T, B, I, H)``, inputs and models in bfloat16, inference under ``torch.no_grad()`` and
forward+backward (``out.float().sum()`` + final states, backward into the bf16 parameters), round-robin in one
process (``benchmarks.run.round_robin``): rnnkit against ``torch.nn.LSTM``/``GRU`` in bf16 (oneDNN's bf16
kernels); for the options torch lacks (peepholes, cell clipping, projection; layer norm) against
``torch.nn.LSTM`` in bf16 of the same sizes without the option; GRU rows also against ``torch.nn.LSTM`` in bf16
(*vs torch.nn.LSTM*, the issue's GRU bound). Streamed frames (batch 1, ``torch.inference_mode()``): rnnkit's
``step()`` (and ``stream``, where this rnnkit has it) in bf16 against onnxruntime running rnnkit's float32 ONNX
export per frame (``benchmarks.streaming``'s sides), next to rnnkit's own float32 ``step()``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

import rnnkit

from . import streaming

SHAPES = [(100, 1, 64, 128), (100, 32, 128, 256), (50, 64, 512, 512)]
STREAMED = [streaming.CONFIGS[0], streaming.CONFIGS[5], streaming.CONFIGS[8]]  # LSTM, GRU (both maths) 80, 256, 2
BF16 = torch.bfloat16


@dataclass(frozen=True)
class Spec:
    """One row's models at sizes ``(I, H)``: rnnkit's, and the ``torch.nn`` baseline's (bf16 both)."""

    config: str
    baseline: str
    rnnkit: Callable[[int, int], nn.Module]
    torch_nn: Callable[[int, int], nn.Module]
    gru: bool = False  # also timed against torch.nn.LSTM (the GRU bound)


SPECS = [
    Spec("LSTM: rnnkit.LSTM", "torch.nn.LSTM", rnnkit.LSTM, nn.LSTM),
    Spec("GRU: rnnkit.GRU (torch's math)", "torch.nn.GRU", rnnkit.GRU, nn.GRU, gru=True),
    Spec(
        "GRU: rnnkit.GRU(reset_after=False) (TF's math)", "torch.nn.GRU",
        lambda i, h: rnnkit.GRU(i, h, reset_after=False), nn.GRU, gru=True,
    ),
    Spec(
        "LSTM peepholes + cell_clip + proj_size=H/2", "torch.nn.LSTM (none of them)",
        lambda i, h: rnnkit.LSTM(i, h, peepholes=True, cell_clip=3.0, proj_size=h // 2), nn.LSTM,
    ),
    Spec("LSTM layer_norm=True", "torch.nn.LSTM (no layer norm)", lambda i, h: rnnkit.LSTM(i, h, layer_norm=True),
         nn.LSTM),
]  # fmt: skip


def sequence_row(spec: Spec, shape: tuple[int, int, int, int], train: bool, reps: int, budget: float) -> dict:
    """One whole-sequence row: seconds of rnnkit, its baseline and (GRU) torch.nn.LSTM, all bf16."""
    from .run import round_robin, timed_call

    T, B, I, H = shape
    x = torch.randn(T, B, I, dtype=BF16)
    ours, base = spec.rnnkit(I, H).to(BF16), spec.torch_nn(I, H).to(BF16)
    lstm = nn.LSTM(I, H).to(BF16) if spec.gru else None
    params = [p for m in (ours, base, lstm) if m is not None for p in m.parameters()]
    fns = [lambda: ours(x), lambda: base(x), None if lstm is None else (lambda: lstm(x))]
    r, t, lt = round_robin([timed_call(f, params, train) for f in fns], reps, budget)
    return {
        "config": spec.config, "shape": ", ".join(map(str, shape)), "mode": "fwd+bwd" if train else "inference",
        "rnnkit": r * 1e3, "baseline": spec.baseline, "base_ms": t * 1e3, "ratio": r / t,
        "lstm_ms": None if lt is None else lt * 1e3, "vs_lstm": None if lt is None else r / lt,
    }  # fmt: skip


def frame_row(cfg: streaming.Config, reps: int, budget: float, tmp: str) -> dict:
    """One streamed row: rnnkit's bf16 step (and stream), its float32 step, onnxruntime float32, per frame."""
    from .run import round_robin

    layer32, x = streaming.make_layer(cfg), torch.randn(cfg.batch, cfg.input_size)
    layer16, x16 = copy.deepcopy(layer32).to(BF16), x.to(BF16)
    with contextlib.ExitStack() as stack, torch.inference_mode():
        fns = [
            streaming.step_frame(layer16, x16), streaming.stream_frame(layer16, x16, stack),
            streaming.step_frame(layer32, x), *streaming.ort_layer_frames(layer32, x, tmp),
        ]  # fmt: skip
        step, stream, step32, *orts = round_robin(fns, reps, budget, settle_s=streaming.SETTLE_S, warm=streaming.WARM)
    ort, setting = streaming.ort_best(orts)
    return {
        "config": cfg.label, "sizes": cfg.sizes, "batch": cfg.batch, "step": step * 1e6,
        "stream": None if stream is None else stream * 1e6, "step32": step32 * 1e6, "ort": ort * 1e6,
        "step_ort": step / ort, "stream_ort": None if stream is None else stream / ort, "ort_setting": setting,
    }  # fmt: skip


def rows(
    quick: bool = False, reps: int = 11, budget: float = 1.5, shapes: list[tuple[int, int, int, int]] | None = None
) -> tuple[list[dict], list[dict]]:
    """The whole-sequence rows and the streamed rows (``quick``: the smallest shape, one streamed model)."""
    torch.manual_seed(0)
    seq, frames = [], []
    for shape in shapes or (SHAPES[:1] if quick else SHAPES):
        for train in (False, True):
            for spec in SPECS:
                seq.append(sequence_row(spec, shape, train, reps, budget))
                r = seq[-1]
                print(
                    f"bf16 {r['config'][:48]:48s} {r['shape']:>16s} {r['mode']:9s} rnnkit {r['rnnkit']:9.3f} ms  "
                    f"ratio {r['ratio']:.2f}  vsLSTM {streaming._fmt(r['vs_lstm'])}",
                    flush=True,
                )
    with tempfile.TemporaryDirectory(prefix="rnnkit-bf16-") as tmp:
        for cfg in STREAMED[:1] if quick else STREAMED:
            frames.append(frame_row(cfg, reps, budget, tmp))
            r = frames[-1]
            print(
                f"bf16 frame {r['config'][:36]:36s} {r['sizes']:>12s} step {r['step']:8.1f} µs  "
                f"ort f32 {r['ort']:8.1f} µs  step/ort {r['step_ort']:.2f}",
                flush=True,
            )
    return seq, frames


def table(seq: list[dict], frames: list[dict]) -> str:
    _f = streaming._fmt
    out = [] if not seq else [
        "| config | T, B, I, H | mode | rnnkit bf16 ms | baseline (bf16) | baseline ms | ratio | "
        "torch.nn.LSTM bf16 ms | vs torch.nn.LSTM |",
        "|---|---|---|---:|---|---:|---:|---:|---:|",
    ]  # fmt: skip
    out += [
        f"| {r['config']} | {r['shape']} | {r['mode']} | {r['rnnkit']:.3f} | {r['baseline']} | {r['base_ms']:.3f} | "
        f"**{r['ratio']:.2f}** | {_f(r['lstm_ms'], '.3f')} | {_f(r['vs_lstm'])} |"
        for r in seq
    ]
    if frames:
        note = streaming.ort_note(frames)
        out += ["", f"Streamed, bf16, one frame per call ({note}):", ""] if seq else []
        out += [
            "| model | I, H, layers | batch | step() bf16 µs | stream bf16 µs | step() float32 µs | "
            "onnxruntime float32 µs | step bf16 / ort | stream bf16 / ort |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        out += [
            f"| {r['config']} | {r['sizes']} | {r['batch']} | {r['step']:.1f} | {_f(r['stream'], '.1f')} | "
            f"{r['step32']:.1f} | {r['ort']:.1f} | **{r['step_ort']:.2f}** | {_f(r['stream_ort'])} |"
            for r in frames
        ]
    return "\n".join(out) + "\n"


TARGETS = [
    # (label, row filter, measured value of a row, bound, what the issue asks)
    ("bf16 LSTM (rnnkit.LSTM)", "LSTM: rnnkit.LSTM", "ratio", 1.0, "<= 1.0x torch.nn.LSTM bf16"),
    ("bf16 GRU (both maths)", "GRU:", "vs_lstm", 0.85, "<= 0.85x torch.nn.LSTM bf16"),
    ("bf16 LSTM peepholes + clip + projection", "LSTM peepholes", "ratio", 1.3, "<= 1.3x torch.nn.LSTM bf16"),
    ("bf16 LayerNorm LSTM", "LSTM layer_norm", "ratio", 1.3, "<= 1.3x torch.nn.LSTM bf16"),
]


def _tag(row: dict, several: bool) -> str:
    return row["config"].rsplit("(", 1)[-1].rstrip(")") + " " if several else ""


def targets(seq: list[dict], frames: list[dict]) -> str:
    """Issue 14's bf16 bounds against this run: the target rows ``benchmarks.run`` prints."""
    out = []
    for label, match, key, bound, text in TARGETS:
        hits = [r for r in seq if r["config"].startswith(match) and r.get(key) is not None]
        several = len({r["config"] for r in hits}) > 1  # (GRU: both maths, told apart by their parenthesis)
        if hits:
            values = "; ".join(f"{_tag(r, several)}{r['shape']} {r['mode']}: {r[key]:.2f}" for r in hits)
            out.append(f"| {label} | {text} | {values} | {sum(r[key] <= bound for r in hits)}/{len(hits)} |")
    out += streaming.frame_target_lines(frames, "bf16 streaming, batch 1", "<= 0.6x onnxruntime float32 per frame", 0.6)
    return "\n".join(out) + ("\n" if out else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the smallest shape, one streamed model, few repetitions")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions per measurement (median)")
    ap.add_argument("--shape", default="", help="only this shape, written T,B,I,H (e.g. 100,1,64,128)")
    args = ap.parse_args(argv)
    shapes = [tuple(int(v) for v in args.shape.split(","))] if args.shape else None
    reps = args.reps or (5 if args.quick else 11)
    seq, frames = rows(args.quick, reps, 0.5 if args.quick else 1.5, shapes)
    print(table(seq, frames))
    print(targets(seq, frames))
    return 0


if __name__ == "__main__":
    sys.exit(main())
