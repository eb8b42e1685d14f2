"""The layers' TF options against rnnkit's TF1 cells (themselves checked against real TF in test_tf_parity).

A layer with ``forget_bias``/``peepholes``/``cell_clip``/``proj_size``/``layer_norm`` (LSTM), ``reset_after=False``
(GRU), or an RNN, equals its TF cells stacked with ``MultiRNNCell`` + ``dynamic_rnn`` (one direction) or
``stack_bidirectional_dynamic_rnn`` (two), after the weight mapping of conventions.md, written out below:
TF kernels ``(I + R, G*H)`` are ``[W_ih | W_hh].T`` with the gate blocks reordered, TF's single bias is
``b_ih + b_hh``, and ``forget_bias`` is added at run time on both sides. Tolerance 1e-5 (float32).
"""

from __future__ import annotations

import pytest
import torch

import rnnkit as rk
from rnnkit.layers import GRU, LSTM, RNN

TOL = {"atol": 1e-5, "rtol": 1e-5}
I, H, P, T, B = 3, 4, 2, 5, 3
LENGTHS = [5, 2, 4]


def _tf_lstm_blocks(w: torch.Tensor) -> torch.Tensor:
    """torch's LSTM gate blocks (i, f, g, o) along dim 0 -> TF's (i, j, f, o)."""
    i, f, g, o = w.chunk(4)
    return torch.cat([i, g, f, o])


def _kernel(layer, k, d, blocks=lambda w: w, rows=slice(None)):
    """TF's kernel ``[x rows; h rows] x gate columns`` from torch's weight_ih/weight_hh of (layer k, direction d)."""
    sfx = f"_l{k}" + ("_reverse" if d else "")
    w = torch.cat([getattr(layer, "weight_ih" + sfx)[rows], getattr(layer, "weight_hh" + sfx)[rows]], 1)
    return blocks(w).T


def _bias(layer, k, d, blocks=lambda w: w, rows=slice(None)):
    sfx = f"_l{k}" + ("_reverse" if d else "")
    if not layer.bias:
        return torch.zeros_like(blocks(getattr(layer, "weight_ih" + sfx)[rows][:, 0]))
    return blocks(getattr(layer, "bias_ih" + sfx)[rows] + getattr(layer, "bias_hh" + sfx)[rows])


def _param(layer, role, k, d):
    return getattr(layer, f"{role}_l{k}" + ("_reverse" if d else ""))


def _copy(dst: torch.nn.Parameter, src: torch.Tensor) -> None:
    with torch.no_grad():
        dst.copy_(src)


class _OnesFeature(rk.RNNCellWrapper):
    """Feeds the wrapped cell ``[x, 1]``: a kernel row for the constant feature acts as a bias."""

    def __init__(self, cell: rk.RNNCell):
        super().__init__(cell)
        self.input_depth = cell.input_depth - 1

    def call(self, inputs, state):
        return self.cell.call(torch.cat([inputs, inputs.new_ones(inputs.shape[0], 1)], 1), state)


def _tf_lstm_cell(layer: LSTM, k: int, d: int, depth: int) -> rk.RNNCell:
    """rnnkit's TF1 LSTM cell with the layer's (k, d) weights: LSTMCell, or LayerNormBasicLSTMCell."""
    if layer.layer_norm:
        # TF's layer-norm cell has no bias: the layer's bias rides on an extra all-ones input feature.
        cell = rk.LayerNormBasicLSTMCell(H, forget_bias=layer.forget_bias, input_size=depth + layer.bias)
        kernel = _kernel(layer, k, d, _tf_lstm_blocks)
        if layer.bias:
            kernel = torch.cat([kernel[:depth], _bias(layer, k, d, _tf_lstm_blocks)[None], kernel[depth:]])
        _copy(cell.kernel, kernel)
        gains, shifts = _param(layer, "weight_ln_gates", k, d).chunk(4), _param(layer, "bias_ln_gates", k, d).chunk(4)
        for scope, g, b in zip(("input", "forget", "transform", "output"), gains, shifts, strict=True):
            _copy(getattr(cell, scope).gamma, g)
            _copy(getattr(cell, scope).beta, b)
        _copy(cell.state.gamma, _param(layer, "weight_ln_cell", k, d))
        _copy(cell.state.beta, _param(layer, "bias_ln_cell", k, d))
        return _OnesFeature(cell) if layer.bias else cell
    cell = rk.LSTMCell(
        H,
        use_peepholes=layer.peepholes,
        cell_clip=layer.cell_clip,
        num_proj=layer.proj_size or None,
        forget_bias=layer.forget_bias,
        input_size=depth,
    )
    _copy(cell.kernel, _kernel(layer, k, d, _tf_lstm_blocks))
    _copy(cell.bias, _bias(layer, k, d, _tf_lstm_blocks))
    if layer.peepholes:
        for tf_name, role in (("w_i_diag", "weight_ci"), ("w_f_diag", "weight_cf"), ("w_o_diag", "weight_co")):
            _copy(getattr(cell, tf_name), _param(layer, role, k, d))
    if layer.proj_size:
        _copy(cell.projection.kernel, _param(layer, "weight_hr", k, d).T)
    return cell


