"""`torchrun --nproc_per_node=2 -m rnnkit train` (gloo, DDP) gives the weights of one process with the same batch
(to float rounding), and each rank ends with its process group torn down (no gloo thread left to die in
interpreter finalization, which aborted about one exit in ten with SIGABRT)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys

from cli_helpers import TINY, cli_env, latest_weights, max_diff, write_corpus
from rnnkit.cli import main
from rnnkit.cli.checkpoint import load_checkpoint

PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rank_probe.py")  # `python -m rnnkit`, then a check
ARGS = [*TINY, "--batch", "4", "--steps", "6", "--eval-every", "3", "--log-every", "1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_equal_one(tmp_path):
    data = write_corpus(tmp_path)
    two, one = str(tmp_path / "two"), str(tmp_path / "one")
    env = cli_env()
    if os.path.exists("/sys/class/net/lo"):
        env["GLOO_SOCKET_IFNAME"] = "lo"  # keep gloo on loopback whatever the host name resolves to
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           PROBE, "train", "--data", data, *ARGS, "--out", two]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-12000:]  # the ranks' own errors come before torchrun's summary
    assert done.stdout.count("done: step 6/6") == 1  # only rank 0 reports
    # destroy_process_group really destroyed the group: its threads are joined before the interpreter ends.
    # (the ranks share torchrun's stdout, so their two lines may interleave: match each, not whole lines)
    left = sorted(re.findall(r"rank (\d) threads left: (\[[^\]]*\])", done.stdout))
    assert left == [("0", "[]"), ("1", "[]")], done.stdout[-3000:]
    assert main(["train", "--data", data, *ARGS, "--out", one]) == 0
    trainer = load_checkpoint(two).trainer
    assert trainer["world_size"] == 2 and len(trainer["rng"]) == 2
    assert max_diff(latest_weights(two), latest_weights(one)) < 1e-6
    # The 2-process checkpoint holds the global carried state: one process resumes it like its own.
    assert main(["train", "--resume", two, "--steps", "8"]) == 0
    assert main(["train", "--resume", one, "--steps", "8"]) == 0
    assert max_diff(latest_weights(two), latest_weights(one)) < 1e-6
