"""Dropout between layers, recurrent_dropout and zoneout: by their statistics, and train/eval switching.

The layers are set up so that each regulariser's mask is readable from the outputs (identity weights, relu,
positive inputs); rates are checked to within 6 standard deviations of a binomial proportion.
"""

from __future__ import annotations

import pytest
import torch

from rnnkit.layers import GRU, LSTM, RNN

N = 64  # units


def _identity_rnn(num_layers=1, recurrent=False, **options) -> RNN:
    """relu RNN without biases, W_ih = I, W_hh = I (recurrent) or 0: its arithmetic shows every mask."""
    rnn = RNN(N, N, num_layers, nonlinearity="relu", bias=False, **options)
    with torch.no_grad():
        for k in range(num_layers):
            getattr(rnn, f"weight_ih_l{k}").copy_(torch.eye(N))
            getattr(rnn, f"weight_hh_l{k}").copy_(torch.eye(N) if recurrent else torch.zeros(N, N))
    return rnn


def _assert_rate(fraction: torch.Tensor, p: float, n: int) -> None:
    assert abs(float(fraction) - p) < 6 * (p * (1 - p) / n) ** 0.5, (float(fraction), p)


def test_dropout_between_layers_statistics_and_train_eval():
    p = 0.3
    rnn = _identity_rnn(num_layers=2, dropout=p)
    x = torch.rand(10, 20, N) + 0.5  # positive: relu(x) = x through both layers
    out, h_n = rnn(x)  # training mode: layer 1 reads dropout(layer 0's output)
    dropped = out == 0
    _assert_rate(dropped.float().mean(), p, out.numel())
    torch.testing.assert_close(out[~dropped], (x / (1 - p))[~dropped], atol=1e-6, rtol=1e-6)
    assert torch.equal(h_n[0], x[-1])  # layer 0 itself is not dropped
    assert not torch.equal(rnn(x)[0], out)  # fresh masks each call
    rnn.eval()
    assert torch.equal(rnn(x)[0], x)
    rnn.train()
    _assert_rate((rnn(x)[0] == 0).float().mean(), p, out.numel())


def test_dropout_on_one_layer_warns_like_torch():
    with pytest.warns(UserWarning, match="num_layers greater than 1"):
        torch.nn.LSTM(2, 3, dropout=0.5)
    with pytest.warns(UserWarning, match="num_layers greater than 1"):
        lstm = LSTM(2, 3, dropout=0.5)
    x = torch.randn(4, 2, 2)
    assert torch.equal(lstm(x)[0], lstm.eval()(x)[0])  # nothing to drop between layers


def test_lstm_gru_dropout_train_differs_eval_matches_torch():
    for ours_cls, torch_cls in ((LSTM, torch.nn.LSTM), (GRU, torch.nn.GRU)):
        ref, ours = torch_cls(3, 8, 3, dropout=0.5), ours_cls(3, 8, 3, dropout=0.5)
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(5, 4, 3)
        assert not torch.allclose(ours(x)[0], ours.eval()(x)[0])
        torch.testing.assert_close(ours(x)[0], ref.eval()(x)[0], atol=1e-5, rtol=1e-5)


def test_recurrent_dropout_one_mask_per_sequence():
    """h_t = relu(x_t + m * h_{t-1}) with x = (1, 0, 0, ...): h_t = m^t, so a unit dropped once stays dropped."""
    p, steps, batch = 0.25, 5, 40
    rnn = _identity_rnn(recurrent=True, recurrent_dropout=p)
    x = torch.zeros(steps, batch, N)
    x[0] = 1.0
    out, _ = rnn(x)
    dropped = out[1] == 0  # (batch, N)
    _assert_rate(dropped.float().mean(), p, dropped.numel())
    for t in range(1, steps):
        assert torch.equal(out[t] == 0, dropped)  # the same mask at every step
        torch.testing.assert_close(out[t][~dropped], torch.full_like(out[t][~dropped], (1 - p) ** -t))
    assert not all(torch.equal(dropped[0], row) for row in dropped[1:])  # one mask per sequence, not per batch
    assert not torch.equal(rnn(x)[0][1] == 0, dropped)  # redrawn for the next batch of sequences
    assert torch.equal(rnn.eval()(x)[0], torch.ones(steps, batch, N))  # eval: no mask


