"""The engine under ``torch.autocast("cpu", dtype=torch.bfloat16)``: torch.nn's dtypes (``rnnkit.engine.autocast``).

**Layers against torch.nn under autocast.** Output and state dtypes must be torch.nn's exactly. Values: torch multiplies
bf16-rounded operands (inputs, weights, ``h``: each off by at most ``u = 2^-8``, bf16's unit roundoff) and rounds the
gates' pre-activations to bf16; rnnkit computes in float32 and rounds once at the end. Each step's pre-activations
therefore differ by at most ~``3u`` times their magnitude, the contracting step (gates in (0, 1), weights
U(-1/sqrt(H), 1/sqrt(H))) keeps that from growing over time, and each layer adds its own: values are asserted
within ``4 * L * u`` of the largest magnitude (measured: 0.2-0.4 of it); gradients (float32, both sides) within
``8 * L * u``.

**TF runners against the float32 reference loop.** The engine runs in float32 with autocast off and rounds the
results the table gives once: within ``2u`` (one rounding, possibly across a tie moved by the float32 compute's
~1e-6 difference) of the reference loop run without autocast.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkit
from rnnkit import engine
from rnnkit._structure import flatten

U = 2.0**-8
BF16, F32 = torch.bfloat16, torch.float32


def _autocast():
    return torch.autocast("cpu", dtype=BF16)


def _close(got: torch.Tensor, want: torch.Tensor, bound: float, what: str) -> None:
    got, want = got.detach().float(), want.detach().float()
    scale = max(float(want.abs().max()), 1e-3)
    err = float((got - want).abs().max())
    assert err <= bound * scale, f"{what}: max error {err:.3g} > {bound:.3g} * {scale:.3g}"


LAYERS = {
    "lstm": ("LSTM", {}),
    "lstm_proj": ("LSTM", {"proj_size": 3}),
    "lstm_2_layers_bi": ("LSTM", {"num_layers": 2, "bidirectional": True}),
    "gru": ("GRU", {}),
    "rnn_relu": ("RNN", {"nonlinearity": "relu"}),
}


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN:UserWarning")  # torch.nn's
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("batch", [3, 6])  # the fused kernels, and above FUSED_MAX_BATCH
@pytest.mark.parametrize("case", sorted(LAYERS))
def test_layers_follow_torch_nn_under_autocast(case, batch, packed):
    """Forward dtypes and values, then backward: float32 gradients of the float32 parameters, close to torch's."""
    name, options = LAYERS[case]
    tn = getattr(torch.nn, name)(4, 6, **options)
    rk = getattr(rnnkit, name)(4, 6, **options)
    rk.load_state_dict(tn.state_dict())
    x = torch.randn(5, batch, 4)
    lengths = [5] + [3] * (batch - 1)

    def run(module):
        xin = x.clone().requires_grad_()
        with _autocast():
            out, state = module(pack_padded_sequence(xin, lengths) if packed else xin)
        out = out.data if packed else out
        return xin, out, flatten(state)

    x_t, out_t, state_t = run(tn)
    x_r, out_r, state_r = run(rk)
    assert out_r.dtype == out_t.dtype and [s.dtype for s in state_r] == [s.dtype for s in state_t]
    layers = options.get("num_layers", 1)
    _close(out_r, out_t, 4 * layers * U, "outputs")
    for s, s_t in zip(state_r, state_t, strict=True):
        _close(s, s_t, 4 * layers * U, "final state")
    g = torch.randn(out_t.shape)
    for out, state in ((out_t, state_t), (out_r, state_r)):
        ((out.float() * g).sum() + sum(s.float().sum() for s in state)).backward()
    for (n, p), q in zip(rk.named_parameters(), tn.parameters(), strict=True):
        assert p.grad.dtype == F32
        _close(p.grad, q.grad, 8 * layers * U, f"grad {n}")
    _close(x_r.grad, x_t.grad, 8 * layers * U, "grad input")


def test_layer_on_torchs_kernel_under_autocast_is_torch_nn_bit_for_bit():
    """The oneDNN LSTM route (inference, a batch above FUSED_MAX_BATCH) runs torch's kernel under autocast."""
    tn, rk = torch.nn.LSTM(4, 6, num_layers=2), rnnkit.LSTM(4, 6, num_layers=2)
    rk.load_state_dict(tn.state_dict())
    x = torch.randn(5, 8, 4)
    with torch.no_grad(), _autocast():
        out_t, (h_t, c_t) = tn(x)
        out_r, (h_r, c_r) = rk(x)
    for got, want in ((out_r, out_t), (h_r, h_t), (c_r, c_t)):
        assert got.dtype == BF16 and torch.equal(got, want)


