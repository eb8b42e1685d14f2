"""Checkpoints survive a hard kill and a Ctrl-C, and --resume gives exactly the uninterrupted run's weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from cli_helpers import TINY, cli_env, latest_weights, max_diff, write_corpus
from rnnkit.cli import main
from rnnkit.cli.checkpoint import load_checkpoint

# Dropout on, so that restoring the RNG state matters as much as the weights, optimizer and carried state.
ARGS = [*TINY, "--dropout", "0.2", "--save-every", "3", "--eval-every", "1000", "--log-every", "1"]


def _start(data: str, out: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "rnnkit", "train", "--data", data, *ARGS, "--steps", "100000", "--out", out],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=cli_env(),
    )  # fmt: skip


def _wait_for_step(proc: subprocess.Popen, step: int) -> None:
    for line in proc.stderr:
        if line.startswith(f"step {step}/"):
            return
    raise AssertionError(f"the training process ended before step {step} (code {proc.wait()})")


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, how):
    data = write_corpus(tmp_path)
    out = str(tmp_path / "run")
    with _start(data, out) as proc:
        try:
            _wait_for_step(proc, 7)
            proc.send_signal(getattr(signal, how))
            err = proc.stderr.read()
            code = proc.wait(timeout=60)
        finally:
            proc.kill()
    stopped = load_checkpoint(out).trainer["step"]
    if how == "SIGKILL":
        assert code == -signal.SIGKILL
        assert stopped >= 6 and stopped % 3 == 0  # the last periodic checkpoint survived intact
    else:
        assert code == 130 and f"interrupted at step {stopped}" in err  # saved at the step it stopped on
        assert stopped >= 7
    assert not [n for n in os.listdir(out) if ".tmp-" in n] or how == "SIGKILL"
    total = stopped + 4
    assert main(["train", "--resume", "--out", out, "--steps", str(total)]) == 0
    reference = str(tmp_path / "reference")
    assert main(["train", "--data", data, *ARGS, "--steps", str(total), "--out", reference]) == 0
    assert max_diff(latest_weights(out), latest_weights(reference)) == 0.0  # bit for bit
    resumed, straight = load_checkpoint(out).trainer, load_checkpoint(reference).trainer
    assert resumed["step"] == straight["step"] == total
    assert resumed["history"]["train"] == straight["history"]["train"]


def test_resume_extends_a_finished_run_exactly(tmp_path):
    data = write_corpus(tmp_path)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert main(["train", "--data", data, *ARGS, "--steps", "10", "--out", a]) == 0
    assert main(["train", "--data", data, *ARGS, "--steps", "5", "--out", b]) == 0
    assert main(["train", "--resume", b, "--steps", "10"]) == 0
    assert max_diff(latest_weights(a), latest_weights(b)) == 0.0
    ckpt = load_checkpoint(b)
    assert sorted(os.listdir(b)) == ["latest", "loss.svg" if os.path.exists(f"{b}/loss.svg") else "loss.png",
                                     "step-00000009", "step-00000010"]  # fmt: skip
    assert set(os.listdir(ckpt.path)) == {"model.safetensors", "config.json", "optimizer.pt", "trainer.pt"}
