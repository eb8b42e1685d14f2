"""Checkpoints written so that a crash at any instant loses nothing.

A run directory holds ``step-00000200/`` checkpoints and a ``latest`` file naming the newest. One
checkpoint is four files:

* ``model.safetensors``: the weights (``state_dict`` names, e.g. ``core.rnn.cell_0.kernel``);
* ``config.json``: the model, data and training configuration (the model is rebuilt from it);
* ``optimizer.pt``: ``torch.save`` of the optimizer's ``state_dict`` (loaded with ``weights_only=True``);
* ``trainer.pt``: step, RNG states of every rank, the carried recurrent state, the loss history.

Each file is written to a temporary name, fsync-ed and renamed into a temporary directory; the directory is
fsync-ed and renamed to ``step-N``; only then is ``latest`` replaced (temp file, fsync, ``os.replace``). A
reader therefore always finds a complete checkpoint behind ``latest``.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .errors import EXIT_CHECKPOINT, CLIError

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "resolve_checkpoint",
    "Checkpoint",
    "atomic_write",
    "load_weights",
    "occupied_message",
    "finished_reason",
]

_STEP_DIR = re.compile(r"^step-(\d+)$")


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Write ``path`` via ``write(tmp_path)``, fsync it, and rename it into place atomically."""
    tmp = f"{path}.tmp-{os.getpid()}"
    write(tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def _write_text(text: str) -> Callable[[str], None]:
    def write(p: str) -> None:
        with open(p, "w", encoding="utf-8") as f:
            f.write(text)

    return write


def save_checkpoint(
    run_dir: str,
    step: int,
    weights: dict[str, torch.Tensor],
    config: dict[str, Any],
    optimizer_state: dict[str, Any],
    trainer_state: dict[str, Any],
    keep: int = 2,
) -> str:
    """Write checkpoint ``step`` into ``run_dir``, point ``latest`` at it, keep the newest ``keep``; return it."""
    os.makedirs(run_dir, exist_ok=True)
    name = f"step-{step:08d}"
    final = os.path.join(run_dir, name)
    tmp_dir = os.path.join(run_dir, f"{name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    os.makedirs(tmp_dir)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in weights.items()}
    atomic_write(os.path.join(tmp_dir, "model.safetensors"), lambda p: save_file(tensors, p, {"format": "pt"}))
    atomic_write(os.path.join(tmp_dir, "config.json"), _write_text(json.dumps(config, indent=2, sort_keys=True)))
    atomic_write(os.path.join(tmp_dir, "optimizer.pt"), lambda p: torch.save(optimizer_state, p))
    atomic_write(os.path.join(tmp_dir, "trainer.pt"), lambda p: torch.save(trainer_state, p))
    if os.path.exists(final):  # the same step saved again (a resumed run interrupted at once): swap it out
        old = f"{final}.old-{os.getpid()}"
        os.replace(final, old)
        shutil.rmtree(old)
    os.replace(tmp_dir, final)
    _fsync_dir(run_dir)
    atomic_write(os.path.join(run_dir, "latest"), _write_text(name + "\n"))
    _prune(run_dir, keep, name)
    return final


def _prune(run_dir: str, keep: int, current: str) -> None:
    steps = sorted(n for n in os.listdir(run_dir) if _STEP_DIR.match(n))
    for n in steps[: max(0, len(steps) - keep)]:
        if n != current:
            shutil.rmtree(os.path.join(run_dir, n), ignore_errors=True)
    for n in os.listdir(run_dir):  # temporary directories of killed runs
        if ".tmp-" in n and not n.endswith(f".tmp-{os.getpid()}"):
            shutil.rmtree(os.path.join(run_dir, n), ignore_errors=True)


def resolve_checkpoint(path: str) -> str:
    """A checkpoint directory from itself or from a run directory (through its ``latest`` file)."""
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    latest = os.path.join(path, "latest")
    if os.path.isfile(latest):
        with open(latest, encoding="utf-8") as f:
            target = os.path.join(path, f.read().strip())
        if os.path.isfile(os.path.join(target, "config.json")):
            return target
        raise CLIError(f"{latest} names {target}, which is not a complete checkpoint", EXIT_CHECKPOINT)
    raise CLIError(f"no checkpoint at {path!r} (expected a run directory with a 'latest' file)", EXIT_CHECKPOINT)


@dataclass
class Checkpoint:
    path: str
    config: dict[str, Any]
    weights: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None
    trainer: dict[str, Any] | None


def _load_tensors(path: str) -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only. A file that holds other
    pickled objects (which could run code when unpickled) is refused with a one-line CLIError."""
    try:
        with warnings.catch_warnings():
            # torch's note on a file's pickle protocol is noise next to the refusal below (or to a good load).
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message is a page of advice; the line naming the offending global or opcode is the news.
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        why = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln), lines[-1] if lines else "")
        raise CLIError(
            f"{path} holds pickled Python objects, not only tensors ({why}); rnnkit loads checkpoints with "
            "weights_only=True and runs no code from them: it was not written by rnnkit train, or was altered",
            EXIT_CHECKPOINT,
        ) from None


def load_checkpoint(path: str, full: bool = True) -> Checkpoint:
    """Load a checkpoint (``full=False``: config and weights only, for sampling)."""
    ckpt = resolve_checkpoint(path)
    try:
        with open(os.path.join(ckpt, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
        weights = load_file(os.path.join(ckpt, "model.safetensors"))
        optimizer = trainer = None
        if full:
            optimizer = _load_tensors(os.path.join(ckpt, "optimizer.pt"))
            trainer = _load_tensors(os.path.join(ckpt, "trainer.pt"))
    except (OSError, ValueError, RuntimeError) as err:
        raise CLIError(f"checkpoint {ckpt} is incomplete or damaged: {err}", EXIT_CHECKPOINT) from None
    if config.get("format") != "rnnkit-train" or "model" not in config:
        raise CLIError(f"{ckpt}/config.json is not an rnnkit train configuration", EXIT_CHECKPOINT)
    return Checkpoint(ckpt, config, weights, optimizer, trainer)


def load_weights(model: torch.nn.Module, ckpt: Checkpoint) -> None:
    """Load ``ckpt``'s weights into ``model`` (built from its config); a one-line error when they do not fit."""
    device = next(model.parameters()).device
    try:
        model.load_state_dict({k: v.to(device) for k, v in ckpt.weights.items()})
    except RuntimeError as err:
        details = " ".join(line.strip() for line in str(err).strip().splitlines()[:3])
        raise CLIError(
            f"checkpoint {ckpt.path}: the weights do not match its config.json: {details}", EXIT_CHECKPOINT
        ) from None


# ---- the state of a run directory ----------------------------------------------------------------------------
def occupied_message(out_dir: str) -> str:
    """Why a new run cannot start in ``out_dir``, which holds one, and what to do instead."""
    try:
        ckpt = load_checkpoint(out_dir)
    except CLIError as err:
        return f"{out_dir} already holds a run, with a checkpoint that does not load ({err}); choose another --out"
    step, total = ckpt.trainer["step"], ckpt.config["run"]["steps"]
    if step >= total:
        return (
            f"{out_dir} already holds a finished run (step {step} of {total}): choose another --out for a new run, "
            f"or train that one further with --resume --steps N (N > {step})"
        )
    return (
        f"{out_dir} already holds a run stopped at step {step} of {total}: continue it with --resume, "
        "or choose another --out"
    )


def finished_reason(step: int, total: int, history: dict[str, list], o: dict[str, Any], metric: str) -> str:
    """Why a resumed run at ``step`` has nothing left to do ("" when it has): all steps done, or --target met."""
    if step >= total:
        return f"it is at step {step} of --steps {total}; nothing to train (give --steps N > {step} to go on)"
    target, val = o.get("target"), history["val"]
    if target is not None and val and val[-1][0] == step and val[-1][1] <= target:
        return (
            f"its held-out {metric} {val[-1][1]:.4f} met --target {target} at step {step}; nothing to train "
            "(give a lower --target to train it further)"
        )
    return ""
