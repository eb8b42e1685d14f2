"""``rnnkit train``: a character-level language model on text files, or the adding problem.

Character model (default task). ``--data`` files, or with none the Python standard library's own source
(read from this interpreter, no download). Truncated backpropagation through time over contiguous batches:
the state at the end of one batch starts the next one (detached), and is reset at each epoch's start.
The last ``--val-fraction`` of the text is held out and evaluated every ``--eval-every`` steps, with a sample.

Adding problem (``--task adding --seq-len T``): two marked values among T uniform ones, target their sum;
always answering 1.0 scores MSE 0.167. Fresh random batches every step; a fixed held-out set.

Checkpoints (``--out DIR``): safetensors weights, JSON config, optimizer state, RNG states, carried state
and step, written atomically every ``--save-every`` steps and on Ctrl-C/SIGTERM; ``--resume`` continues
exactly where the run stopped (the same weights as an uninterrupted run); resuming a finished run says so
and trains nothing (raise ``--steps`` to train it further). A new run refuses an ``--out`` that holds one.

The compiled CPU kernels are built (first use only, announced on stderr) before the clock starts, so the
progress line's rate and ETA measure training alone.

Under ``torchrun --nproc_per_node=N -m rnnkit train`` each rank trains its slice of every global batch with
DistributedDataParallel, which averages the ranks' gradients: the same computation as one process with the
same ``--batch`` up to float rounding (the gradient sums run in another order; after a few steps the weights
agree to about 1e-6, and such differences may grow over a long run). With ``--dropout`` the ranks draw their
masks from their own random streams, so the run differs from one process as another seed would.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .._structure import flatten, map_structure
from .checkpoint import (
    Checkpoint,
    finished_reason,
    load_checkpoint,
    occupied_message,
    resolve_checkpoint,
    save_checkpoint,
)
from .distributed import Dist, cpu_threads, setup
from .errors import EXIT_CHECKPOINT, EXIT_INTERRUPTED, EXIT_USAGE, CLIError
from .kernels import prepare_kernels
from .models import build_model
from .plot import write_loss_curve
from .progress import Progress, format_duration
from .registry import CELL_TYPES, LAYER_TYPES
from .sample import check_prime
from .tasks import MODEL_KEYS, StopFlag, evaluate, loss_of, make_task, next_batch, report, restore, rng_state

__all__ = ["add_parser", "run", "DEFAULTS"]

# Options that define the model, the data layout or the optimisation: fixed for the life of a run, so that a
# resumed run computes exactly what an uninterrupted one would. Everything else may change on --resume.
FIXED_KEYS = ("task", "embed_size", "seq_len", "batch", "val_fraction", "lr", "clip", "seed", *MODEL_KEYS)

DEFAULTS: dict[str, dict[str, Any]] = {
    "char": {
        "cell": "basic_lstm", "num_layers": 2, "hidden_size": 128, "embed_size": 32, "dropout": 0.0,
        "seq_len": 64, "batch": 32, "steps": 1500, "lr": 3e-3, "clip": 1.0, "val_fraction": 0.05,
        "eval_every": 250, "log_every": 50, "eval_chars": 40_000, "sample_length": 200, "out": "runs/char",
    },
    "adding": {
        "cell": "basic_lstm", "num_layers": 2, "hidden_size": 64, "embed_size": None, "dropout": 0.0,
        "seq_len": 100, "batch": 64, "steps": 3000, "lr": 2e-3, "clip": 1.0, "val_fraction": None,
        "eval_every": 100, "log_every": 50, "eval_size": 1000, "out": "runs/adding",
    },
}  # fmt: skip
COMMON = {"forget_bias": 1.0, "peepholes": False, "cell_clip": None, "num_proj": None, "seed": 0, "keep": 2,
          "device": "auto", "temperature": 0.8, "sample_prime": "\n", "layer": None}  # fmt: skip
RUN_KEYS = ("eval_every", "save_every", "log_every", "keep", "eval_chars", "eval_size", "sample_length", "sample_prime",
            "temperature", "target")  # fmt: skip


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a character language model (default: on the Python stdlib) or the adding problem",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a = p.add_argument
    a("--task", choices=["char", "adding"], help="char (default): language model; adding: the adding problem")
    a("--data", nargs="+", metavar="PATH", help="UTF-8 text files (default: Python standard library sources)")
    m = p.add_argument_group("model").add_argument
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--cell", choices=sorted(CELL_TYPES), help="TF1 cell stacked in a MultiRNNCell (basic_lstm)")
    kind.add_argument("--layer", choices=sorted(LAYER_TYPES), help="torch.nn-style rnnkit layer (rnnkit.LSTM, ...)")
    m("--num-layers", "--layers", type=int, dest="num_layers", help="stacked layers (2)")
    m("--hidden-size", type=int, help="units per layer (char 128, adding 64)")
    m("--embed-size", type=int, help="character embedding size (32)")
    m("--dropout", type=float, help="dropout on each layer's output, 0 <= p < 1 (0)")
    m("--forget-bias", type=float, help="LSTM cells' forget bias (1.0)")
    m("--peepholes", action="store_const", const=True, help="--cell lstm: peephole connections")
    m("--cell-clip", type=float, help="--cell lstm: clip the cell state to [-v, v]")
    m("--num-proj", type=int, help="--cell lstm: project the output to this size")
    t = p.add_argument_group("training").add_argument
    t("--seq-len", type=int, help="time steps per batch (BPTT length; char 64, adding: T = 100)")
    t("--batch", type=int, help="global batch (rows), split across torchrun ranks (char 32, adding 64)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimizer steps in all (char 1500, adding 3000)")
    length.add_argument("--epochs", type=float, help="passes over the training text (char task)")
    t("--lr", type=float, help="Adam learning rate (char 3e-3, adding 2e-3)")
    t("--clip", type=float, help="clip the gradient norm to this (1.0); 0 = off")
    t("--val-fraction", type=float, help="held-out tail of the text (0.05)")
    t("--seed", type=int, help="random seed (0)")
    t("--device", help="auto (default: cuda if available), cpu, cuda, cuda:N")
    t(
        "--threads",
        type=int,
        default=1,
        help="CPU threads per process (1: a recurrent step is many small ops, where "
        "more threads cost more than they give, badly so on a busy machine; raise it for large hidden sizes)",
    )
    t("--target", type=float, help="stop once the held-out metric (bits per char, or MSE) is at most this")
    r = p.add_argument_group("run").add_argument
    r("--out", help="run directory for checkpoints and the loss curve (runs/char, runs/adding)")
    r("--resume", nargs="?", const="", metavar="DIR", help="continue the run in --out (or DIR) from its checkpoint")
    r("--eval-every", type=int, help="evaluate (and print a sample) every N steps (char 250, adding 100)")
    r("--save-every", type=int, help="checkpoint every N steps (default: --eval-every)")
    r("--log-every", type=int, help="progress line every N steps when stderr is not a terminal (50)")
    r("--keep", type=int, help="checkpoints kept (2)")
    r("--eval-chars", type=int, help="held-out characters per evaluation (40000)")
    r("--eval-size", type=int, help="adding: held-out sequences (1000)")
    r("--sample-length", type=int, help="characters sampled at each evaluation (200; 0 = none)")
    r("--sample-prime", help="text the samples start from (a newline)")
    r("--temperature", type=float, help="sampling temperature (0.8)")
    p.set_defaults(run=run)


# ---- options -----------------------------------------------------------------------------------------------------
def _flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint config flattened back to option names."""
    model = config["model"]
    return {
        "task": model["task"],
        "embed_size": model.get("embed_size"),
        "data": config["data"].get("paths"),
        **model["core"],
        **config["train"],
    }


