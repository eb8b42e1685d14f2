"""User-written cells (``tests/user_cells.py``): TF1's custom-cell protocol and torch-style cells, through every runner.

References, all independent of what they check:

* the TF1-protocol and the torch-style writing of each family, weights copied by the entry's mapping: same outputs,
  final states and gradients (the mapping is linear, so it maps the TF-style gradients onto the torch-style ones);
* rnnkit's own cell computing the same step (``twin``: ``LayerNormBasicLSTMCell``, ``LSTMCell(use_peepholes=True)``,
  ``GRUCell``) with the user cell's state dict loaded as is;
* the MGU and CIFG equations written again in NumPy, float64;
* ``sequence_length``: each row run alone on its own prefix; ``bidirectional_dynamic_rnn``'s backward half: each row
  reversed by hand; ``MultiRNNCell``: the layers run one after another; ``DropoutWrapper``: its output mask is
  0 or ``1/keep`` times the plain output;
* ``torch.autograd.gradcheck`` in float64.

Tolerances: 1e-5 in float32, 1e-10 in float64 (absolute and relative).
"""

from __future__ import annotations

import copy
import functools
import math
import pickle

import numpy as np
import pytest
import torch
from torch import nn

import rnnkit
import rnnkit as tf
from rnnkit.cells.variables import glorot_uniform_
from user_cells import USER_CELLS, AveragedState, CIFGLSTMCell, MGUCell

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
B, T, D, N = 3, 6, 5, 4
LENGTHS = [6, 2, 0]


def _close(got, want, dtype):
    torch.testing.assert_close(got, want, atol=TOL[dtype], rtol=TOL[dtype])


def _leaves(state):
    return list(state) if isinstance(state, (tuple, list)) and not isinstance(state, torch.Tensor) else [state]


def _flat(state):
    return [leaf for s in _leaves(state) for leaf in (_flat(s) if isinstance(s, (tuple, list)) else [s])]


def _pair(entry, dtype, lazy=True):
    """A TF-style cell (built lazily by a first run, or eagerly) and the torch-style one holding its weights."""
    x = torch.randn(B, T, D, dtype=dtype)
    tf_cell = entry.tf_style(N, None if lazy else D)
    if lazy:
        rnnkit.dynamic_rnn(tf_cell, x)
    tf_cell = tf_cell.to(dtype)
    torch_cell = entry.torch_style(N, D).to(dtype)
    torch_cell.load_state_dict(entry.tf_to_torch(tf_cell.state_dict(), D, N))
    return tf_cell, torch_cell, x


def _run(cell, x, **kwargs):
    x = x.detach().requires_grad_()
    out, state = rnnkit.dynamic_rnn(cell, x, **kwargs)
    loss = (out * torch.linspace(-1, 1, out.shape[-1], dtype=x.dtype)).sum() + sum(s.pow(2).sum() for s in _flat(state))
    params = dict(cell.named_parameters())
    grads = torch.autograd.grad(loss, [x, *params.values()])
    return out, _flat(state), grads[0], dict(zip(params, grads[1:], strict=True))


