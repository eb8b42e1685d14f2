"""Shared pieces of the command-line tests: a tiny model configuration and a small text corpus."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

TINY = ["--hidden-size", "16", "--embed-size", "8", "--seq-len", "16", "--batch", "4", "--sample-length", "0",
        "--eval-chars", "300", "--device", "cpu", "--threads", "1"]  # fmt: skip
TEXT = "the cat sat on the mat; the dog sat on the log.\n" * 100


def write_corpus(tmp_path, text: str = TEXT) -> str:
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return str(path)


def latest_weights(run_dir) -> dict[str, torch.Tensor]:
    with open(os.path.join(run_dir, "latest")) as f:
        return load_file(os.path.join(run_dir, f.read().strip(), "model.safetensors"))


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def cli_env() -> dict[str, str]:
    """The environment for `python -m rnnkit` subprocesses: this checkout's rnnkit, one thread each."""
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return env


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rnnkit", *args], capture_output=True, text=True, timeout=timeout, env=cli_env()
    )
