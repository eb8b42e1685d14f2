"""TensorFlow 1's runner tests (``static_rnn``, ``dynamic_rnn``, the bidirectional runners), run on rnnkit.

Sources (see ``NOTES.md``): ``tensorflow/python/kernel_tests/rnn_cell_test.py`` (TF 1.15 era), the classes
after ``LSTMTest.testCellClipping``: the rest of ``RNNTest`` and ``LSTMTest``, ``BidirectionalRNNTest`` and
``GRUTest``, plus ``RNNTest``'s runner tests before it; and ``tensorflow/python/kernel_tests/rnn_test.py``
(``RNNTest``; its eager branch where upstream runs graph and eager modes). Upstream's eager numpy inputs are
torch tensors here (rnnkit's runners take tensors).

Translation from graph mode to eager rnnkit, as in ``test_tf1_rnn_cell.py``: a placeholder fed in
``sess.run`` is the fed value (``max_length * [placeholder]`` is one placeholder repeated: every step gets
the fed value); a float64 ``np.random.randn`` value fed into a float32 placeholder is cast to float32.
``initializer=random_uniform_initializer(-a, a, seed=s)`` on a cell: every variable TF creates with the cell's
initializer (``LSTMCell``: ``kernel``, ``projection.kernel``, the peepholes ``w_*_diag``) is drawn from
``U(-a, a)`` (torch's generator; the suite's seed replaces TF's op seed: no expected value depends on the
draw); the bias keeps its zeros. Two cells that TF initialises from the same seeded initializer get equal
values (TF draws the same numbers for the same op seed and shape): here the second cell copies the first's.
Reusing a variable scope (``reuse=True``, ``scope.reuse_variables()``) is calling the same cell object again.
``assertAllClose`` is ``rtol=atol=1e-6`` (TF's defaults); ``assertAllEqual``/``assertEqual`` are exact.
Upstream's inputs, shapes, lengths and assertions are kept; ``np.random.seed(23489)`` is its ``setUp``.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import rnnkit
from rnnkit import LSTMStateTuple


def assert_all_close(a, b, rtol=1e-6, atol=1e-6):
    """TF's ``assertAllClose`` (nested structures as arrays; TF checks the shapes first)."""
    a, b = _np(a), _np(b)
    assert a.shape == b.shape, f"Shape mismatch: expected {a.shape}, got {b.shape}"
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def assert_all_equal(a, b):
    """TF's ``assertAllEqual`` (shapes first, as TF)."""
    a, b = _np(a), _np(b)
    assert a.shape == b.shape, f"Shape mismatch: expected {a.shape}, got {b.shape}"
    np.testing.assert_array_equal(a, b)


def _np(x):
    if isinstance(x, torch.Tensor):
        return x.detach().numpy()
    if isinstance(x, (list, tuple)):
        return np.asarray([_np(v) for v in x])
    return np.asarray(x)


def hstack(state):
    """``np.hstack`` of a (nested) state structure."""
    return np.hstack([_np(s) for s in _flatten(state)])


def _flatten(state):
    if isinstance(state, (tuple, list)):
        return [leaf for s in state for leaf in _flatten(s)]
    return [state]


def f32(x):
    return torch.as_tensor(np.asarray(x), dtype=torch.float32)


@pytest.fixture(autouse=True)
def _np_seed():
    """Upstream's ``setUp``: ``np.random.seed(23489)``."""
    np.random.seed(23489)


def tf_uniform_initializer_(cell: rnnkit.RNNCell, minval: float, maxval: float) -> rnnkit.RNNCell:
    """``initializer=random_uniform_initializer(minval, maxval)`` on a built cell: the variables TF creates
    with the cell's initializer (every ``kernel``, the peepholes ``w_*_diag``) drawn from ``U(minval, maxval)``;
    biases keep TF's zeros."""
    with torch.no_grad():
        for module in cell.modules():
            for name, p in module.named_parameters(recurse=False):
                if name == "kernel" or name.endswith("_diag"):
                    p.uniform_(minval, maxval)
    return cell