# -- each family: its two writings agree, and equal rnnkit's twin --------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("entry", USER_CELLS, ids=repr)
def test_tf_protocol_and_torch_style_writings_agree(entry, dtype):
    tf_cell, torch_cell, x = _pair(entry, dtype)
    out_a, state_a, dx_a, grads_a = _run(tf_cell, x, sequence_length=LENGTHS)
    out_b, state_b, dx_b, grads_b = _run(torch_cell, x, sequence_length=LENGTHS)
    _close(out_a, out_b, dtype)
    for a, b in zip(state_a, state_b, strict=True):
        _close(a, b, dtype)
    _close(dx_a, dx_b, dtype)
    mapped = entry.tf_to_torch(grads_a, D, N)
    assert set(mapped) == set(grads_b)
    for name, grad in grads_b.items():
        _close(mapped[name], grad, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("entry", [e for e in USER_CELLS if e.twin], ids=repr)
def test_hand_written_cells_equal_rnnkits_own(entry, dtype):
    user = entry.tf_style(N, D).to(dtype)
    twin = entry.twin(N)
    twin.build(D)
    twin.load_state_dict(user.state_dict())  # strict: the user cell's TF names are rnnkit's
    twin = twin.to(dtype)
    x = torch.randn(B, T, D, dtype=dtype)
    got, want = _run(user, x, sequence_length=LENGTHS), _run(twin, x, sequence_length=LENGTHS)
    for a, b in zip(got[:3], want[:3], strict=True):
        for u, v in zip(_leaves(a), _leaves(b), strict=True):
            _close(u, v, dtype)
    for name, grad in got[3].items():
        _close(grad, want[3][name], dtype)


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def test_mgu_equals_its_equations_in_numpy():
    cell = MGUCell(N, input_size=D).double()
    x = torch.randn(B, T, D, dtype=torch.float64)
    out, state = rnnkit.dynamic_rnn(cell, x)
    w = {k: v.detach().numpy() for k, v in cell.state_dict().items()}
    h = np.zeros((B, N))
    for t in range(T):
        xt = x[:, t].numpy()
        f = _sigmoid(np.concatenate([xt, h], 1) @ w["gates.kernel"] + w["gates.bias"])
        c = np.tanh(np.concatenate([xt, f * h], 1) @ w["candidate.kernel"] + w["candidate.bias"])
        h = (1 - f) * h + f * c
        np.testing.assert_allclose(out[:, t].detach().numpy(), h, atol=1e-10, rtol=1e-10)
    np.testing.assert_allclose(state.detach().numpy(), h, atol=1e-10, rtol=1e-10)


def test_cifg_lstm_equals_its_equations_in_numpy():
    cell = CIFGLSTMCell(N, forget_bias=0.5, input_size=D).double()
    nn.init.normal_(cell.bias)  # (zeros by default: make the bias count)
    x = torch.randn(B, T, D, dtype=torch.float64)
    out, state = rnnkit.dynamic_rnn(cell, x)
    kernel, bias = cell.kernel.detach().numpy(), cell.bias.detach().numpy()
    c = h = np.zeros((B, N))
    for t in range(T):
        z = np.concatenate([x[:, t].numpy(), h], 1) @ kernel + bias
        j, f, o = z[:, :N], _sigmoid(z[:, N : 2 * N] + 0.5), z[:, 2 * N :]
        c = f * c + (1 - f) * np.tanh(j)
        h = _sigmoid(o) * np.tanh(c)
        np.testing.assert_allclose(out[:, t].detach().numpy(), h, atol=1e-10, rtol=1e-10)
    assert isinstance(state, tf.nn.rnn_cell.LSTMStateTuple)
    np.testing.assert_allclose(state.c.detach().numpy(), c, atol=1e-10, rtol=1e-10)


class Unroll(nn.Module):
    """``dynamic_rnn`` over a cell as a module, so that ``functional_call`` can swap the cell's parameters."""

    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def forward(self, x):
        out, state = rnnkit.dynamic_rnn(self.cell, x, sequence_length=[4, 2])
        return out, *_flat(state)


@pytest.mark.parametrize("entry", [USER_CELLS[0], USER_CELLS[8]], ids=repr)
@pytest.mark.parametrize("style", ["tf_style", "torch_style"])
def test_gradcheck_float64(entry, style):
    unroll = Unroll(getattr(entry, style)(3, 2).double())
    unroll(torch.zeros(2, 4, 2, dtype=torch.float64))  # (builds the TF-style cell)
    names = [name for name, _ in unroll.named_parameters()]
    leaves = [p.detach().clone().requires_grad_() for _, p in unroll.named_parameters()]
    x = torch.randn(2, 4, 2, dtype=torch.float64, requires_grad=True)

    def run(x, *weights):
        return torch.func.functional_call(unroll, dict(zip(names, weights, strict=True)), (x,))

    assert torch.autograd.gradcheck(run, (x, *leaves), eps=1e-6, atol=1e-7)


# -- every runner, with user cells -----------------------------------------------------------------------------
def _row_by_row(cell, x, lengths):
    """The reference for sequence_length: each row alone on its own prefix (zeros past it; zero state if empty)."""
    outs, states = [], []
    for b, n in enumerate(lengths):
        out = torch.zeros(T, cell.output_size, dtype=x.dtype)
        state = cell.zero_state(1, x.dtype)
        if n:
            o, state = rnnkit.dynamic_rnn(cell, x[b : b + 1, :n])
            out[:n] = o[0]
        outs.append(out)
        states.append(_flat(state))
    return torch.stack(outs), [torch.cat(leaf) for leaf in zip(*states, strict=True)]


@pytest.mark.parametrize("entry", USER_CELLS, ids=repr)
def test_sequence_length_static_rnn_and_bidirectional(entry):
    dtype = torch.float64
    fw, bw, x = _pair(entry, dtype)
    out, state = rnnkit.dynamic_rnn(fw, x, sequence_length=LENGTHS)
    want_out, want_state = _row_by_row(fw, x, LENGTHS)
    _close(out, want_out, dtype)
    for a, b in zip(_flat(state), want_state, strict=True):
        _close(a, b, dtype)

    steps, s_state = rnnkit.static_rnn(fw, list(x.unbind(1)), sequence_length=LENGTHS)
    _close(torch.stack(steps, 1), out, dtype)
    for a, b in zip(_flat(s_state), _flat(state), strict=True):
        _close(a, b, dtype)

    (o_fw, o_bw), (s_fw, s_bw) = rnnkit.bidirectional_dynamic_rnn(fw, bw, x, sequence_length=LENGTHS)
    _close(o_fw, out, dtype)
    flipped = torch.stack([torch.cat([x[b, :n].flip(0), x[b, n:]]) for b, n in enumerate(LENGTHS)])
    r_out, r_state = _row_by_row(bw, flipped, LENGTHS)
    r_out = torch.stack([torch.cat([r_out[b, :n].flip(0), r_out[b, n:]]) for b, n in enumerate(LENGTHS)])
    _close(o_bw, r_out, dtype)
    for a, b in zip(_flat(s_bw), r_state, strict=True):
        _close(a, b, dtype)


@pytest.mark.parametrize("entry", USER_CELLS, ids=repr)
def test_multi_rnn_cell_of_a_tf_style_and_a_torch_style_cell(entry):
    dtype = torch.float64
    first = entry.tf_style(N, None).double()
    second = entry.torch_style(N, N).double()
    stack = tf.nn.rnn_cell.MultiRNNCell([first, second])
    x = torch.randn(B, T, D, dtype=dtype)
    out, (s1, s2) = rnnkit.dynamic_rnn(stack, x, sequence_length=LENGTHS)
    assert first.input_depth == D and second.input_depth == N
    mid, want_s1 = rnnkit.dynamic_rnn(first, x, sequence_length=LENGTHS)
    want, want_s2 = rnnkit.dynamic_rnn(second, mid, sequence_length=LENGTHS)
    _close(out, want, dtype)
    for a, b in zip(_flat((s1, s2)), _flat((want_s1, want_s2)), strict=True):
        _close(a, b, dtype)
    assert type(s1) is type(want_s1) and type(s2) is type(want_s2)  # namedtuples stay namedtuples


@pytest.mark.parametrize("entry", USER_CELLS, ids=repr)
def test_dropout_wrapper_around_user_cells(entry):
    dtype = torch.float64
    cell, _, x = _pair(entry, dtype)
    plain, plain_state = rnnkit.dynamic_rnn(cell, x, sequence_length=LENGTHS)
    kept, _ = rnnkit.dynamic_rnn(tf.nn.rnn_cell.DropoutWrapper(cell), x, sequence_length=LENGTHS)
    _close(kept, plain, dtype)
    dropped, state = rnnkit.dynamic_rnn(
        tf.nn.rnn_cell.DropoutWrapper(cell, output_keep_prob=0.5, seed=3), x, sequence_length=LENGTHS
    )
    zero, scaled = dropped == 0, torch.isclose(dropped, 2 * plain, atol=1e-12, rtol=1e-12)
    assert bool((zero | scaled).all()) and bool(zero[0].any()) and bool((scaled & (plain != 0)).any())
    for a, b in zip(_flat(state), _flat(plain_state), strict=True):  # output dropout leaves the state alone
        _close(a, b, dtype)


# -- the protocol's details ------------------------------------------------------------------------------------
class Probe(tf.nn.rnn_cell.RNNCell):
    """Records what its build saw and how often it ran."""

    def __init__(self, num_units=2, input_size=None, mark_built=True):
        super().__init__(input_size=input_size)
        self.num_units, self.mark_built, self.builds = num_units, mark_built, []

    state_size = output_size = property(lambda self: self.num_units)

    def build(self, inputs_shape):
        self.builds.append(inputs_shape)
        self.kernel = self.add_variable("kernel", [inputs_shape[-1] + self.num_units, self.num_units])
        if self.mark_built:
            self.built = True

    def call(self, inputs, state):
        h = torch.tanh(torch.cat([inputs, state], 1) @ self.kernel)
        return h, h


def test_the_shape_object_reads_as_tf1_and_tf2_code_read_it():
    cell = Probe()
    assert not cell.built
    rnnkit.dynamic_rnn(cell, torch.randn(7, 2, 3))
    (shape,) = cell.builds
    assert shape[1].value == 3 and shape[-1] == 3 and int(shape[-1]) == 3 and shape[0].value == 7
    assert shape.as_list() == [7, 3] and shape.ndims == shape.rank == 2 and len(shape) == 2
    assert shape[-1] + 2 == 5 and type(shape[-1] + 2) is int and shape[-1] * 2 == 6 and shape[-1] > 2
    assert shape == tf.TensorShape([7, 3]) == [7, 3] and shape[1:] == [3] and shape.is_fully_defined()
    assert [d.value for d in shape] == [7, 3] and shape.num_elements() == 21 and str(shape) == "(7, 3)"
    assert repr(shape[1]) == "Dimension(3)" and torch.empty(shape[1]).shape == (3,)
    assert cell.built and cell.input_depth == 3 and type(cell.input_depth) is int

    eager = Probe(input_size=4)
    (shape,) = eager.builds
    assert shape.as_list() == [None, 4] and shape[0].value is None and shape[0] == None  # noqa: E711
    assert repr(shape[0]) == "Dimension(None)" and str(shape) == "(?, 4)" and not shape.is_fully_defined()
    with pytest.raises(TypeError, match="unknown dimension"):
        int(shape[0])
    with pytest.raises(ValueError, match="must have rank 3"):
        shape.with_rank(3)
    assert shape.with_rank_at_least(2) is shape and shape.concatenate([5]).as_list() == [None, 4, 5]


def test_build_runs_once_and_built_is_settable():
    cell = Probe(mark_built=False)  # a build that forgets `self.built = True` still counts
    rnnkit.dynamic_rnn(cell, torch.randn(2, 3, 5))
    rnnkit.dynamic_rnn(cell, torch.randn(2, 3, 5))
    assert len(cell.builds) == 1 and cell.built and cell.input_depth == 5
    cell.built = True
    with pytest.raises(ValueError, match="Probe: a built cell cannot be marked unbuilt"):
        cell.built = False
    with pytest.raises(TypeError, match="built must be a bool"):
        cell.built = "yes"
    with pytest.raises(ValueError, match="built for input depth 5, got inputs of depth 4"):
        cell.build(4)
    with pytest.raises(ValueError, match="built for input depth 5"):
        rnnkit.dynamic_rnn(cell, torch.randn(2, 3, 4))


def test_eager_builds_by_depth_or_by_shape_for_user_and_rnnkit_cells():
    for build in (6, (None, 6), tf.TensorShape([None, 6]), torch.Size([2, 6])):
        cell = Probe()
        cell.build(build)
        assert cell.input_depth == 6 and cell.builds[0][-1] == 6 and tuple(cell.kernel.shape) == (8, 2)
        gru = rnnkit.GRUCell(4)
        gru.build(build)
        assert gru.input_depth == 6 and tuple(gru.gates.kernel.shape) == (10, 8)
    with pytest.raises(TypeError, match="input_depth should be of type int"):
        Probe().build(6.0)
    with pytest.raises(ValueError, match="needs the inputs' last dimension"):
        Probe().build((3, None))


def test_a_subclass_of_an_rnnkit_cell_extends_its_build_with_super():
    class ScaledLSTM(rnnkit.LSTMCell):
        def build(self, inputs_shape):
            super().build(inputs_shape)
            self.scale = self.add_variable("scale", [self.num_units], initializer=2.0)

        def call(self, inputs, state):
            out, state = super().call(inputs, state)
            return out * self.scale, state

    cell = ScaledLSTM(3, input_size=2)
    assert list(cell.state_dict()) == ["kernel", "bias", "scale"] and cell.input_depth == 2
    twin = rnnkit.LSTMCell(3, input_size=2)
    twin.load_state_dict({k: v for k, v in cell.state_dict().items() if k != "scale"})
    x = torch.randn(2, 4, 2)
    _close(rnnkit.dynamic_rnn(cell, x)[0], 2 * rnnkit.dynamic_rnn(twin, x)[0], torch.float32)


def test_variables_get_tf_names_and_attributes_alias_them():
    cell = MGUCell(N, input_size=D)
    assert list(cell.state_dict()) == ["gates.kernel", "gates.bias", "candidate.kernel", "candidate.bias"]
    assert cell._gate_kernel is cell.gates.kernel and cell.get_parameter("gates.kernel") is cell._gate_kernel
    assert len(list(cell.parameters())) == 4 and cell.count_params() == 2 * (D + N) * N + 2 * N
    assert torch.equal(cell.gates.bias, torch.ones(N)) and torch.equal(cell.candidate.bias, torch.zeros(N))
    for clone in (copy.deepcopy(cell), pickle.loads(pickle.dumps(cell)), cell.double()):
        assert clone._gate_kernel is clone.gates.kernel and list(clone.state_dict()) == list(cell.state_dict())
    assert cell._gate_kernel.dtype == torch.float64 and cell.dtype == torch.float64
    rnnkit.dynamic_rnn(cell, torch.randn(2, 3, D, dtype=torch.float64))
    cell._gate_kernel = "something else"  # rebinding the attribute drops the alias, not the variable
    assert cell._gate_kernel == "something else" and "gates.kernel" in cell.state_dict()


STATE_DICT_KEYS = {
    "mgu": ["gates.kernel", "gates.bias", "candidate.kernel", "candidate.bias"],
    "indrnn": ["input_kernel", "recurrent_kernel", "bias"],
    "sru": ["kernel", "weight_c", "bias"],
    "cifg_lstm": ["kernel", "bias"],
    "layer_norm_lstm": [
        "kernel",
        *(f"{s}.{v}" for s in ("input", "transform", "forget", "output", "state") for v in ("gamma", "beta")),
    ],
    "peephole_lstm": ["kernel", "bias", "w_f_diag", "w_i_diag", "w_o_diag"],
    "reset_before_gru": ["gates.kernel", "gates.bias", "candidate.kernel", "candidate.bias"],
    "mlstm": ["wmx", "wmh", "wx", "wm", "bias"],
    "averaged_lstm": ["kernel", "bias", "decay"],
    "leaky_clamp_rnn": ["kernel", "bias"],
}


@pytest.mark.parametrize("entry", USER_CELLS, ids=repr)
def test_state_dict_keys_zero_state_count_params_and_round_trip(entry):
    cell, torch_cell = entry.tf_style(N, D), entry.torch_style(N, D)
    assert list(cell.state_dict()) == STATE_DICT_KEYS[entry.name]
    zero = cell.zero_state(B, torch.float64)
    assert type(zero) is type(cell.state_size) or isinstance(cell.state_size, int)
    assert all(leaf.shape == (B, N) and leaf.dtype == torch.float64 and not leaf.any() for leaf in _flat(zero))
    assert cell.count_params() == sum(p.numel() for p in cell.parameters()) == torch_cell.count_params()
    fresh_tf, fresh_torch = entry.tf_style(N, D), entry.torch_style(N, D)
    fresh_tf.load_state_dict(cell.state_dict())
    fresh_torch.load_state_dict(torch_cell.state_dict())  # (a torch-style cell loads before any call)
    x = torch.randn(B, T, D)
    _close(rnnkit.dynamic_rnn(fresh_tf, x)[0], rnnkit.dynamic_rnn(cell, x)[0], torch.float32)
    _close(rnnkit.dynamic_rnn(fresh_torch, x)[0], rnnkit.dynamic_rnn(torch_cell, x)[0], torch.float32)


def test_a_namedtuple_state_keeps_its_type_and_fields():
    entry = next(e for e in USER_CELLS if e.name == "averaged_lstm")
    cell = entry.tf_style(N, None)
    out, state = rnnkit.dynamic_rnn(cell, torch.randn(B, T, D), sequence_length=LENGTHS)
    assert type(state) is AveragedState and torch.equal(out[0, -1], state.avg[0])
    assert cell.zero_state(2, torch.float32)._fields == ("c", "h", "avg")
    out2, _ = rnnkit.dynamic_rnn(cell, torch.randn(B, T, D), initial_state=tuple(state))  # a plain tuple is taken
    with pytest.raises(ValueError, match="state structure does not match state_size"):
        rnnkit.dynamic_rnn(cell, torch.randn(B, T, D), initial_state=(state.c, state.h))


def test_initializers():
    cell = Probe()
    torch.manual_seed(1)
    default = cell.add_variable("default", [30, 20])
    torch.manual_seed(1)
    assert torch.equal(default, glorot_uniform_(torch.empty(30, 20)))
    assert default.abs().max() <= math.sqrt(6 / 50)
    assert torch.equal(cell.add_variable("const", [3], initializer=0.5), torch.full((3,), 0.5))
    assert torch.equal(cell.add_variable("int_const", [2], initializer=2), torch.full((2,), 2.0))
    assert torch.equal(cell.add_variable("ones", [2, 2], initializer="ones"), torch.ones(2, 2))
    w = cell.add_variable("orth", [6, 4], initializer="orthogonal").detach()
    _close(w.T @ w, torch.eye(4), torch.float32)
    he = cell.add_variable("he", [600, 6], initializer="he_uniform")  # fan_in = rows (600), as Keras reads a kernel
    assert math.sqrt(6 / 600) * 0.9 < he.abs().max() <= math.sqrt(6 / 600)
    torch_init = cell.add_variable("torch_init", [2, 3], initializer=functools.partial(nn.init.constant_, val=0.25))
    assert torch.equal(torch_init, torch.full((2, 3), 0.25))
    keras_like = cell.add_variable("keras", [2, 3], initializer=lambda shape, dtype=None: np.arange(6.0).reshape(shape))
    assert torch.equal(keras_like, torch.arange(6.0).reshape(2, 3))

    class KerasInitializer:
        def __call__(self, shape, dtype=None, **kwargs):
            return torch.full(shape, 7.0, dtype=dtype)

    assert torch.equal(cell.add_variable("keras_obj", [2], initializer=KerasInitializer()), torch.full((2,), 7.0))
    given = cell.add_variable("given", None, initializer=torch.arange(4.0))
    assert torch.equal(given, torch.arange(4.0))
    frozen = cell.add_variable("frozen", [2], trainable=False)
    assert not frozen.requires_grad and "frozen" in cell.state_dict() and any(p is frozen for p in cell.parameters())
    assert cell.add_variable("f64", [2], dtype=torch.float64).dtype == torch.float64
    assert cell.add_weight((2, 2), "zeros", name="keras3").shape == (2, 2)
    assert cell.add_weight(shape=(1,)).shape == (1,) and cell.add_weight(shape=(1,)) is cell.variable_1


def test_variables_take_the_dtype_of_the_inputs_and_trainable_false_gets_no_gradient():
    class Frozen(Probe):
        def build(self, inputs_shape):
            super().build(inputs_shape)
            self.scale = self.add_weight("scale", [self.num_units], initializer=1.5, trainable=False)

        def call(self, inputs, state):
            h, _ = super().call(inputs, state)
            return h * self.scale, h

    cell = Frozen()
    out, _ = rnnkit.dynamic_rnn(cell, torch.randn(2, 3, 4, dtype=torch.float64))
    assert cell.kernel.dtype == cell.scale.dtype == cell.dtype == torch.float64
    out.sum().backward()
    assert cell.scale.grad is None and cell.kernel.grad is not None and cell.count_params() == 6 * 2 + 2


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda c: c.add_variable("kernel", [1]), KeyError, "already exists"),
        (lambda c: c.add_variable("call", [1]), KeyError, "already exists"),
        (lambda c: c.add_variable("a.b", [1]), KeyError, "can't contain"),
        (lambda c: c.add_variable("a//b", [1]), KeyError, "non-empty parts"),
        (lambda c: c.add_variable("", [1]), KeyError, "non-empty parts"),
        (lambda c: c.add_variable(3, [1]), TypeError, "must be a str"),
        (lambda c: c.add_variable("w", ["3"]), TypeError, "sequence of ints"),
        (lambda c: c.add_variable("w", "abc"), TypeError, "sequence of ints"),
        (lambda c: c.add_variable("w", [2.5]), TypeError, "sequence of ints"),
        (lambda c: c.add_variable("w", [-1]), RuntimeError, "non-negative"),
        (lambda c: c.add_variable("w", [-1]), ValueError, "non-negative"),
        (lambda c: c.add_variable("w", None), ValueError, "shape is required"),
        (lambda c: c.add_variable("w", [2], initializer="nope"), ValueError, "unknown initializer 'nope'"),
        (lambda c: c.add_variable("w", [2], initializer=True), TypeError, "initializer must be"),
        (lambda c: c.add_variable("w", [2], initializer=lambda shape: torch.zeros(3)), ValueError, r"shape \(3,\)"),
        (lambda c: c.add_variable("w", [2], initializer=torch.zeros(3)), ValueError, r"shape \(3,\)"),
        (lambda c: c.add_variable("w", [2], dtype=torch.int64), TypeError, "floating-point"),
        (lambda c: c.add_variable("w", [2], regularizer=abs), ValueError, "not supported"),
        (lambda c: c.add_variable("w", [2], colocate_with=1), TypeError, "unexpected keyword argument"),
        (lambda c: c.add_variable("kernel/x", [2]), KeyError, "taken by an attribute"),
    ],
)
def test_add_variable_refuses_bad_input_naming_the_cell(call, error, match):
    cell = Probe(input_size=2)
    before = dict(cell.state_dict())
    with pytest.raises(error, match=match) as info:
        call(cell)
    assert "Probe.add_variable" in str(info.value)
    assert list(cell.state_dict()) == list(before)  # nothing half-made


