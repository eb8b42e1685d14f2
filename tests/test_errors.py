"""Bad input gets a clear ValueError/TypeError naming the component, what was expected and what came."""

from __future__ import annotations

import pytest
import torch

import rnnkit as rk


def test_cell_inputs_wrong_rank():
    cell = rk.BasicLSTMCell(4)
    with pytest.raises(ValueError, match=r"BasicLSTMCell: expected inputs of rank 2 .*got shape \(2, 3, 5\)"):
        cell(torch.randn(2, 3, 5), cell.zero_state(2))


def test_cell_input_depth_differs_from_built():
    cell = rk.GRUCell(4, input_size=3)
    with pytest.raises(ValueError, match=r"GRUCell: built for input depth 3, got inputs of shape \(2, 5\)"):
        cell(torch.randn(2, 5), cell.zero_state(2))
    with pytest.raises(ValueError, match=r"dynamic_rnn: GRUCell is built for input depth 3, got inputs of shape"):
        rk.dynamic_rnn(cell, torch.randn(2, 4, 5))


def test_non_floating_inputs():
    with pytest.raises(TypeError, match=r"BasicRNNCell inputs: expected a floating-point dtype, got torch.int64"):
        rk.BasicRNNCell(3)(torch.ones(2, 3, dtype=torch.long), torch.zeros(2, 3))
    with pytest.raises(TypeError, match=r"dynamic_rnn inputs: expected a floating-point dtype, got torch.int32"):
        rk.dynamic_rnn(rk.BasicRNNCell(3), torch.ones(2, 4, 3, dtype=torch.int32))
    with pytest.raises(TypeError, match=r"zero_state: expected a floating-point dtype"):
        rk.BasicRNNCell(3).zero_state(2, torch.int64)


@pytest.mark.parametrize(
    "state, message",
    [
        (torch.zeros(2, 4), r"state structure does not match state_size; expected LSTMStateTuple\(4, 4\), got tensor"),
        ((torch.zeros(2, 4),), r"expected LSTMStateTuple\(4, 4\), got \(tensor\(2, 4\)\)"),
        ((torch.zeros(2, 4), torch.zeros(2, 5)), r"leaves \(batch=2, size\), got \(tensor\(2, 4\), tensor\(2, 5\)\)"),
        ((torch.zeros(3, 4), torch.zeros(3, 4)), r"leaves \(batch=2, size\)"),
        ((torch.zeros(1, 4), torch.zeros(1, 4)), r"leaves \(batch=2, size\)"),  # no silent broadcasting
    ],
)
def test_state_structure_and_shape(state, message):
    with pytest.raises(ValueError, match="BasicLSTMCell: .*" + message):
        rk.BasicLSTMCell(4)(torch.randn(2, 3), state)


def test_state_integer_dtype():
    with pytest.raises(TypeError, match=r"BasicRNNCell state: expected a floating-point dtype"):
        rk.BasicRNNCell(4)(torch.randn(2, 3), torch.zeros(2, 4, dtype=torch.long))


def test_multi_cell_initial_state_structure():
    cell = rk.MultiRNNCell([rk.BasicLSTMCell(3), rk.GRUCell(2)])
    bad = (rk.LSTMStateTuple(torch.zeros(2, 3), torch.zeros(2, 3)),)
    with pytest.raises(ValueError, match=r"dynamic_rnn initial_state: state structure does not match"):
        rk.dynamic_rnn(cell, torch.randn(2, 4, 3), initial_state=bad)


@pytest.mark.parametrize(
    "lengths, error, message",
    [
        ([4, 4], ValueError, r"sequence_length must have shape \(batch,\) = \(3,\), got \(2,\)"),
        ([[4, 4, 4]], ValueError, r"must have shape \(batch,\) = \(3,\), got \(1, 3\)"),
        ([4, 5, 1], ValueError, r"values must be in \[0, 4\] \(the number of time steps\), got min 1, max 5"),
        ([4, -1, 1], ValueError, r"values must be in \[0, 4\].*got min -1"),
        ([4.0, 2.0, 1.0], TypeError, r"sequence_length must hold integers, got dtype torch.float32"),
    ],
)
def test_sequence_length(lengths, error, message):
    with pytest.raises(error, match="dynamic_rnn: .*" + message):
        rk.dynamic_rnn(rk.BasicRNNCell(2), torch.randn(3, 4, 2), sequence_length=lengths)