def test_recurrent_dropout_masks_only_what_the_matmul_reads():
    """GRU with W_hh = 0: masking h before the recurrent matmul must change nothing (the blend uses h unmasked)."""
    gru = GRU(3, N, recurrent_dropout=0.5, reset_after=False)
    plain = GRU(3, N, reset_after=False)
    with torch.no_grad():
        gru.weight_hh_l0.zero_()
    plain.load_state_dict(gru.state_dict())
    x, h0 = torch.randn(6, 4, 3), torch.randn(1, 4, N)
    # The two configurations may run on different engine paths (recurrent dropout in training stays on the
    # reference loop, the plain GRU takes a fused kernel): equal to float32 rounding, not bit for bit.
    torch.testing.assert_close(gru(x, h0)[0], plain(x, h0)[0], atol=1e-6, rtol=0)


def test_zoneout_training_keeps_previous_units_fresh_each_step():
    """W_hh = 0, x_t = t + 1: the new state is t + 1, so a unit still at t was zoned out at step t."""
    p, steps, batch = 0.3, 6, 30
    rnn = _identity_rnn(zoneout=p)
    x = torch.arange(1.0, steps + 1).view(steps, 1, 1).expand(steps, batch, N)
    out, h_n = rnn(x)
    masks = []
    for t in range(1, steps):
        kept = out[t] == out[t - 1]
        assert torch.equal(out[t][~kept], x[t][~kept])
        _assert_rate(kept.float().mean(), p, kept.numel())
        masks.append(kept)
    agreement = (masks[0] == masks[1]).float().mean()  # independent masks agree with rate p^2 + (1-p)^2
    _assert_rate(agreement, p**2 + (1 - p) ** 2, masks[0].numel())
    assert torch.equal(h_n[0], out[-1])


def test_zoneout_eval_is_the_expectation():
    p = 0.3
    rnn = _identity_rnn(zoneout=p).eval()
    x = torch.rand(6, 2, N)
    out, _ = rnn(x)
    h = torch.zeros(2, N)
    for t in range(6):
        h = p * h + (1 - p) * x[t]
        torch.testing.assert_close(out[t], h, atol=1e-6, rtol=1e-6)


def test_lstm_zoneout_eval_blends_h_and_c():
    """Hand-derived: each layer's step is the plain LSTM step, then h and c each become p * old + (1 - p) * new,
    and the blended h feeds the next layer."""
    p, layers = 0.4, 2
    zoned = LSTM(3, 5, num_layers=layers, proj_size=2, zoneout=p).eval()
    plain = [LSTM(3 if k == 0 else 2, 5, proj_size=2).eval() for k in range(layers)]
    for k, one in enumerate(plain):
        one.load_state_dict({n: getattr(zoned, n.replace("_l0", f"_l{k}")) for n in one.state_dict()})
    x = torch.randn(4, 2, 3)
    out, (h_n, c_n) = zoned(x)
    h, c = [torch.zeros(2, 2) for _ in range(layers)], [torch.zeros(2, 5) for _ in range(layers)]
    for t in range(4):
        inp = x[t]
        for k in range(layers):
            _, (new_h, new_c) = plain[k].step(inp, (h[k][None], c[k][None]))
            h[k], c[k] = p * h[k] + (1 - p) * new_h[0], p * c[k] + (1 - p) * new_c[0]
            inp = h[k]
        torch.testing.assert_close(out[t], h[-1], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(h_n, torch.stack(h), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(c_n, torch.stack(c), atol=1e-6, rtol=1e-6)