def built(cell: rnnkit.RNNCell, input_depth: int, minval: float = -0.01, maxval: float = 0.01) -> rnnkit.RNNCell:
    cell.build(input_depth)
    return tf_uniform_initializer_(cell, minval, maxval)


class Plus1RNNCell(rnnkit.RNNCell):
    """RNN Cell generating (output, new_state) = (input + 1, state + 1)."""

    @property
    def output_size(self):
        return 5

    @property
    def state_size(self):
        return 5

    def call(self, inputs, state):
        return inputs + 1, state + 1


# --- RNNTest ------------------------------------------------------------------------------------------
def test_rnn():  # RNNTest.testRNN
    cell = Plus1RNNCell()
    batch_size, input_size, max_length = 2, 5, 8
    input_value = np.random.randn(batch_size, input_size)
    inputs = max_length * [f32(input_value)]
    outputs, state = rnnkit.static_rnn(cell, inputs, dtype=torch.float32)
    assert len(outputs) == len(inputs)
    for out, inp in zip(outputs, inputs, strict=True):
        assert out.shape == inp.shape
        assert out.dtype == inp.dtype
    for v in outputs:
        assert_all_close(v, input_value + 1.0)
    assert_all_close(state, max_length * np.ones((batch_size, input_size), dtype=np.float32))


def test_dropout():  # RNNTest.testDropout
    cell = Plus1RNNCell()
    full_dropout_cell = rnnkit.DropoutWrapper(cell, input_keep_prob=1e-6, seed=0)
    # TF: (name, dep), = full_dropout_cell._checkpoint_dependencies; dep is cell, name == "cell"
    assert [(n, c) for n, c in full_dropout_cell.named_children()] == [("cell", cell)]
    batch_size, input_size, max_length = 2, 5, 8
    input_value = np.random.randn(batch_size, input_size)
    inputs = max_length * [f32(input_value)]
    outputs, state = rnnkit.static_rnn(cell, inputs, dtype=torch.float32)
    dropped_outputs, _ = rnnkit.static_rnn(full_dropout_cell, inputs, dtype=torch.float32)
    assert len(outputs) == len(inputs)
    for out, inp in zip(outputs, inputs, strict=True):
        assert list(out.shape) == list(inp.shape)
        assert out.dtype == inp.dtype
    for v in outputs:
        assert_all_close(v, input_value + 1.0)
    for d_v in dropped_outputs[:-1]:  # Add 1.0 to dropped_out (all zeros)
        assert_all_close(d_v, np.ones_like(input_value))


def test_dynamic_calculation():  # RNNTest.testDynamicCalculation
    cell = Plus1RNNCell()
    sequence_length = torch.tensor([2, 3], dtype=torch.int64)
    batch_size, input_size, max_length = 2, 5, 8
    input_value = np.random.randn(batch_size, input_size)
    inputs = max_length * [f32(input_value)]
    dynamic_values, dynamic_state = rnnkit.static_rnn(
        cell, inputs, sequence_length=sequence_length, dtype=torch.float32
    )
    assert len(dynamic_values) == len(inputs)
    # outputs are fully calculated for t = 0, 1
    for v in dynamic_values[:2]:
        assert_all_close(v, input_value + 1.0)
    # outputs at t = 2 are zero for entry 0, calculated for entry 1
    assert_all_close(dynamic_values[2], np.vstack((np.zeros(input_size), 1.0 + input_value[1, :])))
    # outputs at t = 3+ are zero
    for v in dynamic_values[3:]:
        assert_all_equal(v, np.zeros_like(input_value))
    # the final states are: entry 0 the values from t=1, entry 1 the values from t=2
    assert_all_equal(
        dynamic_state, np.vstack((1.0 * (1 + 1) * np.ones(input_size), 1.0 * (2 + 1) * np.ones(input_size)))
    )


# --- LSTMTest -----------------------------------------------------------------------------------------
def test_lstm_dtype():  # LSTMTest.testDType
    # Not passing dtype in constructor results in default float32
    lstm = rnnkit.LSTMCell(10)
    lstm.build(50)
    assert lstm.bias.dtype == torch.float32
    for dtype in [torch.float16, torch.float32, torch.float64]:
        lstm = rnnkit.LSTMCell(10, dtype=dtype)
        lstm.build(50)
        assert lstm.bias.dtype == dtype


