"""Parameter names, shapes and order of representative layers, frozen in tests/golden/layers_params.json.

Regenerate deliberately with ``RNNKIT_REGEN_GOLDEN=1 pytest tests/test_layers_golden.py``. Configurations that
torch.nn has are also checked against torch.nn itself, so the file cannot freeze a divergence from torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from rnnkit.layers import GRU, LSTM, RNN

GOLDEN = Path(__file__).parent / "golden" / "layers_params.json"

# name -> (class, args, kwargs, torch.nn class or None when the configuration is beyond torch.nn)
CONFIGS = {
    "rnn_100_20_3_seed_example": (RNN, (100, 20, 3), {}, torch.nn.RNN),
    "rnn_relu_bidirectional_no_bias": (
        RNN, (4, 3, 2), {"nonlinearity": "relu", "bidirectional": True, "bias": False}, torch.nn.RNN
    ),
    "gru_3_layers_bidirectional": (GRU, (7, 3, 3), {"bidirectional": True}, torch.nn.GRU),
    "gru_reset_before": (GRU, (7, 3), {"reset_after": False}, None),
    "lstm_proj_bidirectional": (LSTM, (10, 8, 2), {"proj_size": 4, "bidirectional": True}, torch.nn.LSTM),
    "lstm_proj_no_bias": (LSTM, (10, 8, 2), {"proj_size": 4, "bias": False}, torch.nn.LSTM),
    "lstm_peepholes_proj": (LSTM, (6, 5, 2), {"peepholes": True, "proj_size": 3, "bidirectional": True}, None),
    "lstm_layer_norm": (LSTM, (6, 5, 2), {"layer_norm": True}, None),
}  # fmt: skip


def _table(make) -> dict[str, list]:
    return {name: [[n, list(p.shape)] for n, p in make(name).named_parameters()] for name in sorted(CONFIGS)}


def _ours(name):
    cls, args, kwargs, _ = CONFIGS[name]
    return cls(*args, **kwargs)


def test_parameter_names_shapes_and_order_are_frozen():
    table = _table(_ours)
    if os.environ.get("RNNKIT_REGEN_GOLDEN"):
        lines = [f"  {json.dumps(name)}: {json.dumps(params)}" for name, params in table.items()]
        GOLDEN.write_text("{\n" + ",\n".join(lines) + "\n}\n")
    assert table == json.loads(GOLDEN.read_text())


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("name", [n for n, c in CONFIGS.items() if c[3] is not None])
def test_golden_agrees_with_torch_nn(name):
    _, args, kwargs, torch_cls = CONFIGS[name]
    ref = torch_cls(*args, **kwargs)
    assert [[n, list(p.shape)] for n, p in ref.named_parameters()] == json.loads(GOLDEN.read_text())[name]
