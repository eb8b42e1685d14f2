"""Streaming ``step()`` equals ``forward`` (1e-6), for every layer type and option; gradcheck in float64."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from rnnkit.layers import GRU, LSTM, RNN

I, H, P = 3, 4, 2

CONFIGS = {
    "rnn_tanh": (RNN, {}),
    "rnn_relu": (RNN, {"nonlinearity": "relu", "bias": False}),
    "gru": (GRU, {}),
    "gru_reset_before": (GRU, {"reset_after": False}),
    "lstm": (LSTM, {}),
    "lstm_proj": (LSTM, {"proj_size": P}),
    "lstm_tf_options": (LSTM, {"forget_bias": 1.0, "peepholes": True, "cell_clip": 0.5, "proj_size": P}),
    "lstm_layer_norm": (LSTM, {"layer_norm": True, "forget_bias": 1.0}),
    "lstm_layer_norm_proj": (LSTM, {"layer_norm": True, "proj_size": P, "bias": False}),
    "lstm_zoneout_recurrent_dropout": (LSTM, {"zoneout": 0.3, "recurrent_dropout": 0.4, "dropout": 0.5}),
    "gru_zoneout": (GRU, {"zoneout": 0.2, "reset_after": False, "recurrent_dropout": 0.2}),
    "rnn_zoneout": (RNN, {"zoneout": 0.5}),
}


def _hidden(layer, batch):
    sizes = layer._hidden_sizes()
    lead = (layer.num_layers,) + ((batch,) if batch else ())
    parts = [torch.randn(*lead, n, dtype=layer.weight_ih_l0.dtype) for n in sizes]
    return tuple(parts) if isinstance(layer, LSTM) else parts[0]


def _flat(x):
    return list(x) if isinstance(x, tuple) else [x]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("batch_first", [False, True])
def test_step_equals_forward(config, batch_first):
    cls, options = CONFIGS[config]
    layer = cls(I, H, num_layers=2, batch_first=batch_first, **options).eval()
    x = torch.randn(2, 6, I) if batch_first else torch.randn(6, 2, I)
    hx = _hidden(layer, 2)
    out, h_n = layer(x, hx)
    state, steps = hx, []
    for t in range(6):
        y, state = layer.step(x[:, t] if batch_first else x[t], state)
        steps.append(y)
    torch.testing.assert_close(torch.stack(steps, 1 if batch_first else 0), out, atol=1e-6, rtol=0)
    for a, b in zip(_flat(state), _flat(h_n), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("config", ["gru", "lstm_tf_options"])
def test_step_unbatched_and_from_zero_state(config):
    cls, options = CONFIGS[config]
    layer = cls(I, H, num_layers=3, **options).eval()
    x = torch.randn(5, I)
    out, h_n = layer(x)
    state, steps = None, []
    for t in range(5):
        y, state = layer.step(x[t], state)
        steps.append(y)
    torch.testing.assert_close(torch.stack(steps), out, atol=1e-6, rtol=0)
    for a, b in zip(_flat(state), _flat(h_n), strict=True):
        assert a.shape == b.shape == (3, b.shape[-1])
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_step_in_training_runs_zoneout_and_dropout():
    layer = LSTM(I, H, num_layers=2, dropout=0.5, zoneout=0.3)
    y, (h, c) = layer.step(torch.randn(2, I))
    assert y.shape == (2, H) and h.shape == c.shape == (2, 2, H)


def test_step_refuses_bidirectional_and_training_recurrent_dropout():
    with pytest.raises(ValueError, match="bidirectional layer cannot stream"):
        GRU(I, H, bidirectional=True).step(torch.randn(2, I))
    with pytest.raises(ValueError, match="recurrent_dropout draws one mask per sequence"):
        GRU(I, H, recurrent_dropout=0.1).step(torch.randn(2, I))
    with pytest.raises(ValueError, match=r"x_t of shape \(batch, input_size\)"):
        GRU(I, H).step(torch.randn(1, 2, I))


GRADCHECK = {
    "rnn": (RNN, {}),
    "gru": (GRU, {}),
    "gru_reset_before": (GRU, {"reset_after": False}),
    "lstm": (LSTM, {}),
    "lstm_tf_options_zoneout": (
        LSTM,
        {"forget_bias": 1.0, "peepholes": True, "proj_size": 1, "cell_clip": 3.0, "zoneout": 0.3},
    ),
    "lstm_layer_norm": (LSTM, {"layer_norm": True}),
}


@pytest.fixture
def one_thread():
    """Tiny tensors gain nothing from threads, and OpenMP barriers stall badly on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("config", GRADCHECK)
def test_gradcheck_float64_lengths_bidirectional(config):
    """Analytic vs numerical gradients w.r.t. the input, h_0 (c_0) and every parameter."""
    cls, options = GRADCHECK[config]
    layer = cls(2, 2, num_layers=2, bidirectional=True, dtype=torch.float64, **options).eval()
    names = [n for n, _ in layer.named_parameters()]
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    sizes = layer._hidden_sizes()
    hidden = [torch.randn(4, 2, n, dtype=torch.float64, requires_grad=True) for n in sizes]
    lengths = torch.tensor([3, 1])

    def run(x, *tensors):
        hx, params = tensors[: len(hidden)], tensors[len(hidden) :]
        hx = tuple(hx) if cls is LSTM else hx[0]
        out, h_n = functional_call(layer, dict(zip(names, params, strict=True)), (x, hx), {"lengths": lengths})
        return (out, *_flat(h_n))

    params = [p.detach().clone().requires_grad_() for p in layer.parameters()]
    assert torch.autograd.gradcheck(run, (x, *hidden, *params), eps=1e-6, atol=1e-6)