def test_no_proj_no_sharding():  # LSTMTest.testNoProjNoSharding
    num_units, input_size, batch_size, max_length = 3, 5, 2, 8
    cell = built(rnnkit.LSTMCell(num_units, state_is_tuple=False), input_size)
    input_value = np.random.randn(batch_size, input_size)
    inputs = max_length * [f32(input_value)]
    outputs, _ = rnnkit.static_rnn(cell, inputs, dtype=torch.float32)
    assert len(outputs) == len(inputs)
    for out in outputs:
        assert list(out.shape) == [batch_size, num_units]


def test_proj_no_sharding():  # LSTMTest.testProjNoSharding
    num_units, input_size, batch_size, num_proj, max_length = 3, 5, 2, 4, 8
    cell = rnnkit.LSTMCell(num_units, use_peepholes=True, num_proj=num_proj, state_is_tuple=False)
    built(cell, input_size)
    input_value = np.random.randn(batch_size, input_size)
    inputs = max_length * [f32(input_value)]
    outputs, _ = rnnkit.static_rnn(cell, inputs, dtype=torch.float32)
    assert len(outputs) == len(inputs)
    for out in outputs:
        assert list(out.shape) == [batch_size, num_proj]


def test_double_input():  # LSTMTest.testDoubleInput (without the shard arguments, see NOTES.md)
    num_units, input_size, batch_size, num_proj, max_length = 3, 5, 2, 4, 8
    # initializer=random_uniform_initializer(-1, 1); TF's variables take the float64 inputs' dtype
    cell = rnnkit.LSTMCell(num_units, use_peepholes=True, num_proj=num_proj, state_is_tuple=False, dtype=torch.float64)
    built(cell, input_size, -1, 1)
    input_value = np.asarray(np.random.randn(batch_size, input_size), dtype=np.float64)
    inputs = max_length * [torch.as_tensor(input_value)]
    outputs, _ = rnnkit.static_rnn(cell, inputs, initial_state=cell.zero_state(batch_size, torch.float64))
    assert len(outputs) == len(inputs)
    assert _np(outputs[0]).dtype == input_value.dtype


def test_double_input_with_dropout_and_dynamic_calculation():  # testDoubleInputWithDropoutAndDynamicCalculation
    """Smoke test for using LSTM with doubles, dropout, dynamic calculation."""
    num_units, input_size, batch_size, num_proj, max_length = 3, 5, 2, 4, 8
    cell = rnnkit.LSTMCell(num_units, use_peepholes=True, num_proj=num_proj, state_is_tuple=False, dtype=torch.float64)
    built(cell, input_size)
    dropout_cell = rnnkit.DropoutWrapper(cell, 0.5, seed=0)
    input_value = np.asarray(np.random.randn(batch_size, input_size), dtype=np.float64)
    inputs = max_length * [torch.as_tensor(input_value)]
    outputs, state = rnnkit.static_rnn(
        dropout_cell, inputs, sequence_length=[2, 3], initial_state=cell.zero_state(batch_size, torch.float64)
    )
    assert len(outputs) == len(inputs)
    assert _np(outputs[0]).dtype == input_value.dtype
    assert _np(state).dtype == input_value.dtype


