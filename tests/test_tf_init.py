"""rnnkit's default initialisation against TF's, statistically.

``tests/fixtures/tf/init_stats.json`` (made by ``tests/fixtures/make_tf_fixtures.py`` with TF 2.x's
``tf.compat.v1`` cells and their default initializers) holds, per TF variable, its shape and statistics pooled
over independent draws (each draw in a fresh graph). For ``LayerNormBasicLSTMCell``, which today's TF no longer
ships, the script replays TF 1.15 contrib's variable-creation lines (``vs.get_variable("kernel", ...)`` and
``vs.get_variable("bias", ...)`` with no initializer, so the scope default; ``_norm``'s ``constant_initializer``
gamma/beta) with today's ``get_variable``.

The reference law is Glorot-uniform on the variable's full TF shape, ``U(-l, l)`` with
``l = sqrt(6 / (fan_in + fan_out))``: ``(rows, cols)`` -> ``fan_in = rows``, ``fan_out = cols``; a 1-D ``(n,)``
variable (peepholes, the contrib cell's bias) -> ``fan_in = fan_out = n``. Constant-initialised variables
(biases 0, GRU ``gates/bias`` 1, layer-norm gamma/beta = norm_gain/norm_shift) must match exactly.

For every variable the test checks that (a) TF's own draws follow the law (max |x| at the bound, std ``l/sqrt(3)``,
mean 0) and (b) rnnkit's parameter of the same name has TF's shape and, over as many draws, follows the same law.
Tolerances: max |x| must lie in ``[l (1 - eps), l]`` with ``(1 - eps)^n = 1e-9`` (the chance that n uniform
draws all stay below ``l (1 - eps)``); std within 6 standard errors (``0.45 / sqrt(n)`` relative) and mean within 6
standard errors (``l / sqrt(3 n)``) of their values under the law.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import rnnkit

STATS = json.loads((Path(__file__).parent / "fixtures" / "tf" / "init_stats.json").read_text())
TF_CELL_SCOPES = {
    "multi_rnn_cell",
    "basic_rnn_cell",
    "basic_lstm_cell",
    "lstm_cell",
    "gru_cell",
    "layer_norm_basic_lstm_cell",
}


def rnnkit_key(tf_name: str) -> str:
    """``multi_rnn_cell/cell_1/gru_cell/gates/bias`` -> ``cell_1.gates.bias`` (no wrappers in these cells)."""
    return ".".join(part for part in tf_name.split("/") if part not in TF_CELL_SCOPES)


def build_cell(spec: dict[str, Any]) -> rnnkit.RNNCell:
    kwargs = {k: v for k, v in spec.items() if k not in ("cell", "cells")}
    if spec["cell"] == "MultiRNNCell":
        return rnnkit.MultiRNNCell([build_cell(s) for s in spec["cells"]], **kwargs)
    return getattr(rnnkit, spec["cell"])(**kwargs)


def glorot_limit(shape: list[int]) -> float:
    return math.sqrt(6.0 / (shape[0] + shape[-1]))


def assert_follows_glorot(stats: dict[str, float], limit: float, who: str) -> None:
    n = stats["count"]
    eps = 1.0 - 1e-9 ** (1.0 / n)
    assert limit * (1 - eps) <= stats["max_abs"] <= limit * (1 + 1e-6), (who, stats["max_abs"], limit)
    std = limit / math.sqrt(3.0)
    assert abs(stats["std"] / std - 1.0) <= 6 * 0.45 / math.sqrt(n), (who, stats["std"], std)
    assert abs(stats["mean"]) <= 6 * std / math.sqrt(n), (who, stats["mean"])


def rnnkit_draws(spec: dict[str, Any], draws: int) -> dict[str, list[torch.Tensor]]:
    values: dict[str, list[torch.Tensor]] = {}
    for _ in range(draws):
        cell = build_cell(spec)
        cell.build(STATS["input_depth"])
        for key, value in cell.state_dict().items():
            values.setdefault(key, []).append(value)
    return values


def pooled(values: list[torch.Tensor]) -> dict[str, float]:
    x = torch.cat([v.flatten() for v in values]).double()
    return {"count": x.numel(), "max_abs": float(x.abs().max()), "mean": float(x.mean()), "std": float(x.std(0))}


@pytest.mark.parametrize("name", sorted(STATS["cells"]))
def test_default_initialisation_matches_tf(name: str) -> None:
    torch.manual_seed(0)
    entry = STATS["cells"][name]
    tf_vars = entry["variables"]
    mine = rnnkit_draws(entry["spec"], STATS["draws"])
    assert sorted(mine) == sorted(rnnkit_key(k) for k in tf_vars), "parameter names differ from TF's"
    for tf_name, tf_stats in tf_vars.items():
        key = rnnkit_key(tf_name)
        values = mine[key]
        assert list(values[0].shape) == tf_stats["shape"], (key, tuple(values[0].shape), tf_stats["shape"])
        if "constant" in tf_stats:
            for v in values:
                assert torch.all(v == tf_stats["constant"]), (key, "expected constant", tf_stats["constant"])
        else:
            limit = glorot_limit(tf_stats["shape"])
            assert_follows_glorot(tf_stats, limit, f"TF {tf_name}")
            assert_follows_glorot(pooled(values), limit, f"rnnkit {key}")


def test_statistics_tell_bounds_apart() -> None:
    """The check is sharp: draws from a neighbouring bound (the fan of a partial, per-gate shape) fail it."""
    torch.manual_seed(0)
    kernel_shape = [64, 160]  # BasicLSTMCell(40) on 24 inputs: the full TF shape
    per_gate = torch.empty(STATS["draws"] * 64 * 160).uniform_(-1, 1) * glorot_limit([64, 40])
    with pytest.raises(AssertionError):
        assert_follows_glorot(pooled([per_gate]), glorot_limit(kernel_shape), "per-gate bound")
    tf_stats = STATS["cells"]["BasicLSTMCell"]["variables"]["basic_lstm_cell/kernel"]
    assert tf_stats["shape"] == kernel_shape
    with pytest.raises(AssertionError):
        assert_follows_glorot(tf_stats, glorot_limit([64, 40]), "TF against the per-gate bound")


def test_fixture_records_tf_version_and_every_cell() -> None:
    assert STATS["tf_version"].startswith("2.")
    kinds = {entry["spec"]["cell"] for entry in STATS["cells"].values()}
    assert kinds == {"BasicRNNCell", "BasicLSTMCell", "LSTMCell", "GRUCell", "MultiRNNCell", "LayerNormBasicLSTMCell"}
    gates_bias = STATS["cells"]["GRUCell"]["variables"]["gru_cell/gates/bias"]
    assert gates_bias["constant"] == 1.0 and np.prod(gates_bias["shape"]) == 80
