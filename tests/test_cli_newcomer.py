"""What a first-time user meets: the kernels' first build announced and kept off the clock, a finished run
and an occupied --out explained, and a checkpoint holding a pickle refused in one line without running it."""

from __future__ import annotations

import os
import pickle
import re

import pytest
import torch

from cli_helpers import TINY, write_corpus
from rnnkit.cli import main
from rnnkit.cli.checkpoint import resolve_checkpoint
from rnnkit.engine import _ext, twin

ARGS = [*TINY, "--eval-every", "3", "--log-every", "1"]
BUILD_S = 3.0  # the pretend build's duration: far above the tiny run's own few tenths of a second


def _fake_extension(monkeypatch, tmp_path, cached: bool) -> list[float]:
    """A fresh "not tried yet" extension state whose build sleeps BUILD_S and yields the twin kernels;
    ``cached``: whether a built library is already in the (temporary) cache directory."""
    cache = tmp_path / "ext"
    cache.mkdir()
    if cached:
        (cache / "rnnkit_fused.so").write_bytes(b"")
    calls: list[float] = []

    def build():
        calls.append(BUILD_S if not cached else 0.0)
        if not cached:
            import time

            time.sleep(BUILD_S)
        return twin

    monkeypatch.delenv("RNNKIT_NO_COMPILE", raising=False)
    monkeypatch.setattr(_ext, "_state", {"tried": False, "ops": None, "error": None, "build_s": None, "path": None})
    monkeypatch.setattr(_ext, "cache_dir", lambda src: cache)
    monkeypatch.setattr(_ext, "_build", build)
    return calls


@pytest.mark.parametrize("cached", [False, True])
def test_first_build_is_announced_and_kept_out_of_the_clock(tmp_path, monkeypatch, capsys, cached):
    calls = _fake_extension(monkeypatch, tmp_path, cached)
    data = write_corpus(tmp_path)
    assert main(["train", "--data", data, *ARGS, "--steps", "6", "--out", str(tmp_path / "run")]) == 0
    out, err = capsys.readouterr()
    assert calls == [BUILD_S if not cached else 0.0]  # loaded once, by the command, whether built or cached
    lines = err.splitlines()
    announced = [i for i, line in enumerate(lines) if "compiling the fused CPU kernels" in line]
    first_step = next(i for i, line in enumerate(lines) if line.startswith("step 1/6"))
    if cached:
        assert announced == []
    else:
        assert len(announced) == 1 and announced[0] < first_step
        assert str(tmp_path / "ext") in lines[announced[0]]  # says where the build is cached
    # The clock starts after the build: neither the wall time nor the first ETA carries its seconds.
    wall = float(re.search(r"done: step 6/6 in \S+ \(([\d.]+) s\)", out).group(1))
    assert wall < BUILD_S, out
    eta = re.search(r"ETA (\d+)s", lines[first_step])
    assert eta is not None and int(eta.group(1)) < BUILD_S, lines[first_step]


def test_sample_announces_a_first_build_too(tmp_path, monkeypatch, capsys):
    data = write_corpus(tmp_path)
    run = str(tmp_path / "run")
    assert main(["train", "--data", data, *ARGS, "--steps", "3", "--out", run]) == 0
    calls = _fake_extension(monkeypatch, tmp_path, cached=False)  # as if the kernels were never built here
    capsys.readouterr()
    assert main(["sample", run, "--prime", "the ", "--length", "20", "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert calls == [BUILD_S] and len(out) == len("the ") + 20 + 1
    assert [line for line in err.splitlines() if "compiling the fused CPU kernels" in line] != []


def test_resuming_a_finished_run_says_so_and_trains_nothing(tmp_path, capsys):
    data = write_corpus(tmp_path)
    out = str(tmp_path / "run")
    assert main(["train", "--data", data, *ARGS, "--steps", "6", "--out", out]) == 0
    before = resolve_checkpoint(out)
    capsys.readouterr()
    for extra in ([], ["--steps", "4"]):
        assert main(["train", "--resume", out, *extra]) == 0
        stdout = capsys.readouterr().out
        total = extra[1] if extra else "6"
        assert stdout.strip() == (
            f"rnnkit train: the run in {out} is finished: it is at step 6 of --steps {total}; nothing to train "
            "(give --steps N > 6 to go on)"
        )
        assert "done:" not in stdout and "n/a" not in stdout
        assert resolve_checkpoint(out) == before  # nothing written
    # A run stopped by --target is finished too, until the target is lowered.
    tgt = str(tmp_path / "target")
    assert main(["train", "--data", data, *ARGS, "--steps", "30", "--target", "100", "--out", tgt]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", tgt]) == 0
    assert re.fullmatch(
        r"rnnkit train: the run in .* is finished: its held-out bpc [\d.]+ met --target 100\.0 at step 3; "
        r"nothing to train \(give a lower --target to train it further\)",
        capsys.readouterr().out.strip(),
    )


def test_a_new_run_in_an_unfinished_runs_directory_is_refused_with_its_step(tmp_path, capsys):
    data = write_corpus(tmp_path)
    out = str(tmp_path / "run")
    assert main(["train", "--data", data, *ARGS, "--steps", "3", "--out", out]) == 0
    # Make it a run planned for 9 steps and stopped at 3 (what a Ctrl-C leaves).
    config = os.path.join(resolve_checkpoint(out), "config.json")
    with open(config) as f:
        text = f.read()
    with open(config, "w") as f:
        f.write(text.replace('"steps": 3', '"steps": 9'))
    capsys.readouterr()
    assert main(["train", "--data", data, *ARGS, "--out", out]) == 2
    assert capsys.readouterr().err.strip() == (
        f"rnnkit train: error: {out} already holds a run stopped at step 3 of 9: continue it with --resume, "
        "or choose another --out"
    )


class _RunsCode:
    """Unpickling this calls os.system: what a tampered checkpoint could carry."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_pickle_in_optimizer_pt_is_refused_in_one_line_and_not_run(tmp_path, capsys, writer):
    data = write_corpus(tmp_path)
    out = str(tmp_path / "run")
    assert main(["train", "--data", data, *ARGS, "--steps", "3", "--out", out]) == 0
    marker = tmp_path / "code-ran"
    path = os.path.join(resolve_checkpoint(out), "optimizer.pt")
    payload = {"state": {}, "param_groups": [], "evil": _RunsCode(str(marker))}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=4)  # a raw pickle: torch.load also warns about its protocol
    capsys.readouterr()
    assert main(["train", "--resume", out, "--steps", "6"]) == 4
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"rnnkit train: error: {path} holds pickled Python objects, not only tensors (")
    assert "runs no code from them" in err
    assert not marker.exists()