def test_sharing_weights_with_reuse():  # LSTMTest.testSharingWeightsWithReuse
    num_units, input_size, batch_size, num_proj, max_length = 3, 5, 2, 4, 8
    cell = built(rnnkit.LSTMCell(num_units, use_peepholes=True, num_proj=num_proj, state_is_tuple=False),
                 input_size, -1, 1)  # fmt: skip
    cell_d = built(rnnkit.LSTMCell(num_units, use_peepholes=True, num_proj=num_proj, state_is_tuple=False),
                   input_size, -1, 1)  # fmt: skip (initializer_d: seed + 1, another draw)
    input_value = np.random.randn(batch_size, input_size)
    inputs = max_length * [f32(input_value)]
    outputs0, _ = rnnkit.static_rnn(cell, inputs, dtype=torch.float32)
    outputs1, _ = rnnkit.static_rnn(cell, inputs, dtype=torch.float32)  # share_scope, reuse=True
    outputs2, _ = rnnkit.static_rnn(cell_d, inputs, dtype=torch.float32)  # diff_scope
    assert len(outputs0) == len(outputs1) == len(outputs2)
    for o1, o2, o3 in zip(outputs0, outputs1, outputs2, strict=True):
        # Same weights used by both RNNs so outputs should be the same.
        assert_all_equal(o1, o2)
        # Different weights used so outputs should be different.
        assert np.linalg.norm(_np(o1) - _np(o3)) > 1e-6


def test_sharing_weights_with_different_namescope():  # LSTMTest.testSharingWeightsWithDifferentNamescope
    num_units, input_size, batch_size, num_proj, max_length = 3, 5, 2, 4, 8
    cell = built(rnnkit.LSTMCell(num_units, use_peepholes=True, num_proj=num_proj, state_is_tuple=False),
                 input_size, -1, 1)  # fmt: skip
    input_value = np.random.randn(batch_size, input_size)
    inputs = max_length * [f32(input_value)]
    outputs0, _ = rnnkit.static_rnn(cell, inputs, dtype=torch.float32)  # name_scope("scope0")
    outputs1, _ = rnnkit.static_rnn(cell, inputs, dtype=torch.float32)  # name_scope("scope1"), reuse=True
    assert len(outputs0) == len(outputs1)
    for out0, out1 in zip(outputs0, outputs1, strict=True):
        assert_all_equal(out0, out1)


def test_dynamic_rnn_allows_unknown_time_dimension():  # LSTMTest.testDynamicRNNAllowsUnknownTimeDimension
    cell = rnnkit.GRUCell(30)
    # Smoke test, this should not raise an error (shape [1, None, 20]: a few time lengths)
    for time in (1, 4, 7):
        rnnkit.dynamic_rnn(cell, torch.randn(1, time, 20), dtype=torch.float32)


def test_dynamic_rnn_with_tuple_states():  # LSTMTest.testDynamicRNNWithTupleStates (eager branch)
    num_units, input_size, batch_size, num_proj, max_length = 3, 5, 2, 4, 8
    sequence_length = [4, 6]
    inputs = max_length * [f32(np.random.randn(batch_size, input_size).astype(np.float32))]
    inputs_c = torch.stack(inputs)
    cell = built(rnnkit.LSTMCell(num_units, use_peepholes=True, num_proj=num_proj, state_is_tuple=True), input_size)
    outputs_static, state_static = rnnkit.static_rnn(
        cell, inputs, dtype=torch.float32, sequence_length=sequence_length
    )
    outputs_dynamic, state_dynamic = rnnkit.dynamic_rnn(
        cell, inputs_c, dtype=torch.float32, time_major=True, sequence_length=sequence_length
    )
    assert isinstance(state_static, LSTMStateTuple)
    assert isinstance(state_dynamic, LSTMStateTuple)
    assert state_static[0] is state_static.c
    assert state_static[1] is state_static.h
    assert state_dynamic[0] is state_dynamic.c
    assert state_dynamic[1] is state_dynamic.h
    assert_all_equal(torch.stack(outputs_static), outputs_dynamic)
    assert_all_equal(hstack(state_static), hstack(state_dynamic))


