"""The examples of the seed articles (shared/seeds), as tests: their shapes and counts must hold."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rnnkit as tf  # the porting idiom: change one import


def test_basic_rnn_cell_call():
    cell = tf.nn.rnn_cell.BasicRNNCell(num_units=128)
    assert cell.state_size == 128
    inputs = torch.randn(32, 128)
    h0 = cell.zero_state(32, np.float32)
    assert tuple(h0.shape) == (32, 128) and h0.dtype == torch.float32
    output, h1 = cell.call(inputs, h0)
    assert tuple(h1.shape) == (32, 128)
    assert output is h1  # a BasicRNNCell's output is its new state


def test_basic_lstm_cell_call():
    lstm_cell = tf.nn.rnn_cell.BasicLSTMCell(num_units=128)
    inputs = torch.randn(32, 100)
    h0 = lstm_cell.zero_state(32, np.float32)
    output, h1 = lstm_cell.call(inputs, h0)
    assert tuple(h1.h.shape) == (32, 128)
    assert tuple(h1.c.shape) == (32, 128)
    assert tuple(lstm_cell.kernel.shape) == (228, 512)
    assert tuple(lstm_cell.bias.shape) == (512,)
    assert torch.equal(output, h1.h)


def test_multi_rnn_cell_state_size_and_call():
    num_layers = 2
    multi = tf.nn.rnn_cell.MultiRNNCell([tf.nn.rnn_cell.BasicRNNCell(num_units=128) for _ in range(num_layers)])
    assert multi.state_size == (128, 128)  # two states of 128 units, not a 128x128 matrix
    h0 = multi.zero_state(batch_size=32, dtype=np.float32)
    output, h1 = multi.call(torch.randn(32, 128), h0)
    assert tuple(output.shape) == (32, 128)
    assert isinstance(h1, tuple) and [tuple(h.shape) for h in h1] == [(32, 128), (32, 128)]


def test_seed_shared_cell_idiom_runs_as_in_tf1_with_shared_weights():
    """Seed 001's own code: ``MultiRNNCell([rnn_cell] * num_layers)``. TF1 warns that the layers share weights and
    runs with one kernel; the second layer is the same cell applied to the first layer's output."""
    num_layers = 2
    rnn_cell = tf.nn.rnn_cell.BasicRNNCell(num_units=128)
    with pytest.warns(UserWarning, match="same object and will share weights"):
        mutil_rnn_cell = tf.nn.rnn_cell.MultiRNNCell([rnn_cell] * num_layers)
    assert mutil_rnn_cell.state_size == (128, 128)
    inputs = torch.randn(32, 128)
    h0 = mutil_rnn_cell.zero_state(batch_size=32, dtype=np.float32)
    output, h1 = mutil_rnn_cell.call(inputs, h0)
    assert tuple(output.shape) == (32, 128) and [tuple(h.shape) for h in h1] == [(32, 128), (32, 128)]
    assert [name for name, _ in mutil_rnn_cell.named_parameters()] == ["cell_0.kernel", "cell_0.bias"]
    first, _ = rnn_cell(inputs, h0[0])  # by hand: the one cell, twice
    second, _ = rnn_cell(first, h0[1])
    torch.testing.assert_close(output, second, rtol=0, atol=0)


def test_seed_shared_cell_with_a_changing_depth_fails_naming_the_layers():
    """Seed 002: ``[BasicLSTMCell(2)] * 3`` on 5 inputs fails in TF1 with a shape error (layer 0 reads 5, layer 1
    reads 2 through the same kernel); rnnkit names the layers and depths, and builds nothing."""
    lstm_cell = tf.contrib.rnn.BasicLSTMCell(2)
    with pytest.warns(UserWarning, match="share weights"):
        stacked = tf.contrib.rnn.MultiRNNCell([lstm_cell] * 3)
    with pytest.raises(ValueError, match="cell 1 is the same BasicLSTMCell object as cell 0.*depth 5.*depth 2"):
        tf.nn.dynamic_rnn(stacked, torch.randn(4, 7, 5), dtype=tf.float32)
    assert not lstm_cell.built


def test_contrib_three_layer_lstm_stack():
    """The seed's `MultiRNNCell([BasicLSTMCell(2)] * 3)` question, written the TF >= 1.0 way."""
    stacked = tf.contrib.rnn.MultiRNNCell([tf.contrib.rnn.BasicLSTMCell(2) for _ in range(3)])
    outputs, state = tf.nn.dynamic_rnn(stacked, torch.randn(4, 7, 5), dtype=tf.float32)
    assert tuple(outputs.shape) == (4, 7, 2)
    assert len(state) == 3 and all(isinstance(s, tf.LSTMStateTuple) for s in state)
    names = {k: tuple(v.shape) for k, v in stacked.named_parameters()}
    assert names == {
        "cell_0.kernel": (5 + 2, 8),
        "cell_0.bias": (8,),
        "cell_1.kernel": (2 + 2, 8),
        "cell_1.bias": (8,),
        "cell_2.kernel": (2 + 2, 8),
        "cell_2.bias": (8,),
    }


@pytest.mark.parametrize("input_depth, num_units", [(100, 128), (10, 4), (1, 1)])
def test_parameter_count_formulas(input_depth, num_units):
    rnn = tf.nn.rnn_cell.BasicRNNCell(num_units, input_size=input_depth)
    lstm = tf.nn.rnn_cell.BasicLSTMCell(num_units, input_size=input_depth)
    gru = tf.nn.rnn_cell.GRUCell(num_units, input_size=input_depth)
    basic = (input_depth + num_units) * num_units + num_units
    assert rnn.count_params() == basic
    assert lstm.count_params() == 4 * basic
    assert gru.count_params() == 3 * basic


def test_seed_basic_rnn_cell_on_100_inputs_has_29312_parameters():
    cell = tf.nn.rnn_cell.BasicRNNCell(128)
    cell(torch.randn(1, 100), cell.zero_state(1, tf.float32))
    assert tuple(cell.kernel.shape) == (228, 128)
    assert cell.count_params() == 29_312


def test_dynamic_rnn_shapes_from_the_seed():
    """outputs (batch_size, time_steps, output_size); state (batch_size, state_size), independent of time."""
    cell = tf.nn.rnn_cell.BasicRNNCell(128)
    for steps in (1, 9):
        outputs, state = tf.nn.dynamic_rnn(cell, torch.randn(32, steps, 10), initial_state=cell.zero_state(32))
        assert tuple(outputs.shape) == (32, steps, 128)
        assert tuple(state.shape) == (32, 128)
