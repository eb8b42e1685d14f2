"""Recurrent dropout on the fused LSTM, layer-norm LSTM and RNN kernels: their ``mask_r`` argument.

Recurrent dropout (Keras / Gal & Ghahramani) is one mask per sequence on the ``h`` the recurrent matmul reads:
``g_t = x_t W_x + (h_{t-1} * mask_r) W_h + b``; the outputs ``y_t = h_t`` and the state carried on (so the final
state) are not masked. The layers run three ways with the same seed (so the same masks, drawn in the reference
loop's order): the compiled kernels, their pure-PyTorch twins, and the reference loop over the torch-layout cells'
own ``call`` (the oracle); outputs, final states and every parameter and input gradient agree in float64.
At the kernel level: an absent ``mask_r`` is exactly a mask of ones, and a random one gives what torch's own cell
functions give when fed ``h * mask_r`` (their ``h`` feeds only the matmul).
"""

from __future__ import annotations

import pytest
import torch

import rnnkit as rk
from rnnkit import engine
from rnnkit.engine import _ext, _functions, twin

D = torch.float64
TOL = dict(atol=1e-10, rtol=1e-10)

LAYERS = {
    "lstm": lambda: rk.LSTM(3, 7, bidirectional=True, recurrent_dropout=0.4),
    "lstm_proj": lambda: rk.LSTM(3, 7, proj_size=4, bidirectional=True, recurrent_dropout=0.4),
    "lstm_peep": lambda: rk.LSTM(3, 7, peepholes=True, forget_bias=1.0, bidirectional=True, recurrent_dropout=0.4),
    "lstm_ln": lambda: rk.LSTM(3, 7, layer_norm=True, bidirectional=True, recurrent_dropout=0.4),
    "rnn_tanh": lambda: rk.RNN(3, 7, bidirectional=True, recurrent_dropout=0.4),
    "rnn_relu": lambda: rk.RNN(3, 7, nonlinearity="relu", bidirectional=True, recurrent_dropout=0.4),
}


def _compiled():
    ops = _ext.load()
    assert ops is not None, f"the compiled kernels did not build: {_ext.status()['error']}"
    return ops


def _hidden(layer, batch):
    """A random initial state in the layer's structure, each tensor a leaf needing a gradient."""
    directions = 2 if layer.bidirectional else 1
    size = layer.proj_size if getattr(layer, "proj_size", 0) else layer.hidden_size
    h0 = torch.randn(directions, batch, size, dtype=D, requires_grad=True)
    if isinstance(layer, rk.LSTM):
        return (h0, torch.randn(directions, batch, layer.hidden_size, dtype=D, requires_grad=True))
    return h0


def _run(layer, x, hx, lengths, backend, kernels="auto"):
    """Outputs, final states and the gradients of a loss on all of them w.r.t. x, the initial state and every
    parameter; the masks drawn from seed 5."""
    torch.manual_seed(5)
    with engine.use(backend, kernels):
        out, hidden = layer(x, hx, lengths=lengths)
    hidden = hidden if isinstance(hidden, tuple) else (hidden,)
    leaves = [x, *(hx if isinstance(hx, tuple) else (hx,)), *layer.parameters()]
    weights = [torch.linspace(-1, 1, t.numel(), dtype=D).view_as(t) for t in (out, *hidden)]  # every entry counts
    loss = sum((t * w).sum() for t, w in zip((out, *hidden), weights, strict=True)) + out.pow(2).sum()
    return [out, *hidden, *torch.autograd.grad(loss, leaves)]


@pytest.mark.parametrize("lengths", [None, [6, 2, 5, 4], [6, 2, 0, 5]], ids=["full", "lengths", "a_zero_length"])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_recurrent_dropout_compiled_twin_and_reference_agree(name, lengths):
    torch.manual_seed(0)
    layer = LAYERS[name]().double().train()
    x = torch.randn(6, 4, 3, dtype=D, requires_grad=True)
    hx = _hidden(layer, 4)
    lens = None if lengths is None else torch.tensor(lengths)
    assert engine.explain(layer._cell(0, 0), x) == ["fused"]
    _compiled()
    reference = _run(layer, x, hx, lens, "reference")
    for kernels in ("compiled", "python"):
        got = _run(layer, x, hx, lens, "fused", kernels)
        for k, (a, r) in enumerate(zip(got, reference, strict=True)):
            torch.testing.assert_close(a, r, **TOL, msg=lambda m, k=k, kernels=kernels: f"{kernels} [{k}]: {m}")
    # The dropout is really drawn: in eval (no mask) the outputs differ.
    with engine.use("reference"):
        assert not torch.allclose(layer.eval()(x, hx, lengths=lens)[0], reference[0])


# ---- the kernels themselves ----------------------------------------------------------------------------------

BATCH_SIZES = torch.tensor([4, 4, 3, 2, 2, 1])  # 6 steps; sequences of lengths 6, 5, 3, 2
B, I, H = 4, 3, 5