def test_dynamic_rnn_with_nested_tuple_states():  # LSTMTest.testDynamicRNNWithNestedTupleStates (eager)
    num_units, input_size, batch_size, num_proj, max_length = 3, 5, 2, 4, 8
    sequence_length = [4, 6]
    inputs = max_length * [f32(np.random.randn(batch_size, input_size).astype(np.float32))]
    inputs_c = torch.stack(inputs)

    def _cell(i):
        return rnnkit.LSTMCell(num_units + i, use_peepholes=True, num_proj=num_proj + i, state_is_tuple=True)

    # This creates a state tuple which has 4 sub-tuples of length 2 each.
    cell = built(rnnkit.MultiRNNCell([_cell(i) for i in range(4)], state_is_tuple=True), input_size)
    assert len(cell.state_size) == 4
    for i in range(4):
        assert len(cell.state_size[i]) == 2
    test_zero = cell.zero_state(1, torch.float32)
    assert len(test_zero) == 4
    for i in range(4):
        assert test_zero[i][0].shape[1] == cell.state_size[i][0]
        assert test_zero[i][1].shape[1] == cell.state_size[i][1]

    outputs_static, state_static = rnnkit.static_rnn(
        cell, inputs, dtype=torch.float32, sequence_length=sequence_length
    )
    outputs_dynamic, state_dynamic = rnnkit.dynamic_rnn(
        cell, inputs_c, dtype=torch.float32, time_major=True, sequence_length=sequence_length
    )
    assert_all_equal(torch.stack(outputs_static), outputs_dynamic)
    assert_all_equal(hstack(_flatten(state_static)), hstack(_flatten(state_dynamic)))


@pytest.mark.parametrize("use_sequence_length", [False, True], ids=["", "WithSequenceLength"])
def test_dynamic_equivalent_to_static_rnn(use_sequence_length):  # testDynamicEquivalentToStaticRNN[WithSequenceLength]
    """Both of upstream's modes: the eager branch's forward comparison and the graph branch's gradients
    (of all outputs + final state, and of ``outputs[0]``, ``outputs[-1]``, the state singly, w.r.t. the
    inputs and the trainable variables), with one cell (TF's graph mode makes two from one seeded
    initializer, i.e. equal variables)."""
    time_steps, num_units, num_proj, input_size, batch_size = 8, 3, 4, 5, 2
    input_values = np.random.randn(time_steps, batch_size, input_size).astype(np.float32)
    sequence_length = np.random.randint(0, time_steps, size=batch_size) if use_sequence_length else None
    cell = built(rnnkit.LSTMCell(num_units, use_peepholes=True, num_proj=num_proj, state_is_tuple=False), input_size)
    trainable_variables = [p for p in cell.parameters() if p.requires_grad]
    assert len(trainable_variables) > 1

    def readouts(run):
        concat_inputs = torch.tensor(input_values, requires_grad=True)
        outputs, state = run(concat_inputs)
        grads = torch.autograd.grad([*outputs, state], [concat_inputs], [torch.ones_like(o) for o in [*outputs, state]],
                                    retain_graph=True)  # fmt: skip
        individual = [torch.autograd.grad(y, [concat_inputs], torch.ones_like(y), retain_graph=True)
                      for y in [outputs[0], outputs[-1], state]]  # fmt: skip
        variable = [torch.autograd.grad(y, trainable_variables, torch.ones_like(y), retain_graph=True,
                                        allow_unused=True) for y in [outputs[0], outputs[-1], state]]  # fmt: skip
        return outputs, state, grads, individual, variable

    def static(concat_inputs):
        return rnnkit.static_rnn(cell, list(concat_inputs.unbind(0)), sequence_length=sequence_length,
                                 dtype=torch.float32)  # fmt: skip

    def dynamic(concat_inputs):
        outputs, state = rnnkit.dynamic_rnn(cell, inputs=concat_inputs, sequence_length=sequence_length,
                                            time_major=True, dtype=torch.float32)  # fmt: skip
        return list(outputs.unbind(0)), state

    values_static, state_static, grads_static, ind_static, var_static = readouts(static)
    values_dynamic, state_dynamic, grads_dynamic, ind_dynamic, var_dynamic = readouts(dynamic)
    assert len(values_static) == len(values_dynamic)
    for value_static, value_dynamic in zip(values_static, values_dynamic, strict=True):
        assert_all_close(value_static, value_dynamic)
    assert_all_close(state_static, state_dynamic)
    assert_all_close(grads_static, grads_dynamic)
    assert len(ind_static) == len(ind_dynamic)
    assert len(var_static) == len(var_dynamic)
    for a, b in zip(ind_static, ind_dynamic, strict=True):
        assert_all_close(a, b)
    for a_list, b_list in zip(var_static, var_dynamic, strict=True):
        for a, b in zip(a_list, b_list, strict=True):
            # TF's gradients() gives None for a variable y does not depend on (none here: all do)
            assert a is not None and b is not None
            assert_all_close(a, b)


