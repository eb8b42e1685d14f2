"""Run as a torchrun program: ``python -m rnnkit ARGS`` exactly (runpy), then report the threads left behind.

A rank must leave no process-group threads once the command returns: threads still alive there are torn
down in interpreter finalization, which aborts the process now and then (see rnnkit.cli.distributed).
"""

import os
import runpy
import sys

try:
    runpy.run_module("rnnkit", run_name="__main__", alter_sys=True)
    code = 0
except SystemExit as done:
    code = done.code
names = []
for tid in os.listdir("/proc/self/task"):
    with open(f"/proc/self/task/{tid}/comm", encoding="utf-8") as f:
        names.append(f.read().strip())
left = sorted(n for n in names if "gloo" in n or "nccl" in n)
sys.stdout.write(f"rank {os.environ.get('RANK')} threads left: {left}\n")  # one write: ranks share the stdout
sys.stdout.flush()
sys.exit(code)
