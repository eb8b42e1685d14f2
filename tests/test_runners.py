"""Runner semantics, checked against hand-stepped cells (the definition of each runner)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rnnkit as rk
from rnnkit._structure import flatten

ATOL = 1e-6


def _step_by_hand(cell, x_bt, state):
    """The definition: call the cell once per valid step of one sequence (x_bt: (time, depth))."""
    outs = []
    for t in range(x_bt.shape[0]):
        out, state = cell(x_bt[t : t + 1], state)
        outs.append(out)
    return outs, state


def _state_row(state, b):
    return rk._structure.map_structure(lambda s: s[b : b + 1], state)


@pytest.mark.parametrize("time_major", [False, True])
def test_dynamic_rnn_lengths_match_stepping_each_sequence(time_major):
    cell = rk.MultiRNNCell([rk.LSTMCell(5, use_peepholes=True, num_proj=3), rk.GRUCell(4)])
    x = torch.randn(4, 6, 2)
    lengths = [6, 3, 0, 1]
    s0 = rk._structure.map_structure(lambda s: torch.randn_like(s), cell.zero_state(4))
    inputs = x.transpose(0, 1) if time_major else x
    outputs, state = rk.dynamic_rnn(cell, inputs, lengths, initial_state=s0, time_major=time_major)
    if time_major:
        outputs = outputs.transpose(0, 1)
    for b, n in enumerate(lengths):
        outs, final = _step_by_hand(cell, x[b, :n], _state_row(s0, b))
        if n:
            torch.testing.assert_close(outputs[b, :n], torch.cat(outs), atol=ATOL, rtol=0)
        assert not outputs[b, n:].any(), "outputs past a sequence's length are zeros"
        for got, want in zip(flatten(state), flatten(final), strict=True):
            torch.testing.assert_close(got[b : b + 1], want, atol=ATOL, rtol=0)


def test_bidirectional_backward_reverses_within_each_length():
    fw, bw = rk.BasicLSTMCell(3), rk.GRUCell(2)
    x = torch.randn(3, 5, 4)
    lengths = torch.tensor([5, 2, 4])
    (out_fw, out_bw), (s_fw, s_bw) = rk.bidirectional_dynamic_rnn(fw, bw, x, sequence_length=lengths)
    for b, n in enumerate(lengths.tolist()):
        outs, final = _step_by_hand(bw, x[b, :n].flip(0), bw.zero_state(1))
        torch.testing.assert_close(out_bw[b, :n], torch.cat(outs).flip(0), atol=ATOL, rtol=0)
        assert not out_bw[b, n:].any()
        torch.testing.assert_close(s_bw[b : b + 1], final, atol=ATOL, rtol=0)
    ref_fw, ref_state = rk.dynamic_rnn(fw, x, lengths)
    torch.testing.assert_close(out_fw, ref_fw, atol=0, rtol=0)


def test_bidirectional_without_lengths_flips_time():
    fw, bw = rk.BasicRNNCell(3), rk.BasicRNNCell(3)
    x = torch.randn(2, 4, 3)
    (_, out_bw), (_, s_bw) = rk.bidirectional_dynamic_rnn(fw, bw, x)
    ref, ref_state = rk.dynamic_rnn(bw, x.flip(1))
    torch.testing.assert_close(out_bw, ref.flip(1), atol=0, rtol=0)
    torch.testing.assert_close(s_bw, ref_state, atol=0, rtol=0)


def test_reverse_sequence_keeps_padding_in_place():
    x = torch.arange(4.0).view(4, 1, 1).expand(4, 2, 1).contiguous()  # (T, B, 1): values = time index
    got = rk.reverse_sequence(x, torch.tensor([3, 0]))
    assert got[:, 0, 0].tolist() == [2.0, 1.0, 0.0, 3.0]
    assert got[:, 1, 0].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_static_rnn_equals_dynamic_rnn():
    cell, bw = rk.BasicLSTMCell(4), rk.GRUCell(2)
    x = torch.randn(3, 5, 2)
    outs, state = rk.static_rnn(cell, list(x.unbind(1)), sequence_length=[5, 1, 3])
    ref, ref_state = rk.dynamic_rnn(cell, x, sequence_length=[5, 1, 3])
    torch.testing.assert_close(torch.stack(outs, 1), ref, atol=0, rtol=0)
    torch.testing.assert_close(state.h, ref_state.h, atol=0, rtol=0)
    outs, s_fw, s_bw = rk.static_bidirectional_rnn(cell, bw, list(x.unbind(1)), sequence_length=[5, 1, 3])
    (ref_fw, ref_bw), (ref_sfw, ref_sbw) = rk.bidirectional_dynamic_rnn(cell, bw, x, sequence_length=[5, 1, 3])
    torch.testing.assert_close(torch.stack(outs, 1), torch.cat([ref_fw, ref_bw], -1), atol=0, rtol=0)
    torch.testing.assert_close(s_bw, ref_sbw, atol=0, rtol=0)


def test_stack_bidirectional_feeds_both_directions_to_the_next_layer():
    cells_fw = [rk.BasicLSTMCell(3), rk.BasicLSTMCell(2)]
    cells_bw = [rk.BasicLSTMCell(3), rk.BasicLSTMCell(2)]
    x = torch.randn(2, 5, 4)
    lengths = [5, 3]
    out, states_fw, states_bw = rk.contrib.rnn.stack_bidirectional_dynamic_rnn(
        cells_fw, cells_bw, x, sequence_length=lengths
    )
    layer0, (f0, b0) = rk.bidirectional_dynamic_rnn(cells_fw[0], cells_bw[0], x, lengths)
    layer1, (f1, b1) = rk.bidirectional_dynamic_rnn(cells_fw[1], cells_bw[1], torch.cat(layer0, -1), lengths)
    torch.testing.assert_close(out, torch.cat(layer1, -1), atol=0, rtol=0)
    assert tuple(out.shape) == (2, 5, 4)
    torch.testing.assert_close(states_fw[1].h, f1.h, atol=0, rtol=0)
    torch.testing.assert_close(states_bw[0].c, b0.c, atol=0, rtol=0)
    assert cells_fw[1].input_depth == 6  # layer 1 reads concat(fw, bw) of layer 0


def test_bidirectional_over_multi_rnn_cells_is_a_different_network():
    """The porting trap: two independent deep stacks are not torch's stacked bidirectional layers."""
    torch.manual_seed(1)
    cells_fw = [rk.BasicRNNCell(3), rk.BasicRNNCell(3)]
    cells_bw = [rk.BasicRNNCell(3), rk.BasicRNNCell(3)]
    x = torch.randn(2, 4, 3)
    stacked, _, _ = rk.stack_bidirectional_dynamic_rnn(cells_fw, cells_bw, x)
    # Same first-layer weights; the second layers of the two-stack version read 3 inputs, not 6.
    multi_fw = rk.MultiRNNCell([cells_fw[0], rk.BasicRNNCell(3)])
    multi_bw = rk.MultiRNNCell([cells_bw[0], rk.BasicRNNCell(3)])
    (o_fw, o_bw), _ = rk.bidirectional_dynamic_rnn(multi_fw, multi_bw, x)
    assert multi_fw.cell_1.kernel.shape[0] == 3 + 3 and cells_fw[1].kernel.shape[0] == 6 + 3
    assert not torch.allclose(torch.cat([o_fw, o_bw], -1), stacked)