# --- BidirectionalRNNTest -----------------------------------------------------------------------------
def _same_initializer_pair(make):
    """``cell_fw``, ``cell_bw`` made with one seeded initializer: equal variables."""
    cell_fw, cell_bw = make(), make()
    cell_bw.load_state_dict(cell_fw.state_dict())
    return cell_fw, cell_bw


def _create_bidirectional_rnn(use_sequence_length):
    num_units, input_size, batch_size, max_length = 3, 5, 2, 8
    # LSTMCell(num_units, input_size, ...): TF 1.15's second positional parameter is use_peepholes.
    cell_fw, cell_bw = _same_initializer_pair(
        lambda: built(rnnkit.LSTMCell(num_units, input_size, state_is_tuple=False), input_size)
    )
    input_value = np.random.randn(batch_size, input_size)
    inputs = max_length * [f32(input_value)]
    sequence_length = [2, 3] if use_sequence_length else None
    outputs, state_fw, state_bw = rnnkit.static_bidirectional_rnn(
        cell_fw, cell_bw, inputs, dtype=torch.float32, sequence_length=sequence_length
    )
    assert len(outputs) == len(inputs)
    for out in outputs:
        assert list(out.shape) == [batch_size, 2 * num_units]
    return _np(torch.stack(outputs)), _np(state_fw), _np(state_bw)


def test_bidirectional_rnn():  # BidirectionalRNNTest.testBidirectionalRNN (use_shape False/True alike here)
    for _use_shape in (False, True):
        out, s_fw, s_bw = _create_bidirectional_rnn(use_sequence_length=True)
        # First sequence in batch is length=2: t=0 forward == t=1 backward, t=1 forward == t=0 backward
        for d in range(3):
            assert_all_close(out[0][0][d], out[1][0][3 + d])
            assert_all_close(out[1][0][d], out[0][0][3 + d])
        # Second sequence in batch is length=3
        for d in range(3):
            assert_all_close(out[0][1][d], out[2][1][3 + d])
            assert_all_close(out[1][1][d], out[1][1][3 + d])
            assert_all_close(out[2][1][d], out[0][1][3 + d])
        # the forward and backward final state should be exactly the same
        assert_all_close(s_fw, s_bw)


def test_bidirectional_rnn_without_sequence_length():  # testBidirectionalRNNWithoutSequenceLength
    for _use_shape in (False, True):
        out, s_fw, s_bw = _create_bidirectional_rnn(use_sequence_length=False)
        for i in range(8):
            assert_all_close(out[i][0][0:3], out[8 - 1 - i][0][3:6])
            assert_all_close(out[i][1][0:3], out[8 - 1 - i][1][3:6])
        assert_all_close(s_fw, s_bw)


