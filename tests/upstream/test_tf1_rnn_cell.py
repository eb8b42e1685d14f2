"""TensorFlow 1's cell tests with hard-coded expected values, run on rnnkit's cells.

Sources (see ``NOTES.md``): ``tensorflow/contrib/rnn/python/kernel_tests/core_rnn_cell_test.py``
(``RNNCellTest``, ``DropoutWrapperTest``), ``tensorflow/contrib/rnn/python/kernel_tests/rnn_cell_test.py``
(``LayerNormBasicLSTMCellTest``) and ``tensorflow/python/kernel_tests/rnn_cell_test.py``
(``LSTMTest.testCellClipping``).

Translation from graph mode to eager rnnkit: a placeholder fed in ``sess.run`` is the fed value; a cell
called inside ``variable_scope(..., initializer=constant_initializer(v))`` is built and then has every
variable that TF creates *without an initializer of its own* set to ``v`` (``tf_scope_initializer_``);
variables with their own initializer keep it (TF1: ``bias`` of BasicRNN/BasicLSTM/LSTM cells and GRU's
``candidate/bias`` zeros, GRU's ``gates/bias`` ones, layer-norm gains/shifts ``norm_gain``/``norm_shift``),
as rnnkit's ``build`` does. TF's variable names ``a/b/kernel`` are rnnkit's parameter names ``a.b.kernel``.
``self.assertAllClose(a, b)`` is ``np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)`` (TF's
defaults), and ``assertAllClose(a, b, tol)`` sets both to ``tol``. The expected arrays are verbatim.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rnnkit
from rnnkit import LSTMStateTuple


def assert_all_close(a, b, rtol=1e-6, atol=1e-6):
    """TF's ``assertAllClose``."""
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def tf_scope_initializer_(cell: rnnkit.RNNCell, value: float) -> rnnkit.RNNCell:
    """``variable_scope(initializer=constant_initializer(value))`` for a built cell: the variables TF creates
    from the scope's initializer (every ``kernel``, the peepholes ``w_*_diag``, and contrib's
    ``LayerNormBasicLSTMCell`` ``bias``, made by a bare ``get_variable``) take ``value``."""
    with torch.no_grad():
        for module in cell.modules():
            for name, p in module.named_parameters(recurse=False):
                bare = name == "kernel" or name.endswith("_diag")
                bare = bare or (isinstance(module, rnnkit.LayerNormBasicLSTMCell) and name == "bias")
                if bare:
                    p.fill_(value)
    return cell


def t(x, dtype=torch.float32):
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def run_cell(cell, x, m, value=0.5):
    """``g, out_m = cell(x, m)`` under the scope initializer, then ``sess.run``: the first call builds the
    variables (as TF's), the initializer is applied, the second call gives the values."""
    with torch.no_grad():
        cell(x, m)  # builds the variables for x, in x's dtype ("Layer infers the input type")
        tf_scope_initializer_(cell, value)
        return cell(x, m)


# --- core_rnn_cell_test.py: RNNCellTest -------------------------------------------------------------
def test_basic_rnn_cell():  # testBasicRNNCell
    cell = rnnkit.BasicRNNCell(2)
    g, _ = run_cell(cell, t([[1.0, 1.0]]), t([[0.1, 0.1]]))
    # root/basic_rnn_cell/kernel:0, root/basic_rnn_cell/bias:0, all trainable
    assert [n for n, p in cell.named_parameters() if p.requires_grad] == ["kernel", "bias"]
    assert not [n for n, p in cell.named_parameters() if not p.requires_grad]
    assert g.shape == (1, 2)