# (cell factory, output dtype, state dtypes in flatten order) under autocast to bf16, full sequences
CELLS = {
    "basic_lstm": (lambda: rnnkit.BasicLSTMCell(5), BF16, [BF16, BF16]),  # torch's LSTM math: oneDNN's dtypes
    "lstm_peephole": (lambda: rnnkit.LSTMCell(5, use_peepholes=True), F32, [F32, F32]),
    "lstm_proj": (lambda: rnnkit.LSTMCell(5, num_proj=3), BF16, [F32, BF16]),  # (c, h)
    "layer_norm_lstm": (lambda: rnnkit.LayerNormBasicLSTMCell(5), F32, [F32, F32]),
    "gru": (lambda: rnnkit.GRUCell(5), F32, [F32]),
    "basic_rnn": (lambda: rnnkit.BasicRNNCell(5), BF16, [BF16]),
    "multi": (lambda: rnnkit.MultiRNNCell([rnnkit.BasicRNNCell(5), rnnkit.GRUCell(4)]), F32, [BF16, F32]),
    "residual": (lambda: rnnkit.ResidualWrapper(rnnkit.BasicRNNCell(3)), F32, [BF16]),
}


@pytest.mark.parametrize("case", sorted(CELLS))
def test_runners_follow_the_table_under_autocast(case):
    """dynamic_rnn under autocast: the table's dtypes, values within 2u of the float32 reference loop, and a
    backward reaching the float32 parameters in float32."""
    make, out_dtype, state_dtypes = CELLS[case]
    cell = make()
    cell.build(3)
    ref = copy.deepcopy(cell)
    x = torch.randn(2, 6, 3)
    with _autocast():
        out, state = rnnkit.dynamic_rnn(cell, x)
    assert out.dtype == out_dtype and [s.dtype for s in flatten(state)] == state_dtypes
    with engine.use("reference"):
        out_ref, state_ref = rnnkit.dynamic_rnn(ref, x)
    _close(out, out_ref, 2 * U, "outputs")
    for s, s_ref in zip(flatten(state), flatten(state_ref), strict=True):
        _close(s, s_ref, 2 * U, "final state")
    (out.float().sum() + sum(s.float().sum() for s in flatten(state))).backward()
    (out_ref.sum() + sum(s.sum() for s in flatten(state_ref))).backward()
    for p, q in zip(cell.parameters(), ref.parameters(), strict=True):
        assert p.grad.dtype == F32
        _close(p.grad, q.grad, 4 * U, "gradient")


def test_runners_with_lengths_take_the_native_loops_dtypes():
    """With lengths torch.nn runs its native loop (packed): an LSTM's outputs and state are float32."""
    cell = rnnkit.BasicLSTMCell(5)
    with _autocast():
        out, state = rnnkit.dynamic_rnn(cell, torch.randn(2, 6, 3), sequence_length=[6, 3])
        out_rnn, h = rnnkit.dynamic_rnn(rnnkit.BasicRNNCell(5), torch.randn(2, 6, 3), sequence_length=[6, 3])
    assert out.dtype == F32 and state.c.dtype == state.h.dtype == F32
    assert out_rnn.dtype == h.dtype == BF16


def test_float16_autocast_never_takes_onednn():
    """torch.nn.LSTM fails under float16 autocast on CPUs whose oneDNN has no fp16 LSTM; rnnkit runs float32 math and
    returns torch's table in float16, within 2 * 2^-11 (one fp16 rounding) of the float32 layer."""
    rk = rnnkit.LSTM(4, 6, num_layers=2)
    x = torch.randn(5, 8, 4)  # (a batch above FUSED_MAX_BATCH, in inference: the oneDNN route in float32)
    with torch.no_grad():
        out_ref, (h_ref, c_ref) = rk(x)
        with torch.autocast("cpu", dtype=torch.float16):
            out, (h, c) = rk(x)
    for got, want in ((out, out_ref), (h, h_ref), (c, c_ref)):
        assert got.dtype == torch.float16
        _close(got, want, 2 * 2.0**-11, "fp16")
