"""``rnnkit train``'s two tasks and the pieces of one training run: the task's data, loss, held-out metric and
report (`Task`, `make_task`), batches, the stop flag for Ctrl-C/SIGTERM, and restoring a checkpoint's loop state.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._structure import pack_as
from .checkpoint import Checkpoint, load_weights
from .data import Stream, adding_batch, load_corpus, split
from .distributed import Dist
from .errors import EXIT_CHECKPOINT, CLIError
from .plot import write_loss_curve
from .progress import Progress
from .sample import generate

__all__ = ["MODEL_KEYS", "Task", "make_task", "StopFlag", "evaluate", "loss_of", "next_batch", "rng_state", "restore",
           "report", "set_rng_state"]  # fmt: skip

# Options that define the model (part of every checkpoint's model config).
MODEL_KEYS = ("cell", "layer", "num_layers", "hidden_size", "dropout", "forget_bias", "peepholes", "cell_clip",
              "num_proj")  # fmt: skip
_EVAL_ROWS = 64  # held-out text is read as up to this many contiguous rows at once
_ADDING_EVAL_SEED = 2**32 - 1  # the held-out set's generator: seed * 2**32 + this; training steps use seed * 2**32 + s


@dataclass
class Task:
    """What differs between the two tasks: the data, the loss, the evaluation and the metric's name."""

    name: str
    model_config: dict[str, Any]
    data_config: dict[str, Any]
    metric: str  # "bpc" or "mse"
    unit: str  # progress unit
    total_steps: int
    units_per_step: int
    extra: dict[str, Any] = field(default_factory=dict)


def make_task(o: dict[str, Any], ckpt: Checkpoint | None) -> Task:
    """The run's task from its options: the character model (``--task char``) or the adding problem."""
    return _char_task(o, ckpt) if o["task"] == "char" else _adding_task(o)


def _char_task(o: dict[str, Any], ckpt: Checkpoint | None) -> Task:
    corpus = load_corpus(o.get("data"))
    if ckpt is not None and ckpt.config["data"]["sha256"] != corpus.sha256:
        raise CLIError(
            f"checkpoint {ckpt.path} was trained on other data ({ckpt.config['data']['source']}); "
            "--resume needs the same --data files",
            EXIT_CHECKPOINT,
        )
    ids = corpus.encode(corpus.text)
    train_ids, val_ids = split(ids, o["val_fraction"])
    stream = Stream(train_ids, o["batch"], o["seq_len"], "training text (the corpus minus the held-out part)")
    steps = o.get("steps") or max(1, math.ceil(o["epochs"] * stream.batches_per_epoch))
    return Task(
        "char",
        {"task": "char", "vocab": corpus.vocab, "embed_size": o["embed_size"], "core": _core(o)},
        {"source": corpus.source, "sha256": corpus.sha256, "chars": len(corpus.text), "paths": _abs(o.get("data"))},
        "bpc",
        "chars",
        steps,
        o["batch"] * o["seq_len"],
        {"stream": stream, "val": val_ids[: o["eval_chars"] + 1], "vocab": corpus.vocab},
    )


def _abs(paths: list[str] | None) -> list[str] | None:
    return [os.path.abspath(p) for p in paths] if paths else None


def _adding_task(o: dict[str, Any]) -> Task:
    g = torch.Generator().manual_seed(o["seed"] * 2**32 + _ADDING_EVAL_SEED)
    return Task(
        "adding",
        {"task": "adding", "core": _core(o)},
        {"source": f"adding problem, T={o['seq_len']}"},
        "mse",
        "seqs",
        o["steps"],
        o["batch"],
        {"val": adding_batch(o["eval_size"], o["seq_len"], g)},
    )


def _core(o: dict[str, Any]) -> dict[str, Any]:
    return {k: o.get(k) for k in MODEL_KEYS}