def test_gru_cell():  # testGRUCell
    g, _ = run_cell(rnnkit.GRUCell(2), t([[1.0, 1.0]]), t([[0.1, 0.1]]))
    # Smoke test
    assert_all_close(g, [[0.175991, 0.175991]])
    # Test GRUCell with input_size != num_units.
    g, _ = run_cell(rnnkit.GRUCell(2), t([[1.0, 1.0, 1.0]]), t([[0.1, 0.1]]))
    assert_all_close(g, [[0.156736, 0.156736]])


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
def test_basic_lstm_cell(dtype):  # testBasicLSTMCell
    np_dtype = {torch.float16: np.float16, torch.float32: np.float32}[dtype]
    cell = rnnkit.MultiRNNCell([rnnkit.BasicLSTMCell(2, state_is_tuple=False) for _ in range(2)],
                               state_is_tuple=False)  # fmt: skip
    x = t([[1.0, 1.0]], dtype)
    m = 0.1 * torch.ones(1, 8, dtype=dtype)
    g, out_m = run_cell(cell, x, m)
    expected_variable_names = ["cell_0.kernel", "cell_0.bias", "cell_1.kernel", "cell_1.bias"]
    assert expected_variable_names == [n for n, p in cell.named_parameters() if p.requires_grad]
    assert all(p.dtype == dtype for p in cell.parameters())  # "Layer infers the input type."
    # The numbers in results were not calculated, this is just a smoke test.
    assert_all_close(g.float(), np.array([[0.240, 0.240]], dtype=np_dtype), 1e-2, 1e-2)
    expected_mem = np.array([[0.689, 0.689, 0.448, 0.448, 0.398, 0.398, 0.240, 0.240]], dtype=np_dtype)
    assert_all_close(out_m.float(), expected_mem, 1e-2, 1e-2)
    # Test BasicLSTMCell with input_size != num_units.
    g, out_m = run_cell(rnnkit.BasicLSTMCell(2, state_is_tuple=False), t([[1.0, 1.0, 1.0]], dtype),
                        0.1 * torch.ones(1, 4, dtype=dtype))  # fmt: skip
    assert len((g, out_m)) == 2


def test_basic_lstm_cell_dimension0_error():  # testBasicLSTMCellDimension0Error
    num_units, batch_size, input_size = 2, 3, 4
    state_size = num_units * 2
    x = torch.ones(batch_size, input_size)
    m = 0.1 * torch.ones(batch_size - 1, state_size)
    with pytest.raises(ValueError):
        run_cell(rnnkit.BasicLSTMCell(num_units, state_is_tuple=False), x, m)


def test_basic_lstm_cell_state_size_error():  # testBasicLSTMCellStateSizeError
    num_units, batch_size, input_size = 2, 3, 4
    state_size = num_units * 3  # state_size must be num_units * 2
    x = torch.ones(batch_size, input_size)
    m = 0.1 * torch.ones(batch_size, state_size)
    with pytest.raises(ValueError):
        run_cell(rnnkit.BasicLSTMCell(num_units, state_is_tuple=False), x, m)


def test_basic_lstm_cell_state_tuple_type():  # testBasicLSTMCellStateTupleType
    x = torch.zeros(1, 2)
    m0 = (torch.zeros(1, 2),) * 2
    m1 = (torch.zeros(1, 2),) * 2
    cell = rnnkit.MultiRNNCell([rnnkit.BasicLSTMCell(2) for _ in range(2)], state_is_tuple=True)
    assert isinstance(cell.state_size, tuple)
    assert isinstance(cell.state_size[0], LSTMStateTuple)
    assert isinstance(cell.state_size[1], LSTMStateTuple)
    # Pass in regular tuples
    _, (out_m0, out_m1) = run_cell(cell, x, (m0, m1))
    assert isinstance(out_m0, LSTMStateTuple)
    assert isinstance(out_m1, LSTMStateTuple)
    # Pass in LSTMStateTuples
    zero_state = cell.zero_state(1, torch.float32)
    assert isinstance(zero_state, tuple)
    assert isinstance(zero_state[0], LSTMStateTuple)
    assert isinstance(zero_state[1], LSTMStateTuple)
    _, (out_m0, out_m1) = cell(x, zero_state)
    assert isinstance(out_m0, LSTMStateTuple)
    assert isinstance(out_m1, LSTMStateTuple)


def test_basic_lstm_cell_with_state_tuple():  # testBasicLSTMCellWithStateTuple
    cell = rnnkit.MultiRNNCell([rnnkit.BasicLSTMCell(2, state_is_tuple=False) for _ in range(2)],
                               state_is_tuple=True)  # fmt: skip
    g, (out_m0, out_m1) = run_cell(cell, t([[1.0, 1.0]]), (0.1 * torch.ones(1, 4), 0.1 * torch.ones(1, 4)))
    # The numbers in results were not calculated, this is just a smoke test. Note, however, these values
    # should match the original version having state_is_tuple=False.
    assert_all_close(g, [[0.24024698, 0.24024698]])
    expected_mem0 = np.array([[0.68967271, 0.68967271, 0.44848421, 0.44848421]])
    expected_mem1 = np.array([[0.39897051, 0.39897051, 0.24024698, 0.24024698]])
    assert_all_close(out_m0, expected_mem0)
    assert_all_close(out_m1, expected_mem1)