def resolve_options(args: argparse.Namespace, ckpt: Checkpoint | None) -> dict[str, Any]:
    """Command-line options over the checkpoint's (which must agree on FIXED_KEYS) over the defaults."""
    given = {k: v for k, v in vars(args).items() if v is not None and k not in ("run", "command", "resume", "threads")}
    if ckpt is None:
        task = given.get("task", "char")
        opts = {**COMMON, **DEFAULTS[task], **given, "task": task}
        if opts["layer"]:
            opts["cell"] = None
    else:
        saved = _flat_config(ckpt.config)
        for key in FIXED_KEYS:
            if key in given and given[key] != saved.get(key):
                raise CLIError(
                    f"checkpoint {ckpt.path} does not match the requested model: it has {key}={saved.get(key)!r}, "
                    f"the command line asks for {given[key]!r} (leave the option out to use the checkpoint's)",
                    EXIT_CHECKPOINT,
                )
        opts = {**COMMON, **DEFAULTS[saved["task"]], **ckpt.config["run"], **saved, **given}
    if "epochs" in given:
        opts.pop("steps", None)
    _check_options(opts)
    return opts


def _check_options(o: dict[str, Any]) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise CLIError(message, EXIT_USAGE)

    positive = ("num_layers", "hidden_size", "seq_len", "batch", "eval_every", "log_every", "keep", "steps",
                "eval_chars", "eval_size", "save_every", "embed_size")  # fmt: skip
    for key in positive:
        need(o.get(key) is None or o[key] >= 1, f"--{key.replace('_', '-')} must be >= 1, got {o.get(key)}")
    need(0.0 <= o["dropout"] < 1.0, f"--dropout must be in [0, 1), got {o['dropout']}")
    need(o["lr"] > 0, f"--lr must be > 0, got {o['lr']}")
    need(0 <= o["seed"] < 2**31, f"--seed must be in [0, 2**31), got {o['seed']}")
    need(o["clip"] >= 0, f"--clip must be >= 0, got {o['clip']}")
    need(o.get("temperature", 1) >= 0, f"--temperature must be >= 0, got {o.get('temperature')}")
    need(o.get("epochs") is None or o["epochs"] > 0, f"--epochs must be > 0, got {o.get('epochs')}")
    if o["task"] == "char":
        need(0.0 < o["val_fraction"] < 0.5, f"--val-fraction must be in (0, 0.5), got {o['val_fraction']}")
    else:
        need(o["seq_len"] >= 2, f"--task adding needs --seq-len >= 2, got {o['seq_len']}")
        need(o.get("epochs") is None, "--epochs: the adding problem draws fresh data every step; use --steps")
        need(not o.get("data"), "--data: the adding problem makes its own data; leave --data out")
    lstm_only = [k for k in ("peepholes", "cell_clip", "num_proj") if o.get(k)]
    need(
        not lstm_only or o.get("cell") == "lstm",
        f"--{lstm_only[0].replace('_', '-')} needs --cell lstm" if lstm_only else "",
    )