def test_a_build_that_raises_leaves_nothing_behind_and_can_run_again():
    class Flaky(Probe):
        fail = True

        def build(self, inputs_shape):
            self._gate = self.add_variable("gates/kernel", [inputs_shape[-1], 2])
            if self.fail:
                raise RuntimeError("flaky build")
            super().build(inputs_shape)

    cell = Flaky()
    with pytest.raises(RuntimeError, match="flaky build"):
        rnnkit.dynamic_rnn(cell, torch.randn(2, 3, 4))
    assert not cell.built and list(cell.state_dict()) == [] and not hasattr(cell, "gates")
    cell.fail = False
    rnnkit.dynamic_rnn(cell, torch.randn(2, 3, 4))
    assert list(cell.state_dict()) == ["kernel", "gates.kernel"] and cell._gate is cell.gates.kernel


def test_a_scope_cannot_go_inside_a_submodule():
    class WithLinear(Probe):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(2, 2)

    with pytest.raises(KeyError, match="'proj' is a Linear submodule, not a scope"):
        WithLinear().add_variable("proj/kernel", [2])


def test_tf_namespaces_hold_the_bases_as_tf1_did():
    assert tf.nn.rnn_cell.RNNCell is tf.contrib.rnn.RNNCell is rnnkit.RNNCell
    assert tf.contrib.rnn.LayerRNNCell is rnnkit.LayerRNNCell and issubclass(rnnkit.LayerRNNCell, rnnkit.RNNCell)
    assert not hasattr(tf.nn.rnn_cell, "LayerRNNCell")  # TF 1.15 exports it from contrib.rnn only

    class Elman(tf.contrib.rnn.LayerRNNCell):
        def __init__(self, num_units, reuse=None, name=None, dtype=None):
            super().__init__(_reuse=reuse, name=name, dtype=dtype)
            self._num_units = num_units

        @property
        def state_size(self):
            return self._num_units

        @property
        def output_size(self):
            return self._num_units

        def build(self, inputs_shape):
            self._kernel = self.add_variable("kernel", [inputs_shape[1].value + self._num_units, self._num_units])
            self._bias = self.add_variable("bias", [self._num_units], initializer=0.0)
            self.built = True

        def call(self, inputs, state):
            h = torch.relu(torch.cat([inputs, state], 1) @ self._kernel + self._bias)
            return h, h

    cell = Elman(3, name="elman", dtype=tf.float64)
    out, state = tf.nn.dynamic_rnn(cell, torch.randn(2, 4, 5, dtype=torch.float64), dtype=tf.float64)
    assert cell.kernel.dtype == torch.float64 and list(cell.state_dict()) == ["kernel", "bias"]
    _close(out[:, -1], state, torch.float64)


def test_torch_style_cells_set_sizes_as_attributes_and_missing_sizes_are_named():
    class NoSizes(rnnkit.RNNCell):
        def call(self, inputs, state):
            return inputs, state

    with pytest.raises(NotImplementedError, match="NoSizes: a cell must define state_size"):
        NoSizes().state_size  # noqa: B018
    entry = USER_CELLS[0]
    cell = entry.torch_style(N, D)
    assert cell.state_size == cell.output_size == N and not cell.built and cell.count_params() > 0