def test_lstm_cell():  # testLSTMCell
    num_units, num_proj, batch_size = 8, 6, 3
    state_size = num_units + num_proj
    cell = rnnkit.LSTMCell(num_units=num_units, num_proj=num_proj, forget_bias=1.0, state_is_tuple=False)
    output, state = run_cell(cell, t([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]), 0.1 * torch.ones(batch_size, state_size))
    # The numbers in results were not calculated, this is mostly just a smoke test.
    assert output.shape == (batch_size, num_proj)
    assert state.shape == (batch_size, state_size)
    # Different inputs so different outputs and states
    for i in range(1, batch_size):
        assert float(np.linalg.norm(output[0, :] - output[i, :])) > 1e-6
        assert float(np.linalg.norm(state[0, :] - state[i, :])) > 1e-6


def test_lstm_cell_variables():  # testLSTMCellVariables
    cell = rnnkit.LSTMCell(num_units=8, num_proj=6, forget_bias=1.0, state_is_tuple=False)
    run_cell(cell, torch.zeros(3, 2), torch.zeros(3, 14))  # Execute to create variables
    names = [n for n, _ in cell.named_parameters()]
    # root/lstm_cell/kernel, root/lstm_cell/bias, root/lstm_cell/projection/kernel
    assert names[:3] == ["kernel", "bias", "projection.kernel"]


def test_residual_wrapper():  # testResidualWrapper
    x, m = t([[1.0, 1.0, 1.0]]), t([[0.1, 0.1, 0.1]])
    base_cell = rnnkit.GRUCell(3)
    g, m_new = run_cell(base_cell, x, m)
    with torch.no_grad():  # variables reused: the wrapper holds the same base cell
        g_res, m_new_res = rnnkit.ResidualWrapper(base_cell)(x, m)
    # Residual connections
    assert_all_close(g_res, g + torch.tensor([1.0, 1.0, 1.0]))
    # States are left untouched
    assert_all_close(m_new, m_new_res)


def test_residual_wrapper_with_slice():  # testResidualWrapperWithSlice
    x, m = t([[1.0, 1.0, 1.0, 1.0, 1.0]]), t([[0.1, 0.1, 0.1]])
    base_cell = rnnkit.GRUCell(3)
    g, m_new = run_cell(base_cell, x, m)

    def residual_with_slice_fn(inp, out):
        inp_sliced = inp[:, :3]  # array_ops.slice(inp, [0, 0], [-1, 3])
        return inp_sliced + out

    with torch.no_grad():
        g_res, m_new_res = rnnkit.ResidualWrapper(base_cell, residual_with_slice_fn)(x, m)
    # Residual connections
    assert_all_close(g_res, g + torch.tensor([1.0, 1.0, 1.0]))
    # States are left untouched
    assert_all_close(m_new, m_new_res)


def test_multi_rnn_cell():  # testMultiRNNCell
    cell = rnnkit.MultiRNNCell([rnnkit.GRUCell(2) for _ in range(2)], state_is_tuple=False)
    _, ml = run_cell(cell, t([[1.0, 1.0]]), t([[0.1, 0.1, 0.1, 0.1]]))
    # The numbers in results were not calculated, this is just a smoke test.
    assert_all_close(ml, [[0.175991, 0.175991, 0.13248, 0.13248]])