def run(args: argparse.Namespace) -> int:
    with cpu_threads(args.threads):
        d = setup(args.device or "auto")
        try:
            return _train(args, d)
        finally:
            d.close()


def _train(args: argparse.Namespace, d: Dist) -> int:
    ckpt = None
    out_dir = args.out
    if args.resume is not None:
        path = args.resume or out_dir or DEFAULTS[args.task or "char"]["out"]
        ckpt = load_checkpoint(path)
        out_dir = out_dir or (path if os.path.isfile(os.path.join(path, "latest")) else os.path.dirname(ckpt.path))
    o = resolve_options(args, ckpt)
    out_dir = out_dir or o["out"]
    o["out"] = out_dir
    if ckpt is None and os.path.exists(os.path.join(out_dir, "latest")):
        raise CLIError(occupied_message(out_dir))
    if o["batch"] % d.world_size:
        raise CLIError(f"--batch {o['batch']} must be divisible by the number of processes ({d.world_size})")

    task = make_task(o, ckpt)
    torch.manual_seed(o["seed"])  # the same initial weights on every rank (DDP broadcasts rank 0's anyway)
    model = build_model(task.model_config).to(d.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=o["lr"])
    torch.manual_seed(o["seed"] + d.rank)  # per-rank dropout streams
    start, carry, history, acc = 0, None, {"train": [], "val": []}, [0.0, 0]
    if ckpt is not None:
        start, carry, history, acc = restore(ckpt, model, optimizer, o["batch"], d)
        finished = finished_reason(start, task.total_steps, history, o, task.metric)
        if finished:
            if d.is_main:
                print(f"rnnkit train: the run in {out_dir} is finished: {finished}")
            return 0
    # Build (first use) or load the compiled kernels now, not inside the first timed step.
    prepare_kernels(d.device, announce=d.is_main)
    net: nn.Module = model
    if d.enabled:
        net = DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)

    if task.name == "char" and o.get("sample_length"):
        if o["sample_prime"] == COMMON["sample_prime"] and o["sample_prime"] not in task.extra["vocab"]:
            o["sample_prime"] = task.extra["vocab"][0]  # a text without newlines: start from one of its characters
        check_prime(o["sample_prime"], task.extra["vocab"], "--sample-prime")
    total = task.total_steps
    save_every = o.get("save_every") or o["eval_every"]
    log = d.is_main
    progress = Progress(total, start, task.unit, o["log_every"]) if log else None
    if log:
        n_params = sum(p.numel() for p in model.parameters())
        core = f"--layer {o['layer']}" if o.get("layer") else f"--cell {o['cell']}"
        print(
            f"rnnkit train: {task.name} task, {core} x{o['num_layers']} layers of {o['hidden_size']}, "
            f"{n_params:,} parameters, {d.world_size} process(es) on {d.device}; data: {task.data_config['source']}"
            + (f"; resuming at step {start}" if ckpt else ""),
            file=sys.stderr,
        )

    def checkpoint(step: int) -> str:
        flat = (
            None
            if carry is None
            else [d.gather_rows(leaf, model.core.state_batch_dim).cpu() for leaf in flatten(carry)]
        )
        rngs = d.gather_objects(rng_state(d.device))
        path = ""
        if d.is_main:
            config = {
                "format": "rnnkit-train",
                "version": 1,
                "model": task.model_config,
                "train": {k: o[k] for k in ("seq_len", "batch", "lr", "clip", "seed", "val_fraction")},
                "data": task.data_config,
                "run": {k: o.get(k) for k in RUN_KEYS} | {"steps": total},
            }
            trainer = {"step": step, "rng": rngs, "carry": flat, "history": history, "acc": acc,
                       "world_size": d.world_size}  # fmt: skip
            path = save_checkpoint(
                out_dir, step, model.state_dict(), config, optimizer.state_dict(), trainer, o["keep"]
            )
        d.barrier()
        return path

    last_val, step, t0 = None, start, time.perf_counter()
    with StopFlag() as stop:
        for step in range(start + 1, total + 1):
            batch, fresh = next_batch(task, o, step - 1, d)
            if fresh:
                carry = None  # a new epoch: row b no longer continues where it stopped
            loss, state = loss_of(net, task, batch, carry)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if o["clip"] > 0:
                nn.utils.clip_grad_norm_(model.parameters(), o["clip"])
            optimizer.step()
            carry = None if state is None else map_structure(torch.Tensor.detach, state)
            flags = d.mean(torch.tensor([loss.item(), float(stop.requested)], device=d.device))
            value = float(flags[0]) / (math.log(2) if task.metric == "bpc" else 1.0)
            acc[0] += value
            acc[1] += 1
            if step % o["log_every"] == 0 or step == total:
                history["train"].append([step, acc[0] / acc[1]])
                acc[:] = [0.0, 0]
            if progress:
                shown = f"{task.metric} {value:.4f}" + ("" if last_val is None else f"  val {last_val:.4f}")
                progress.update(step, shown, task.units_per_step)
            done = step == total
            if step % o["eval_every"] == 0 or done:
                last_val = evaluate(model, task, o, d.device)
                history["val"].append([step, last_val])
                if log:
                    report(progress, model, task, o, step, last_val, out_dir, history)
                if o.get("target") is not None and last_val <= o["target"]:
                    if log:
                        progress.message(f"held-out {task.metric} {last_val:.4f} <= --target {o['target']}: stopping")
                    done = True
            if step % save_every == 0 or done or flags[1] > 0:
                path = checkpoint(step)
            if flags[1] > 0:
                if log:
                    progress.message(f"interrupted at step {step}: checkpoint {path}; continue with --resume")
                return EXIT_INTERRUPTED
            if done:
                break
    if log:
        progress.close()
        curve = write_loss_curve(out_dir, history["train"], history["val"], task.metric)
        how = "drawn with matplotlib" if curve.endswith(".png") else "SVG drawn by rnnkit: matplotlib is not installed"
        wall = time.perf_counter() - t0
        final = f"{last_val:.4f}" if last_val is not None else "n/a"
        print(f"done: step {step}/{total} in {format_duration(wall)} ({wall:.1f} s); held-out {task.metric} {final}")
        print(f"checkpoint: {resolve_checkpoint(out_dir)}; loss curve: {curve} ({how})")
    return 0