@pytest.mark.parametrize(
    "use_shape,use_state_tuple,use_time_major,use_sequence_length", list(itertools.product([True, False], repeat=4))
)
def test_bidirectional_dynamic_rnn(use_shape, use_state_tuple, use_time_major, use_sequence_length):
    """``testBidirectionalDynamicRNN`` (its loop over the 16 options, one case each here)."""
    num_units, input_size, batch_size, max_length = 3, 5, 2, 8
    cell_fw, cell_bw = _same_initializer_pair(
        lambda: built(rnnkit.LSTMCell(num_units, state_is_tuple=use_state_tuple), input_size)
    )
    input_value = np.random.randn(batch_size, input_size)
    inputs_c = torch.stack(max_length * [f32(input_value)])
    if not use_time_major:
        inputs_c = inputs_c.permute(1, 0, 2)
    sequence_length = torch.tensor([2, 3], dtype=torch.int64) if use_sequence_length else None
    outputs, states = rnnkit.bidirectional_dynamic_rnn(
        cell_fw, cell_bw, inputs_c, sequence_length, dtype=torch.float32, time_major=use_time_major
    )
    outputs = torch.cat(outputs, 2)
    state_fw, state_bw = states
    outputs_shape = [batch_size, max_length, 2 * num_units]
    if use_time_major:
        outputs_shape[0], outputs_shape[1] = outputs_shape[1], outputs_shape[0]
    assert list(outputs.shape) == outputs_shape
    if use_state_tuple:
        s_fw = (_np(state_fw[0]), _np(state_fw[1]))
        s_bw = (_np(state_bw[0]), _np(state_bw[1]))
    else:
        s_fw, s_bw = _np(state_fw), _np(state_bw)
    out = _np(outputs)
    if not use_time_major:
        out = np.swapaxes(out, 0, 1)
    if use_sequence_length:
        # First sequence in batch is length=2
        for d in range(3):
            assert out[0][0][d] == out[1][0][3 + d]
            assert out[1][0][d] == out[0][0][3 + d]
        # Second sequence in batch is length=3
        for d in range(3):
            assert out[0][1][d] == out[2][1][3 + d]
            assert out[1][1][d] == out[1][1][3 + d]
            assert out[2][1][d] == out[0][1][3 + d]
        assert_all_close(s_fw, s_bw)
    else:
        for t in range(max_length):
            assert_all_equal(out[t, :, 0:3], out[max_length - t - 1, :, 3:6])
        assert_all_close(s_fw, s_bw)


# --- GRUTest ------------------------------------------------------------------------------------------
def test_gru_dynamic():  # GRUTest.testDynamic (smoke test)
    time_steps, num_units, input_size, batch_size = 8, 3, 5, 2
    input_values = np.random.randn(time_steps, batch_size, input_size)
    sequence_length = np.random.randint(0, time_steps, size=batch_size)
    cell = rnnkit.GRUCell(num_units=num_units)
    outputs, state = rnnkit.dynamic_rnn(
        cell, inputs=f32(input_values), sequence_length=sequence_length, time_major=True, dtype=torch.float32
    )
    assert tuple(outputs.shape) == (time_steps, batch_size, num_units)
    assert tuple(state.shape) == (batch_size, num_units)


# --- rnn_test.py: RNNTest -----------------------------------------------------------------------------
def test_invalid_sequence_length_shape():  # rnn_test.py RNNTest.testInvalidSequenceLengthShape (eager)
    cell = Plus1RNNCell()
    inputs = [torch.as_tensor(np.ones((3, 4)))]
    with pytest.raises(ValueError, match="must be a vector"):
        rnnkit.dynamic_rnn(cell, torch.stack(inputs), dtype=torch.float32, sequence_length=[[4]])


def test_invalid_dtype():  # rnn_test.py RNNTest.testInvalidDtype (eager)
    inputs = torch.as_tensor(np.zeros((3, 4, 5), dtype=np.int32))
    cells = [rnnkit.BasicRNNCell, rnnkit.GRUCell, rnnkit.BasicLSTMCell, rnnkit.LSTMCell]
    for cell_cls in cells:
        with pytest.raises(ValueError, match="RNN cell only supports floating"):
            cell = cell_cls(2, dtype=torch.int32)
            rnnkit.dynamic_rnn(cell, inputs, dtype=torch.int32)


def test_batch_size_from_input():  # rnn_test.py RNNTest.testBatchSizeFromInput (eager: static batch size)
    cell = Plus1RNNCell()
    inputs = torch.as_tensor(np.zeros((3, 4, 5), dtype=np.float32))
    initial_state = torch.as_tensor(np.zeros((3, 5), dtype=np.float32))
    # - Without initial_state
    outputs, state = rnnkit.dynamic_rnn(cell, inputs, dtype=torch.float32)
    assert outputs.shape[0] == 3
    assert state.shape[0] == 3
    # - With initial_state
    outputs, state = rnnkit.dynamic_rnn(cell, inputs, initial_state=initial_state)
    assert outputs.shape[0] == 3
    assert state.shape[0] == 3