# --- core_rnn_cell_test.py: DropoutWrapperTest ------------------------------------------------------
def dropout_wrapper_run(batch_size=None, time_steps=None, **kwargs):
    """``_testDropoutWrapper``: ``dynamic_rnn(DropoutWrapper(LSTMCell(3)), time_major=True)`` under the 0.5
    scope initializer. TF's ``dtype=``/``input_size=``/``parallel_iterations=`` arguments have no rnnkit
    counterpart (rnnkit takes the dtype and depth from the inputs and steps sequentially)."""
    kwargs.pop("input_size", None)
    if batch_size is None and time_steps is None:
        # 2 time steps, batch size 1, depth 3
        batch_size, time_steps = 1, 2
        x = t([[[2.0, 2.0, 2.0]], [[1.0, 1.0, 1.0]]])
        m = LSTMStateTuple(*[t([[0.1, 0.1, 0.1]])] * 2)
    else:
        x = torch.from_numpy(np.random.randn(time_steps, batch_size, 3).astype(np.float32))
        m = LSTMStateTuple(*[t([[0.1, 0.1, 0.1]] * batch_size)] * 2)
    lstm = rnnkit.LSTMCell(3)
    lstm.build(3)
    tf_scope_initializer_(lstm, 0.5)
    cell = rnnkit.DropoutWrapper(lstm, **kwargs)
    with torch.no_grad():
        outputs, final_state = rnnkit.dynamic_rnn(cell=cell, time_major=True, inputs=x, initial_state=m)
    assert outputs.shape == (time_steps, batch_size, 3)
    assert final_state.c.shape == (batch_size, 3)
    assert final_state.h.shape == (batch_size, 3)
    return outputs.numpy(), LSTMStateTuple(final_state.c.numpy(), final_state.h.numpy())


TRUE_FULL_OUTPUT = np.array([[[0.751109, 0.751109, 0.751109]], [[0.895509, 0.895509, 0.895509]]], dtype=np.float32)
TRUE_FULL_FINAL_C = np.array([[1.949385, 1.949385, 1.949385]], dtype=np.float32)


def test_dropout_wrapper_keep_all_constant_input():  # testDropoutWrapperKeepAllConstantInput
    keep = 1.0  # array_ops.ones([])
    res = dropout_wrapper_run(input_keep_prob=keep, output_keep_prob=keep, state_keep_prob=keep)
    assert_all_close(TRUE_FULL_OUTPUT, res[0])
    assert_all_close(TRUE_FULL_OUTPUT[1], res[1].h)
    assert_all_close(TRUE_FULL_FINAL_C, res[1].c)


def test_dropout_wrapper_keep_all():  # testDropoutWrapperKeepAll
    keep = 1.0  # get_variable("all", initializer=1.0)
    res = dropout_wrapper_run(input_keep_prob=keep, output_keep_prob=keep, state_keep_prob=keep)
    assert_all_close(TRUE_FULL_OUTPUT, res[0])
    assert_all_close(TRUE_FULL_OUTPUT[1], res[1].h)
    assert_all_close(TRUE_FULL_FINAL_C, res[1].c)


def test_dropout_wrapper_with_seed():  # testDropoutWrapperWithSeed (TF: set_random_seed(2) and seed=10)
    keep_some = 0.5
    torch.manual_seed(2)
    res_standard_1 = dropout_wrapper_run(input_keep_prob=keep_some, output_keep_prob=keep_some,
                                         state_keep_prob=keep_some)  # fmt: skip
    torch.manual_seed(2)
    res_standard_2 = dropout_wrapper_run(input_keep_prob=keep_some, output_keep_prob=keep_some,
                                         state_keep_prob=keep_some)  # fmt: skip
    assert_all_close(res_standard_1[0], res_standard_2[0])
    assert_all_close(res_standard_1[1].c, res_standard_2[1].c)
    assert_all_close(res_standard_1[1].h, res_standard_2[1].h)


def test_dropout_wrapper_keep_no_output():  # testDropoutWrapperKeepNoOutput
    keep_all, keep_none = 1.0, 1e-10
    res = dropout_wrapper_run(input_keep_prob=keep_all, output_keep_prob=keep_none, state_keep_prob=keep_all)
    assert_all_close(np.zeros(res[0].shape), res[0])
    assert_all_close(TRUE_FULL_OUTPUT[1], res[1].h)
    assert_all_close(TRUE_FULL_FINAL_C, res[1].c)


def test_dropout_wrapper_keep_no_state_except_lstm_cell_memory():  # testDropoutWrapperKeepNoStateExceptLSTMCellMemory
    keep_all, keep_none = 1.0, 1e-10
    # Even though we dropout state, by default DropoutWrapper never drops out the memory ("c") term of an
    # LSTMStateTuple.
    res = dropout_wrapper_run(input_keep_prob=keep_all, output_keep_prob=keep_all, state_keep_prob=keep_none)
    true_c_state = np.array([[1.713925, 1.713925, 1.713925]], dtype=np.float32)
    assert_all_close(TRUE_FULL_OUTPUT[0], res[0][0])
    # Second output is modified by zero input state
    assert np.linalg.norm(TRUE_FULL_OUTPUT[1] - res[0][1]) > 1e-4
    # h state has been set to zero
    assert_all_close(np.zeros(res[1].h.shape), res[1].h)
    # c state of an LSTMStateTuple is NEVER modified.
    assert_all_close(true_c_state, res[1].c)