def test_runner_inputs_rank_and_type():
    with pytest.raises(ValueError, match=r"dynamic_rnn: expected inputs of rank 3 \(batch, time, depth\), got shape"):
        rk.dynamic_rnn(rk.BasicRNNCell(2), torch.randn(3, 2))
    with pytest.raises(ValueError, match=r"rank 3 \(time, batch, depth\)"):
        rk.dynamic_rnn(rk.BasicRNNCell(2), torch.randn(3, 2), time_major=True)
    with pytest.raises(TypeError, match=r"dynamic_rnn: expected an rnnkit RNNCell, got LSTM"):
        rk.dynamic_rnn(torch.nn.LSTM(2, 2), torch.randn(3, 4, 2))
    with pytest.raises(TypeError, match=r"static_rnn: expected a non-empty list of \(batch, depth\) tensors"):
        rk.static_rnn(rk.BasicRNNCell(2), torch.randn(3, 4, 2))


def test_dtype_argument_must_match_inputs():
    with pytest.raises(TypeError, match=r"dynamic_rnn: dtype=torch.float64 but the inputs are torch.float32"):
        rk.dynamic_rnn(rk.BasicRNNCell(2), torch.randn(3, 4, 2), dtype=rk.float64)


def test_cells_whose_sizes_cannot_stack():
    a, b = rk.BasicLSTMCell(4, input_size=3), rk.GRUCell(2, input_size=5)
    with pytest.raises(ValueError, match=r"MultiRNNCell: cell 1 \(GRUCell\) is built for input depth 5, but the layer"):
        rk.MultiRNNCell([a, b])
    with pytest.raises(TypeError, match=r"MultiRNNCell: cell 0 must be an rnnkit RNNCell, got Linear"):
        rk.MultiRNNCell([torch.nn.Linear(2, 2)])
    with pytest.raises(ValueError, match=r"MultiRNNCell: expected at least one cell"):
        rk.MultiRNNCell([])
    with pytest.raises(ValueError, match=r"state_is_tuple=False needs cells whose state is one tensor; cell 0"):
        rk.MultiRNNCell([rk.BasicLSTMCell(2)], state_is_tuple=False)


def test_residual_wrapper_depth_mismatch():
    cell = rk.ResidualWrapper(rk.GRUCell(4))
    with pytest.raises(ValueError, match=r"ResidualWrapper: inputs of depth 3 cannot be added to .* depth 4"):
        cell(torch.randn(2, 3), cell.zero_state(2))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: rk.BasicRNNCell(0), r"BasicRNNCell: num_units must be greater than zero.*, got 0"),
        (lambda: rk.BasicLSTMCell(2.5), r"BasicLSTMCell: num_units should be of type int.*, got: float \(2.5\)"),
        (lambda: rk.LSTMCell(4, num_proj=-1), r"LSTMCell: num_proj must be greater than zero.*, got -1"),
        (lambda: rk.LSTMCell(4, cell_clip=-1), r"LSTMCell: cell_clip must be a non-negative number or None, got -1"),
        (lambda: rk.LSTMCell(4, proj_clip=1.0), r"LSTMCell: proj_clip=1.0 needs num_proj"),
        (lambda: rk.GRUCell(4, activation="swish"), r"activation: expected one of .* or a callable, got 'swish'"),
        (lambda: rk.DropoutWrapper(rk.GRUCell(2), 1.5), r"DropoutWrapper: input_keep_prob must be a float in \(0, 1\]"),
        (lambda: rk.DropoutWrapper(rk.GRUCell(2), output_keep_prob=0.0), r"output_keep_prob must be a float in"),
        (lambda: rk.LayerNormBasicLSTMCell(3, dropout_keep_prob=0), r"dropout_keep_prob must be in \(0, 1\]"),
        (lambda: rk.BasicRNNCell(3).zero_state(-1), r"zero_state: batch_size must be a non-negative int, got -1"),
    ],
)
def test_bad_constructor_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_wrapping_a_non_cell():
    with pytest.raises(TypeError, match=r"DropoutWrapper: expected an rnnkit RNNCell to wrap, got Linear"):
        rk.DropoutWrapper(torch.nn.Linear(2, 2))