def _tf_gru_cell(layer: GRU, k: int, d: int, depth: int) -> rk.RNNCell:
    """TF1's GRUCell: gates (r, u) = torch's (r, z) blocks, candidate = torch's n block."""
    cell = rk.GRUCell(H, input_size=depth)
    rz, n = slice(0, 2 * H), slice(2 * H, 3 * H)
    _copy(cell.gates.kernel, _kernel(layer, k, d, rows=rz))
    _copy(cell.gates.bias, _bias(layer, k, d, rows=rz))
    _copy(cell.candidate.kernel, _kernel(layer, k, d, rows=n))
    _copy(cell.candidate.bias, _bias(layer, k, d, rows=n))
    return cell


def _tf_rnn_cell(layer: RNN, k: int, d: int, depth: int) -> rk.RNNCell:
    cell = rk.BasicRNNCell(H, activation=layer.nonlinearity, input_size=depth)
    _copy(cell.kernel, _kernel(layer, k, d))
    _copy(cell.bias, _bias(layer, k, d))
    return cell


def _tf_cells(layer):
    make = {LSTM: _tf_lstm_cell, GRU: _tf_gru_cell, RNN: _tf_rnn_cell}[type(layer)]
    directions = 2 if layer.bidirectional else 1
    out = layer.proj_size or layer.hidden_size
    return [
        [make(layer, k, d, I if k == 0 else out * directions) for d in range(directions)]
        for k in range(layer.num_layers)
    ]


def _tf_state(layer, parts, k):
    """The layer's h_0 (and c_0) rows for layer k -> TF states per direction."""
    directions = 2 if layer.bidirectional else 1
    rows = [k * directions + d for d in range(directions)]
    if isinstance(layer, LSTM):
        h, c = parts
        return [rk.LSTMStateTuple(c[r], h[r]) for r in rows]
    (h,) = parts
    return [h[r] for r in rows]


CASES = {
    "lstm_forget_bias": (LSTM, {"forget_bias": 1.0}),
    "lstm_peepholes": (LSTM, {"peepholes": True}),
    "lstm_cell_clip": (LSTM, {"cell_clip": 0.25}),
    "lstm_all_tf_options": (LSTM, {"forget_bias": 0.7, "peepholes": True, "cell_clip": 0.3, "proj_size": P}),
    "lstm_layer_norm": (LSTM, {"layer_norm": True, "bias": False, "forget_bias": 1.0}),
    "lstm_layer_norm_bias": (LSTM, {"layer_norm": True}),
    "gru_reset_before": (GRU, {"reset_after": False}),
    "gru_reset_before_no_bias": (GRU, {"reset_after": False, "bias": False}),
    "rnn_tanh": (RNN, {}),
    "rnn_relu": (RNN, {"nonlinearity": "relu"}),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_layer_equals_stacked_tf_cells(case, bidirectional):
    cls, options = CASES[case]
    layer = cls(I, H, num_layers=2, bidirectional=bidirectional, batch_first=True, **options).eval()
    with torch.no_grad():  # every parameter away from its init, so that a mix-up shows
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    directions = 2 if bidirectional else 1
    sizes = layer._hidden_sizes()
    parts = [torch.randn(2 * directions, B, n) for n in sizes]
    x = (2.0 * torch.randn(B, T, I)).requires_grad_()
    hx = tuple(parts) if cls is LSTM else parts[0]
    out, h_n = layer(x, hx, lengths=LENGTHS)
    weight = torch.randn_like(out)
    (grad,) = torch.autograd.grad((out * weight).sum(), x)

    cells = _tf_cells(layer)
    if bidirectional:
        tf_out, states_fw, states_bw = rk.stack_bidirectional_dynamic_rnn(
            [c[0] for c in cells],
            [c[1] for c in cells],
            x,
            initial_states_fw=[_tf_state(layer, parts, k)[0] for k in range(2)],
            initial_states_bw=[_tf_state(layer, parts, k)[1] for k in range(2)],
            sequence_length=LENGTHS,
        )
        tf_states = [s for k in range(2) for s in (states_fw[k], states_bw[k])]
    else:
        stack = rk.MultiRNNCell([c[0] for c in cells])
        tf_out, tf_state = rk.dynamic_rnn(
            stack, x, LENGTHS, initial_state=tuple(_tf_state(layer, parts, k)[0] for k in range(2))
        )
        tf_states = list(tf_state)
    torch.testing.assert_close(out, tf_out, **TOL)
    torch.testing.assert_close(grad, torch.autograd.grad((tf_out * weight).sum(), x)[0], **TOL)
    if cls is LSTM:
        expected = [torch.stack([s.h for s in tf_states]), torch.stack([s.c for s in tf_states])]
    else:
        expected = [torch.stack(tf_states)]
    for got, want in zip(h_n if cls is LSTM else [h_n], expected, strict=True):
        torch.testing.assert_close(got, want, **TOL)
    if case == "lstm_cell_clip":  # the clip must have bitten for this test to mean anything
        c_n = h_n[1]
        assert torch.isclose(c_n.abs(), torch.tensor(0.25)).any() and (c_n.abs() <= 0.25 + 1e-6).all()