def test_dropout_wrapper_keep_no_input():  # testDropoutWrapperKeepNoInput
    keep_all, keep_none = 1.0, 1e-10
    # All outputs are different because inputs are zeroed out
    res = dropout_wrapper_run(input_keep_prob=keep_none, output_keep_prob=keep_all, state_keep_prob=keep_all)
    assert np.linalg.norm(res[0] - TRUE_FULL_OUTPUT) > 1e-4
    assert np.linalg.norm(res[1].h - TRUE_FULL_OUTPUT[1]) > 1e-4
    assert np.linalg.norm(res[1].c - TRUE_FULL_FINAL_C) > 1e-4


def test_dropout_wrapper_recurrent_output():  # testDropoutWrapperRecurrentOutput
    keep_some, keep_all = 0.8, 1.0
    res = dropout_wrapper_run(input_keep_prob=keep_all, output_keep_prob=keep_some, state_keep_prob=keep_all,
                              variational_recurrent=True, input_size=3, batch_size=5, time_steps=7)  # fmt: skip
    # Ensure the same dropout pattern for all time steps
    output_mask = np.abs(res[0]) > 1e-6
    for m in output_mask[1:]:
        assert_all_close(output_mask[0], m)


# --- contrib rnn_cell_test.py: LayerNormBasicLSTMCellTest ("all the values ... have been calculated") ----
def _two_layer_state():
    c0, h0 = 0.1 * t([[0, 1]]), 0.1 * t([[2, 3]])
    c1, h1 = 0.1 * t([[4, 5]]), 0.1 * t([[6, 7]])
    return (LSTMStateTuple(c0, h0), LSTMStateTuple(c1, h1))


def test_layer_norm_basic_lstm_cell():  # LayerNormBasicLSTMCellTest.testBasicLSTMCell
    cell = rnnkit.MultiRNNCell([rnnkit.LayerNormBasicLSTMCell(2) for _ in range(2)])
    g, out_m = run_cell(cell, t([[1.0, 1.0]]), _two_layer_state())
    expected_h = np.array([[-0.38079708, 0.38079708]])
    expected_state0_c = np.array([[-1.0, 1.0]])
    expected_state0_h = np.array([[-0.38079708, 0.38079708]])
    expected_state1_c = np.array([[-1.0, 1.0]])
    expected_state1_h = np.array([[-0.38079708, 0.38079708]])
    assert_all_close(g, expected_h, 1e-5, 1e-5)
    assert_all_close(expected_state0_c, out_m[0].c, 1e-5, 1e-5)
    assert_all_close(expected_state0_h, out_m[0].h, 1e-5, 1e-5)
    assert_all_close(expected_state1_c, out_m[1].c, 1e-5, 1e-5)
    assert_all_close(expected_state1_h, out_m[1].h, 1e-5, 1e-5)
    # Test BasicLSTMCell with input_size != num_units.
    state = LSTMStateTuple(0.1 * t([[0, 1]]), 0.1 * t([[2, 3]]))
    g, out_m = run_cell(rnnkit.LayerNormBasicLSTMCell(2), t([[1.0, 1.0, 1.0]]), state)
    expected_h = np.array([[-0.38079708, 0.38079708]])
    expected_c = np.array([[-1.0, 1.0]])
    assert_all_close(g, expected_h, 1e-5, 1e-5)
    assert_all_close(out_m.c, expected_c, 1e-5, 1e-5)
    assert_all_close(out_m.h, expected_h, 1e-5, 1e-5)


