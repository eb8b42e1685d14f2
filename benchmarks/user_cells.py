"""Your own cells, compiled: user-written cells through ``dynamic_rnn`` against ``torch.nn.LSTM``.

    python -m benchmarks.user_cells           # the table, printed (``benchmarks.run`` adds it to docs/benchmarks.md)

Each cell is written as a user writes it (TF1's protocol: ``build``/``add_variable``/``call``), with no rnnkit
kernel of its own: the engine captures its ``call`` and runs generated code inside its time loop. Rows time it
(``rnnkit``) against ``torch.nn.LSTM`` of the same (T, B, I, H) and against rnnkit's reference loop over the
same cell, round-robin in one process (``benchmarks.run.round_robin``). *compile s*: the first call on a new
cell, capture + code generation + C compile, with an empty cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import rnnkit
from rnnkit import engine

SHAPES = [(100, 1, 64, 128), (100, 32, 128, 256)]


class HandLSTM(rnnkit.RNNCell):
    """An LSTM written by hand in TF1's protocol: one kernel over ``[x, h]``, gates i, j, f, o."""

    def __init__(self, num_units: int):
        super().__init__()
        self.num_units = num_units

    @property
    def state_size(self) -> Any:
        return rnnkit.LSTMStateTuple(self.num_units, self.num_units)

    @property
    def output_size(self) -> int:
        return self.num_units

    def build(self, inputs_shape: Any) -> None:
        depth = inputs_shape[-1]
        self.kernel = self.add_variable("kernel", [depth + self.num_units, 4 * self.num_units])
        self.bias = self.add_variable("bias", [4 * self.num_units], initializer=torch.nn.init.zeros_)
        self.built = True

    def call(self, inputs: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        c, h = state
        i, j, f, o = (torch.cat([inputs, h], 1) @ self.kernel + self.bias).chunk(4, 1)
        c = torch.sigmoid(f + 1.0) * c + torch.sigmoid(i) * torch.tanh(j)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, rnnkit.LSTMStateTuple(c, h)


class MGU(rnnkit.RNNCell):
    """The minimal gated unit (Zhou et al. 2016): f = sigmoid([x, h] W_f + b_f), h' = (1 - f) h + f tanh([x, f h] W)."""

    def __init__(self, num_units: int):
        super().__init__()
        self.num_units = num_units

    @property
    def state_size(self) -> int:
        return self.num_units

    @property
    def output_size(self) -> int:
        return self.num_units

    def build(self, inputs_shape: Any) -> None:
        depth, n = inputs_shape[-1], self.num_units
        self.gate_kernel = self.add_variable("gate_kernel", [depth + n, n])
        self.gate_bias = self.add_variable("gate_bias", [n], initializer=torch.nn.init.ones_)
        self.candidate_kernel = self.add_variable("candidate_kernel", [depth + n, n])
        self.candidate_bias = self.add_variable("candidate_bias", [n], initializer=torch.nn.init.zeros_)
        self.built = True

    def call(self, inputs: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = torch.sigmoid(torch.cat([inputs, state], 1) @ self.gate_kernel + self.gate_bias)
        candidate = torch.tanh(torch.cat([inputs, f * state], 1) @ self.candidate_kernel + self.candidate_bias)
        h = (1 - f) * state + f * candidate
        return h, h


CELLS: list[tuple[str, Callable[[int], rnnkit.RNNCell]]] = [("hand-written LSTM", HandLSTM), ("MGU", MGU)]


def compile_seconds(name: str, shape: tuple[int, int, int, int]) -> float:
    """Seconds of the first call on a new cell in a new process with an empty code cache: capture (with the tracer's
    own warm-up), code generation and the C compile, plus that first unroll. The compiled extension is built."""
    T, B, I, H = shape
    code = (
        "import time, torch, rnnkit\n"
        "from benchmarks.user_cells import CELLS\n"
        f"make = dict(CELLS)[{name!r}]\n"
        f"cell, x = make({H}), torch.randn({T}, {B}, {I})\n"
        "rnnkit.engine.backend_info()\n"  # the extension loaded before the clock starts
        "start = time.perf_counter()\n"
        "with torch.no_grad():\n"
        "    rnnkit.dynamic_rnn(cell, x, time_major=True)\n"
        "print(time.perf_counter() - start)\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, RNNKIT_CELLS_DIR=tmp)
        root = str(Path(__file__).resolve().parents[1])
        run = [sys.executable, "-c", code]
        out = subprocess.run(run, env=env, cwd=root, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def rows(reps: int = 11, budget: float = 6.0) -> list[dict[str, Any]]:
    from .run import round_robin, timed_call  # (run imports this module for its table)

    out = []
    for name, make in CELLS:
        for shape in SHAPES:
            T, B, I, H = shape
            compile_s = compile_seconds(name, shape)
            x = torch.randn(T, B, I)
            cell, lstm = make(H), nn.LSTM(I, H)
            cell.build(I)
            params = list(cell.parameters()) + list(lstm.parameters())

            def ours(cell: rnnkit.RNNCell = cell, x: torch.Tensor = x) -> Any:
                return rnnkit.dynamic_rnn(cell, x, time_major=True)

            def reference(ours: Callable[[], Any] = ours) -> Any:
                with engine.use("reference"):
                    return ours()

            path = engine.explain(cell, x)
            for train in (False, True):
                torch_lstm = lambda lstm=lstm, x=x: lstm(x)  # noqa: E731
                fns = [timed_call(f, params, train) for f in (ours, torch_lstm, reference)]
                r, t, loop = round_robin(fns, reps, budget)
                out.append({
                    "cell": name, "shape": ", ".join(map(str, shape)), "mode": "fwd+bwd" if train else "inference",
                    "path": "+".join(path), "rnnkit": r * 1e3, "lstm": t * 1e3, "ratio": r / t,
                    "loop": loop * 1e3, "loop_x": loop / r, "compile_s": compile_s,
                })  # fmt: skip
    return out


def table(results: list[dict[str, Any]]) -> str:
    head = (
        "| user cell | T, B, I, H | mode | path | rnnkit ms | torch.nn.LSTM ms | ratio | reference loop ms | "
        "loop / rnnkit | first call (compile) s |\n|---|---|---|---|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = [
        f"| {r['cell']} | {r['shape']} | {r['mode']} | {r['path']} | {r['rnnkit']:.3f} | {r['lstm']:.3f} | "
        f"**{r['ratio']:.2f}** | {r['loop']:.2f} | {r['loop_x']:.1f}x | {r['compile_s']:.2f} |"
        for r in results
    ]
    return head + "\n".join(lines) + "\n"


def targets(results: list[dict[str, Any]]) -> str:
    """Issue 13's bounds against this run: within 1.3x of torch.nn.LSTM; at batch 1, 5x faster than the loop."""
    within = [r for r in results if r["ratio"] <= 1.3]
    batch1 = [r for r in results if r["shape"].split(", ")[1] == "1"]
    fast = [r for r in batch1 if r["loop_x"] >= 5]
    values = "; ".join(f"{r['cell']} {r['shape']} {r['mode']}: {r['ratio']:.2f}" for r in results)
    loops = "; ".join(f"{r['cell']} {r['mode']}: {r['loop_x']:.1f}x" for r in batch1)
    return (
        f"| user cells (LSTM's arithmetic or less) | <= 1.3x torch.nn.LSTM | {values} | {len(within)}/{len(results)} |\n"
        f"| user cells, batch 1 | >= 5x faster than the reference loop | {loops} | {len(fast)}/{len(batch1)} |\n"
    )


def main() -> int:
    torch.manual_seed(0)
    results = rows()
    print(table(results))
    print(targets(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