def test_count_params_before_build_says_so():
    with pytest.raises(ValueError, match=r"BasicLSTMCell: not built yet, so it has no parameters to count"):
        rk.BasicLSTMCell(4).count_params()


def test_loading_into_an_unbuilt_cell_says_how_to_build():
    src = rk.BasicLSTMCell(4, input_size=3)
    with pytest.raises(ValueError, match=r"BasicLSTMCell: cannot load parameters into a cell that is not built yet"):
        rk.BasicLSTMCell(4).load_state_dict(src.state_dict())
    multi = rk.MultiRNNCell([rk.GRUCell(2), rk.GRUCell(2)])
    with pytest.raises(ValueError, match=r"GRUCell: cannot load parameters into a cell that is not built"):
        multi.load_state_dict(rk.MultiRNNCell([rk.GRUCell(2, input_size=3), rk.GRUCell(2, input_size=2)]).state_dict())


def test_a_failed_call_changes_nothing():
    """A rejected input leaves the cell unbuilt, so a later correct call still works."""
    cell = rk.BasicLSTMCell(4)
    with pytest.raises(ValueError):
        cell(torch.randn(2, 3), (torch.zeros(2, 4),))
    assert not cell.built
    out, _ = cell(torch.randn(2, 3), cell.zero_state(2))
    assert tuple(out.shape) == (2, 4)


# -- dtype and device mismatches: one up-front check, named, in every runner -------------------------------------
def _runner_calls(runner: str, cell, x, state=None, lengths=None):
    """Call ``runner`` on batch-major ``x`` (B, T, D) with ``state`` as the (forward) initial state."""
    if runner == "dynamic_rnn":
        return rk.dynamic_rnn(cell, x, lengths, state)
    if runner == "static_rnn":
        return rk.static_rnn(cell, list(x.unbind(1)), state, sequence_length=lengths)
    if runner == "bidirectional_dynamic_rnn":
        return rk.bidirectional_dynamic_rnn(cell, rk.BasicRNNCell(2), x, lengths, state)
    if runner == "static_bidirectional_rnn":
        return rk.static_bidirectional_rnn(cell, rk.BasicRNNCell(2), list(x.unbind(1)), state, sequence_length=lengths)
    assert runner == "stack_bidirectional_dynamic_rnn"
    states = None if state is None else [state]
    return rk.stack_bidirectional_dynamic_rnn([cell], [rk.BasicRNNCell(2)], x, states, sequence_length=lengths)


RUNNERS = [
    "dynamic_rnn",
    "static_rnn",
    "bidirectional_dynamic_rnn",
    "static_bidirectional_rnn",
    "stack_bidirectional_dynamic_rnn",
]


def _lstm_cell():
    return rk.BasicLSTMCell(4, input_size=3)


def _converted_kernel():
    cell = _lstm_cell()
    cell.kernel = torch.nn.Parameter(cell.kernel.detach().double())
    return cell