def test_layer_norm_basic_lstm_cell_without_norm():  # testBasicLSTMCellWithoutNorm
    cell = rnnkit.MultiRNNCell([rnnkit.LayerNormBasicLSTMCell(2, layer_norm=False) for _ in range(2)])
    g, out_m = run_cell(cell, t([[1.0, 1.0]]), _two_layer_state())
    expected_h = np.array([[0.70230919, 0.72581059]])
    expected_state0_c = np.array([[0.8020075, 0.89599884]])
    expected_state0_h = np.array([[0.56668288, 0.60858738]])
    expected_state1_c = np.array([[1.17500675, 1.26892781]])
    expected_state1_h = np.array([[0.70230919, 0.72581059]])
    assert_all_close(g, expected_h, 1e-5, 1e-5)
    assert_all_close(expected_state0_c, out_m[0].c, 1e-5, 1e-5)
    assert_all_close(expected_state0_h, out_m[0].h, 1e-5, 1e-5)
    assert_all_close(expected_state1_c, out_m[1].c, 1e-5, 1e-5)
    assert_all_close(expected_state1_h, out_m[1].h, 1e-5, 1e-5)
    # Test BasicLSTMCell with input_size != num_units.
    state = LSTMStateTuple(0.1 * t([[0, 1]]), 0.1 * t([[2, 3]]))
    g, out_m = run_cell(rnnkit.LayerNormBasicLSTMCell(2, layer_norm=False), t([[1.0, 1.0, 1.0]]), state)
    expected_h = np.array([[0.64121795, 0.68166804]])
    expected_c = np.array([[0.88477188, 0.98103917]])
    assert_all_close(g, expected_h, 1e-5, 1e-5)
    assert_all_close(out_m.c, expected_c, 1e-5, 1e-5)
    assert_all_close(out_m.h, expected_h, 1e-5, 1e-5)


def test_layer_norm_basic_lstm_cell_with_state_tuple():  # testBasicLSTMCellWithStateTuple
    cell = rnnkit.MultiRNNCell([rnnkit.LayerNormBasicLSTMCell(2) for _ in range(2)])
    h, (s0, s1) = run_cell(cell, t([[1.0, 1.0]]), _two_layer_state())
    expected_h = np.array([[-0.38079708, 0.38079708]])
    expected_h0 = np.array([[-0.38079708, 0.38079708]])
    expected_c0 = np.array([[-1.0, 1.0]])
    expected_h1 = np.array([[-0.38079708, 0.38079708]])
    expected_c1 = np.array([[-1.0, 1.0]])
    assert_all_close(h, expected_h, 1e-5, 1e-5)
    assert_all_close(s0.c, expected_c0, 1e-5, 1e-5)
    assert_all_close(s0.h, expected_h0, 1e-5, 1e-5)
    assert_all_close(s1.c, expected_c1, 1e-5, 1e-5)
    assert_all_close(s1.h, expected_h1, 1e-5, 1e-5)


def test_layer_norm_basic_lstm_cell_with_dropout():  # testBasicLSTMCellWithDropout
    def _is_close(x, y, digits=4):
        delta = x - y
        return delta < 10 ** (-digits)

    def _is_close_in(x, items, digits=4):
        return any(_is_close(x, i, digits) for i in items)

    keep_prob = 0.5
    c_high = 2.9998924946
    c_low = 0.999983298578
    h_low = 0.761552567265
    h_high = 0.995008519604
    num_units = 5
    allowed_low = [1, 2, 3]
    cell = rnnkit.LayerNormBasicLSTMCell(num_units, layer_norm=False, dropout_keep_prob=keep_prob)
    g, s = run_cell(cell, torch.ones(1, 5), LSTMStateTuple(torch.ones(1, 5), torch.ones(1, 5)), value=1.0)
    # Since the returned tensors are of size [1,n] get the first component right now.
    actual_h = g[0].numpy()
    actual_state_c = s.c[0].numpy()
    actual_state_h = s.h[0].numpy()
    # Each item of c is c_high (not dropped out) or c_low (dropped out), with the coherent h; the count of
    # dropped activations is coherent with the dropout probability.
    dropped_count = 0
    assert (actual_h == actual_state_h).all()
    for citem, hitem in zip(actual_state_c, actual_state_h, strict=True):
        assert _is_close_in(citem, [c_low, c_high])
        if _is_close(citem, c_low):
            assert _is_close(hitem, h_low)
            dropped_count += 1
        elif _is_close(citem, c_high):
            assert _is_close(hitem, h_high)
    assert dropped_count in allowed_low


# --- python/kernel_tests/rnn_cell_test.py: LSTMTest --------------------------------------------------