def _leaf(*shape):
    return torch.randn(*shape, dtype=D, requires_grad=True)


def _mask(*shape, keep=0.6):
    return (torch.rand(*shape, dtype=D) < keep).to(D) / keep


def _lstm_case():
    x, w_ih, w_hh, b = _leaf(int(BATCH_SIZES.sum()), I), _leaf(4 * H, I), _leaf(4 * H, H), _leaf(4 * H)
    return x, w_ih, w_hh, b, _leaf(B, H), _leaf(B, H)


def _fused_lstm(kern, x, w_ih, w_hh, b, h0, c0, mask_r):
    # torch's weights: gate blocks i, f, g, o, so the blocks of (i, g, f, o) are (0, 2, 1, 3)
    return _functions.lstm_layer(
        kern, BATCH_SIZES, x, w_ih.t(), b, h0, c0, w_hh.t(), None, None, None, None, (0, 2, 1, 3), 0.0, 0.0, 0.0,
        mask_r=mask_r,
    )  # fmt: skip


def _torch_cells_lstm(x, w_ih, w_hh, b, h0, c0, mask_r):
    """torch's own ``lstm_cell`` over the packed steps, reading ``h * mask_r``; ended sequences keep their state."""
    h, c, ys, off = h0, c0, [], 0
    for n in BATCH_SIZES.tolist():
        hn, cn = torch.lstm_cell(x[off : off + n], (h[:n] * mask_r[:n], c[:n]), w_ih, w_hh, b, None)
        ys.append(hn)
        h, c, off = torch.cat([hn, h[n:]]), torch.cat([cn, c[n:]]), off + n
    return torch.cat(ys), h, c


def _fused_rnn(kern, relu, x, w_ih, w_hh, b, h0, mask_r):
    return _functions.rnn_layer(kern, BATCH_SIZES, x, w_ih.t(), b, h0, w_hh.t(), None, relu, mask_r=mask_r)


def _torch_cells_rnn(relu, x, w_ih, w_hh, b, h0, mask_r):
    cell = torch.rnn_relu_cell if relu else torch.rnn_tanh_cell
    h, ys, off = h0, [], 0
    for n in BATCH_SIZES.tolist():
        hn = cell(x[off : off + n], h[:n] * mask_r[:n], w_ih, w_hh, b, None)
        ys.append(hn)
        h, off = torch.cat([hn, h[n:]]), off + n
    return torch.cat(ys), h


def _with_grads(outputs, leaves):
    weights = [torch.linspace(-1, 1, t.numel(), dtype=D).view_as(t) for t in outputs]
    loss = sum((t * w).sum() for t, w in zip(outputs, weights, strict=True))
    return [*outputs, *torch.autograd.grad(loss, leaves)]


def _cases():
    torch.manual_seed(1)
    lstm = _lstm_case()
    rnn = (_leaf(int(BATCH_SIZES.sum()), I), _leaf(H, I), _leaf(H, H), _leaf(H), _leaf(B, H))
    return {
        "lstm": (lstm, _fused_lstm, _torch_cells_lstm),
        "rnn_tanh": (rnn, lambda k, *a: _fused_rnn(k, False, *a), lambda *a: _torch_cells_rnn(False, *a)),
        "rnn_relu": (rnn, lambda k, *a: _fused_rnn(k, True, *a), lambda *a: _torch_cells_rnn(True, *a)),
    }


@pytest.mark.parametrize("kind", ["compiled", "python"])
@pytest.mark.parametrize("name", ["lstm", "rnn_tanh", "rnn_relu"])
def test_kernel_mask_r_against_torch_cells(name, kind):
    """A random mask_r: what torch's cell functions give on h * mask_r (outputs, final states, gradients of all
    inputs); no mask_r: bit for bit what a mask of ones gives, and torch's cells on h."""
    leaves, fused, reference = _cases()[name]
    kern = _compiled() if kind == "compiled" else twin
    torch.manual_seed(2)
    mask_r = _mask(B, H)
    assert 0 < int((mask_r == 0).sum()) < mask_r.numel()
    got = _with_grads(fused(kern, *leaves, mask_r), leaves)
    want = _with_grads(reference(*leaves, mask_r), leaves)
    for k, (a, r) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(a, r, **TOL, msg=lambda m, k=k: f"[{k}]: {m}")
    ones = torch.ones(B, H, dtype=D)
    absent = _with_grads(fused(kern, *leaves, None), leaves)
    for k, (a, r) in enumerate(zip(absent, _with_grads(fused(kern, *leaves, ones), leaves), strict=True)):
        torch.testing.assert_close(a, r, atol=0, rtol=0, msg=lambda m, k=k: f"[{k}]: {m}")
    for k, (a, r) in enumerate(zip(absent, _with_grads(reference(*leaves, ones), leaves), strict=True)):
        torch.testing.assert_close(a, r, **TOL, msg=lambda m, k=k: f"[{k}]: {m}")