X3 = torch.randn(2, 5, 3)
STATE = rk.LSTMStateTuple(torch.zeros(2, 4), torch.zeros(2, 4))
MISMATCHES = [
    # (what, make the call's arguments, error class, message after "<runner>...: ")
    ("inputs float64", lambda: (_lstm_cell(), X3.double(), None, None), rk.errors.DtypeError,
     r"inputs.* has dtype torch.float64, but the parameters are torch.float32"),
    ("initial state float64", lambda: (_lstm_cell(), X3, STATE._replace(h=STATE.h.double()), None),
     rk.errors.DtypeError, r"initial_state.*\.h has dtype torch.float64, but the parameters are torch.float32"),
    ("a converted parameter", lambda: (_converted_kernel(), X3, None, None), rk.errors.DtypeError,
     r"the parameters disagree: kernel is torch.float64 on cpu, while bias is torch.float32"),
    ("inputs on meta", lambda: (_lstm_cell(), X3.to("meta"), None, None), rk.errors.DeviceError,
     r"inputs.* is on device meta, but the parameters are on cpu"),
    ("initial state on meta", lambda: (_lstm_cell(), X3, STATE._replace(c=STATE.c.to("meta")), None),
     rk.errors.DeviceError, r"initial_state.*\.c is on device meta, but the parameters are on cpu"),
    ("sequence_length on meta", lambda: (_lstm_cell(), X3, None, torch.tensor([5, 2], device="meta")),
     rk.errors.DeviceError, r"sequence_length is on device meta; expected it on the CPU"),
]  # fmt: skip


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("what, make, error, message", MISMATCHES, ids=[m[0] for m in MISMATCHES])
def test_runner_mismatches_are_named_by_the_runner(runner, what, make, error, message):
    """Each runner names itself (static_rnn is not dynamic_rnn) and the tensor; the classes are torch.nn's for
    the same mismatch (RuntimeError from its kernels, ValueError for an input against the weights)."""
    with pytest.raises(error, match=rf"^{runner}\b.*: .*{message}") as info:
        _runner_calls(runner, *make())
    assert isinstance(info.value, RuntimeError) and isinstance(info.value, ValueError)


def test_static_runner_steps_must_agree():
    steps = [torch.randn(2, 3), torch.randn(2, 3, dtype=torch.float64)]
    with pytest.raises(rk.errors.DtypeError, match=r"static_rnn: inputs\[1\] has dtype torch.float64, but inputs\[0\]"):
        rk.static_rnn(rk.BasicRNNCell(2), steps)
    steps = [torch.randn(2, 3), torch.randn(2, 3, device="meta")]
    with pytest.raises(rk.errors.DeviceError, match=r"static_bidirectional_rnn: inputs\[1\] is on device meta"):
        rk.static_bidirectional_rnn(rk.BasicRNNCell(2), rk.BasicRNNCell(2), steps)


def test_static_runners_name_themselves():
    with pytest.raises(ValueError, match=r"^static_rnn: sequence_length values must be in \[0, 3\]"):
        rk.static_rnn(rk.BasicRNNCell(2), list(torch.randn(3, 2, 2)), sequence_length=[4, 1])
    with pytest.raises(ValueError, match=r"^static_bidirectional_rnn \(forward\) initial_state_fw: state structure"):
        rk.static_bidirectional_rnn(rk.GRUCell(2), rk.GRUCell(2), list(torch.randn(3, 2, 2)), (torch.zeros(2, 2),))


def test_cell_call_checks_placement():
    cell = _converted_kernel()
    with pytest.raises(rk.errors.DtypeError, match=r"BasicLSTMCell: the parameters disagree: kernel is torch.float64"):
        cell(torch.randn(2, 3), STATE)
    with pytest.raises(rk.errors.DeviceError, match=r"BasicLSTMCell: state.h is on device meta"):
        _lstm_cell()(torch.randn(2, 3), STATE._replace(h=STATE.h.to("meta")))


def test_reading_a_parameter_before_the_build_says_how_to_build():
    cell = rk.BasicLSTMCell(8)
    expected = r"'BasicLSTMCell' object has no attribute 'kernel': the cell is not built"
    with pytest.raises(AttributeError, match=expected) as info:
        cell.kernel  # noqa: B018
    message = str(info.value)
    assert "lazily on their first call" in message and "input_size=" in message and "cell.build(depth)" in message
    assert isinstance(info.value, rk.errors.NotBuiltError) and info.value.name == "kernel" and info.value.obj is cell
    # hasattr / getattr with a default / nn.Module attribute semantics are unchanged
    assert not hasattr(cell, "kernel") and getattr(cell, "kernel", None) is None
    assert cell.training and list(cell.parameters()) == []
    cell.build(3)
    assert tuple(cell.kernel.shape) == (11, 32) and hasattr(cell, "bias")
    with pytest.raises(AttributeError) as info:
        cell.no_such_thing  # noqa: B018
    assert type(info.value) is AttributeError and "not built" not in str(info.value)  # built: torch's own error
    with pytest.raises(AttributeError, match=r"'GRUCell' object has no attribute 'gates': the cell is not built"):
        rk.GRUCell(4).gates  # noqa: B018