def _assert_cell_builds(cell_class, dtype, batch_size, in_size, out_size):
    cell = cell_class(out_size, dtype=dtype)
    cell.build(in_size)  # TF: build(TensorShape((batch_size, in_size)))
    # TF: get_initial_state(inputs=None, batch_size, dtype), which is zero_state(batch_size, dtype)
    state_output = cell.zero_state(batch_size, dtype)
    cell_output, _ = cell(torch.zeros((batch_size, in_size), dtype=dtype), state_output)
    assert list(cell_output.shape) == [batch_size, out_size]


def test_cells_build():  # rnn_test.py RNNTest.testCellsBuild
    f32_, f64_ = torch.float32, torch.float64
    for cell_class in (rnnkit.BasicRNNCell, rnnkit.BasicLSTMCell, rnnkit.GRUCell, rnnkit.LSTMCell):
        _assert_cell_builds(cell_class, f32_, 5, 7, 3)
        _assert_cell_builds(cell_class, f64_, 5, 7, 3)


def test_basic_lstm_cell_interchange_with_lstm_cell(tmp_path):  # testBasicLSTMCellInterchangeWithLSTMCell
    """TF saves a ``BasicLSTMCell``'s variables with ``Saver`` and restores them into
    ``LSTMCell(1, name="basic_lstm_cell")``; here the checkpoint is ``torch.save`` of the state dict."""
    basic_cell = rnnkit.BasicLSTMCell(1)
    basic_cell(torch.ones([1, 1]), state=basic_cell.zero_state(1, torch.float32))
    with torch.no_grad():
        basic_cell.bias.copy_(torch.tensor([10.0] * 4))
    save_path = tmp_path / "ckpt"
    torch.save(basic_cell.state_dict(), save_path)

    lstm_cell = rnnkit.LSTMCell(1)
    lstm_cell(torch.ones([1, 1]), state=lstm_cell.zero_state(1, torch.float32))
    lstm_cell.load_state_dict(torch.load(save_path))
    assert_all_equal([10.0] * 4, lstm_cell.bias)


# --- rnn_cell_test.py: RNNCellTest / DropoutWrapperTest (the tests core_rnn_cell_test.py does not have) ----
def test_wrapper_checkpointing(tmp_path):  # RNNCellTest.testWrapperCheckpointing (checkpoint: state dict)
    for wrapper_type in [rnnkit.DropoutWrapper, rnnkit.ResidualWrapper, lambda cell: rnnkit.MultiRNNCell([cell])]:
        cell = rnnkit.BasicRNNCell(1)
        wrapper = wrapper_type(cell)
        wrapper(torch.ones([1, 1]), state=wrapper.zero_state(batch_size=1, dtype=torch.float32))
        prefix = tmp_path / "ckpt"
        with torch.no_grad():
            cell.bias.copy_(torch.tensor([40.0]))
        torch.save({"wrapper": wrapper.state_dict()}, prefix)
        with torch.no_grad():
            cell.bias.copy_(torch.tensor([0.0]))
        # .assert_consumed(): every saved value restored into an existing variable (strict loading)
        wrapper.load_state_dict(torch.load(prefix)["wrapper"], strict=True)
        assert_all_equal([40.0], cell.bias)


def test_dropout_wrapper_properties():  # DropoutWrapperTest.testDropoutWrapperProperties
    cell = rnnkit.BasicRNNCell(10)
    wrapper = rnnkit.DropoutWrapper(cell)
    # Github issue 15810
    assert wrapper.wrapped_cell == cell
    assert wrapper.state_size == 10
    assert wrapper.output_size == 10


def test_dropout_wrapper_zero_state():  # DropoutWrapperTest.testDropoutWrapperZeroState
    class _Cell(rnnkit.BasicRNNCell):
        def zero_state(self, batch_size=None, dtype=None, device=None):
            return "wrapped_cell_zero_state"

    wrapper = rnnkit.DropoutWrapper(_Cell(10))
    assert wrapper.zero_state(10, torch.float32) == "wrapped_cell_zero_state"