class StopFlag:
    """Ctrl-C / SIGTERM ask for a stop at the next step boundary (a second Ctrl-C aborts at once)."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():  # signals can only be caught there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def evaluate(model: nn.Module, task: Task, o: dict[str, Any], device: torch.device) -> float:
    """The held-out metric: bits per character (state carried through the held-out text), or MSE."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            if task.name == "adding":
                x, y = task.extra["val"]
                preds = torch.cat([model(xb.to(device))[0].cpu() for xb in x.split(500)])
                return float(torch.mean((preds - y) ** 2))
            ids = task.extra["val"]
            rows = min(_EVAL_ROWS, max(1, (len(ids) - 1) // o["seq_len"]))
            length = (len(ids) - 1) // rows
            x = ids[: rows * length].view(rows, length).to(device)  # (rows, L)
            y = ids[1 : rows * length + 1].view(rows, length).to(device)
            state, total = None, 0.0
            for xs, ys in zip(x.split(o["seq_len"], 1), y.split(o["seq_len"], 1), strict=True):
                logits, state = model(xs, state)  # (rows, t, V)
                total += float(nn.functional.cross_entropy(logits.flatten(0, 1), ys.flatten(), reduction="sum"))
            return total / (rows * length) / math.log(2)
    finally:
        model.train(was)


def loss_of(model: nn.Module, task: Task, batch: Any, carry: Any) -> tuple[torch.Tensor, Any]:
    x, y = batch
    out, state = model(x, carry)
    if task.name == "adding":
        return nn.functional.mse_loss(out, y), None
    return nn.functional.cross_entropy(out.flatten(0, 1), y.flatten()), state  # mean over (b, T)


def next_batch(task: Task, o: dict[str, Any], step: int, d: Dist) -> tuple[Any, bool]:
    rows = d.rows(o["batch"])
    if task.name == "adding":
        g = torch.Generator().manual_seed(o["seed"] * 2**32 + step)
        x, y = adding_batch(o["batch"], o["seq_len"], g)  # the global batch, the same on every rank
        return (x[rows].to(d.device), y[rows].to(d.device)), True
    x, y, fresh = task.extra["stream"].batch(step, rows)
    return (x.to(d.device), y.to(d.device)), fresh


def rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def restore(ckpt: Checkpoint, model: nn.Module, optimizer: torch.optim.Optimizer, batch: int, d: Dist):
    """Load weights, optimizer, this rank's RNG state and rows of the carried state; returns the loop's state."""
    load_weights(model, ckpt)
    try:
        optimizer.load_state_dict(ckpt.optimizer)
    except (RuntimeError, ValueError, KeyError) as err:
        raise CLIError(f"checkpoint {ckpt.path}: the optimizer state does not fit: {err}", EXIT_CHECKPOINT) from None
    tr = ckpt.trainer
    if len(tr["rng"]) == d.world_size:
        set_rng_state(tr["rng"][d.rank], d.device)
    elif d.is_main:
        print(f"note: the checkpoint comes from {len(tr['rng'])} process(es): dropout streams restart", file=sys.stderr)
    carry = None
    if tr["carry"] is not None:  # saved for the global batch: take this rank's rows
        dim, rows = model.core.state_batch_dim, d.rows(batch)
        leaves = [leaf.to(d.device).narrow(dim, rows.start, rows.stop - rows.start) for leaf in tr["carry"]]
        carry = pack_as(model.core.zero_state(batch, d.device), leaves)
    return tr["step"], carry, tr["history"], list(tr["acc"])


def report(progress: Progress, model: nn.Module, task: Task, o: dict[str, Any], step: int, val: float,
            out_dir: str, history: dict[str, list]) -> None:  # fmt: skip
    """Print an evaluation and a sample (stdout), and redraw the loss curve."""
    progress.clear()
    if task.name == "adding":
        print(f"[step {step}] held-out MSE {val:.5f} (always answering 1.0 scores 0.167)", flush=True)
    else:
        print(f"[step {step}] held-out {val:.4f} bits per character", flush=True)
        if o.get("sample_length"):
            g = torch.Generator().manual_seed(o["seed"] * 1_000_003 + step)
            text = "".join(generate(model, task.extra["vocab"], o["sample_prime"], o["sample_length"],
                                    o["temperature"], g))  # fmt: skip
            print(f"--- sample at step {step} ---\n{o['sample_prime']}{text}\n---", flush=True)
    os.makedirs(out_dir, exist_ok=True)
    write_loss_curve(out_dir, history["train"], history["val"], task.metric)