def test_variational_dropout_uses_one_mask_per_unroll_shared_by_the_batch():
    """TF1 draws each variational mask with shape [1, size] (``convert_to_batch_shape`` prepends a 1): every
    row and every step of an unroll share it."""
    inner = rk.BasicRNNCell(64)
    cell = rk.DropoutWrapper(inner, output_keep_prob=0.5, variational_recurrent=True).train()
    outputs, _ = rk.dynamic_rnn(cell, torch.randn(8, 6, 3))
    dropped = outputs == 0
    assert dropped.any()
    assert torch.equal(dropped, dropped[:, :1].expand_as(dropped)), "same units dropped at every step"
    assert torch.equal(dropped, dropped[:1].expand_as(dropped)), "every row shares the mask"
    assert tuple(cell._masks["output_0"].shape) == (1, 64)
    outputs2, _ = rk.dynamic_rnn(cell, torch.randn(8, 6, 3))
    assert not torch.equal(outputs2 == 0, dropped), "a new unroll draws new masks"


def test_plain_dropout_changes_masks_over_time_and_scales_by_keep_prob():
    cell = rk.DropoutWrapper(rk.BasicRNNCell(256), output_keep_prob=0.75).train()
    outputs, _ = rk.dynamic_rnn(cell, torch.randn(16, 5, 3))
    dropped = outputs == 0
    assert not torch.equal(dropped[:, 0], dropped[:, 1])
    frac = dropped.float().mean().item()
    assert abs(frac - 0.25) < 0.03  # 20,480 Bernoulli draws: std ~0.003
    cell.eval()
    out_eval, _ = rk.dynamic_rnn(cell, torch.ones(2, 3, 3))
    ref, _ = rk.dynamic_rnn(cell.cell, torch.ones(2, 3, 3))
    torch.testing.assert_close(out_eval, ref, atol=0, rtol=0)


