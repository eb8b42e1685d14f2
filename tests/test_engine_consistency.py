"""Every engine path accepts and refuses the same inputs and returns the same results (cases an audit found)."""

from __future__ import annotations

import pytest
import torch

import rnnkit as rk
from rnnkit._structure import flatten

BACKENDS = ["auto", "torch", "fused", "reference"]


@pytest.mark.parametrize("num_proj", [3, 4, 6])
def test_projection_to_num_units_or_more_runs_on_every_path(num_proj):
    """torch's kernel infers a projection from h's size differing from c's: a projection to ``num_units`` (or
    more) is none of its business, and must not reach it (it crashed in ``MatrixRef``)."""
    cell = rk.LSTMCell(4, num_proj=num_proj, input_size=3).double()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    results = []
    for backend in BACKENDS:
        with rk.engine.use(backend):
            out, state = rk.dynamic_rnn(cell, x)
        results.append((backend, out, flatten(state)))
    for backend, out, state in results[:-1]:
        torch.testing.assert_close(out, results[-1][1], atol=1e-10, rtol=1e-10, msg=backend)
        for a, b in zip(state, results[-1][2], strict=True):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10, msg=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("make", [lambda: rk.LSTM(3, 4, 2), lambda: rk.GRU(3, 4, bidirectional=True), rk.RNN])
def test_empty_sequences_are_refused_by_the_layers_on_every_path_as_torch_refuses_them(backend, make):
    layer = make() if not isinstance(make, type) else make(3, 4)
    torch_layer = getattr(torch.nn, type(layer).__name__)(3, 4)
    with pytest.raises(RuntimeError, match="Expected sequence length to be larger than 0"):
        torch_layer(torch.randn(0, 2, 3))
    with rk.engine.use(backend), pytest.raises(RuntimeError, match="Expected sequence length to be larger than 0"):
        layer(torch.randn(0, 2, 3))


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_sequences_give_empty_outputs_through_the_tf_runners_on_every_path(backend):
    """TF's dynamic_rnn runs zero steps: empty outputs, the initial state back."""
    cell = rk.MultiRNNCell([rk.BasicLSTMCell(4), rk.GRUCell(3)], input_size=3)
    s0 = cell.zero_state(2, torch.float32)
    with rk.engine.use(backend):
        out, final = rk.dynamic_rnn(cell, torch.randn(2, 0, 3), initial_state=s0)
    assert out.shape == (2, 0, 3)
    for a, b in zip(flatten(final), flatten(s0), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("value", [float("nan"), -1.0, float("-inf")])
def test_nan_and_negative_clips_are_refused(value):
    with pytest.raises(ValueError, match="LSTMCell: cell_clip must be a non-negative number"):
        rk.LSTMCell(4, cell_clip=value)
    with pytest.raises(ValueError, match="LSTMCell: proj_clip must be a non-negative number"):
        rk.LSTMCell(4, num_proj=2, proj_clip=value)
    with pytest.raises(ValueError, match="LSTM: cell_clip must be a non-negative number"):
        rk.LSTM(3, 4, cell_clip=value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_clip_of_zero_clips_to_zero_as_tf_does(backend):
    """TF's ``clip_by_value(c, -0.0, 0.0)``: the memory is 0 after every step, so ``h = sigmoid(o) * tanh(0) = 0``
    (the kernels read a clip of 0 as none, so such a cell runs on the loop)."""
    cell = rk.LSTMCell(4, cell_clip=0.0, input_size=3)
    layer = rk.LSTM(3, 4, cell_clip=0.0)
    with rk.engine.use(backend):
        out, state = rk.dynamic_rnn(cell, torch.randn(2, 5, 3))
        y, (h, c) = layer(torch.randn(5, 2, 3))
    assert not out.any() and not state.c.any() and not y.any() and not c.any()


def test_infinite_clip_is_no_clip_on_every_path():
    x = torch.randn(2, 6, 3, dtype=torch.float64) * 5
    cell = rk.LSTMCell(4, cell_clip=float("inf"), num_proj=2, proj_clip=float("inf"), input_size=3).double()
    plain = rk.LSTMCell(4, num_proj=2, input_size=3).double()
    plain.load_state_dict(cell.state_dict())
    with rk.engine.use("reference"):
        want, _ = rk.dynamic_rnn(plain, x)
    for backend in BACKENDS:
        with rk.engine.use(backend):
            got, _ = rk.dynamic_rnn(cell, x)
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10, msg=backend)


def test_meta_tensors_follow_shapes_with_lengths():
    """Shape inference on the meta device: no value is read (lengths included), every shape is the real one."""
    y, (h, c) = rk.LSTM(4, 3, 2, device="meta", bidirectional=True)(torch.randn(5, 2, 4, device="meta"), lengths=[5, 2])
    assert y.device.type == "meta" and y.shape == (5, 2, 6) and h.shape == c.shape == (4, 2, 3)
    cell = rk.GRUCell(3, input_size=4, device="meta")
    out, state = rk.dynamic_rnn(cell, torch.randn(2, 5, 4, device="meta"), sequence_length=[5, 2])
    assert out.shape == (2, 5, 3) and state.shape == (2, 3)