def test_state_dropout_leaves_lstm_memory_alone():
    inner = rk.BasicLSTMCell(32)
    cell = rk.DropoutWrapper(inner, state_keep_prob=0.5).train()
    x, s0 = torch.randn(4, 3), inner.zero_state(4)
    _, state = cell(x, s0)
    _, ref = inner(x, s0)
    torch.testing.assert_close(state.c, ref.c, atol=0, rtol=0)
    kept = state.h != 0
    torch.testing.assert_close(state.h[kept], ref.h[kept] / 0.5, atol=1e-6, rtol=0)
    assert (~kept).any()


def test_residual_wrapper_adds_inputs():
    inner = rk.GRUCell(3)
    cell = rk.ResidualWrapper(inner)
    x, h = torch.randn(2, 3), torch.randn(2, 3)
    out, state = cell(x, h)
    ref, ref_state = inner(x, h)
    torch.testing.assert_close(out, x + ref, atol=0, rtol=0)
    torch.testing.assert_close(state, ref_state, atol=0, rtol=0)


def test_empty_batch_and_zero_lengths():
    cell = rk.BasicLSTMCell(3)
    out, state = rk.dynamic_rnn(cell, torch.randn(2, 4, 2), sequence_length=[0, 0])
    assert not out.any() and not state.c.any()
    out, state = rk.dynamic_rnn(cell, torch.randn(0, 4, 2))
    assert tuple(out.shape) == (0, 4, 3)


def _gradcheck_runner(run, x, lengths_options=(None, [4, 2, 0])):
    for lengths in lengths_options:

        def fn(x, lengths=lengths):
            return tuple(flatten(run(x, lengths)))

        assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("time_major", [False, True])
def test_gradcheck_bidirectional_dynamic_rnn(time_major):
    fw, bw = rk.LSTMCell(3, use_peepholes=True).double(), rk.GRUCell(2).double()
    shape = (4, 3, 2) if time_major else (3, 4, 2)  # (T, B, D) or (B, T, D)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    _gradcheck_runner(lambda x, n: rk.bidirectional_dynamic_rnn(fw, bw, x, sequence_length=n, time_major=time_major), x)


def test_gradcheck_static_runners():
    cell, bw = rk.BasicLSTMCell(3).double(), rk.BasicRNNCell(2).double()
    x = torch.randn(3, 4, 2, dtype=torch.float64, requires_grad=True)
    _gradcheck_runner(lambda x, n: rk.static_rnn(cell, list(x.unbind(1)), sequence_length=n), x)
    _gradcheck_runner(lambda x, n: rk.static_bidirectional_rnn(cell, bw, list(x.unbind(1)), sequence_length=n), x)


def test_gradcheck_stack_bidirectional_dynamic_rnn():
    cells_fw = [rk.GRUCell(2).double(), rk.BasicLSTMCell(2).double()]
    cells_bw = [rk.BasicRNNCell(3).double(), rk.LSTMCell(2, num_proj=1).double()]
    x = torch.randn(3, 4, 2, dtype=torch.float64, requires_grad=True)
    _gradcheck_runner(lambda x, n: rk.stack_bidirectional_dynamic_rnn(cells_fw, cells_bw, x, sequence_length=n), x)


def test_tf_runners_take_numpy_arrays_as_tf_converts_them():
    """TF1's runners convert their inputs (``convert_to_tensor``): ported code often passes numpy arrays."""
    cell = rk.GRUCell(4, input_size=5)
    x = np.random.default_rng(0).standard_normal((2, 3, 5)).astype(np.float32)
    out, state = rk.dynamic_rnn(cell, x, dtype=rk.float32)
    want, want_state = rk.dynamic_rnn(cell, torch.from_numpy(x))
    assert torch.equal(out, want) and torch.equal(state, want_state)
    steps, _ = rk.static_rnn(cell, list(x.transpose(1, 0, 2)), dtype=rk.float32)
    assert torch.equal(torch.stack(steps, 1), want)
