"""The engine's fast paths against its reference loop: values and gradients.

Every lowered configuration runs through ``rnnkit.engine.unroll`` on a forced path (the compiled
fused kernels, their pure-PyTorch twins, torch's kernels, and ``auto``) and is compared with
``engine.reference_unroll`` (the plain autograd loop over ``cell.call``) on the same inputs: outputs,
final states, and the gradients of a random projection of both with respect to the inputs, the
initial state and every parameter. float64 checks the algebra to 1e-10; float32 checks the compiled
kernels' fast exp/tanh (about 1 ulp) to 2e-5.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import rnnkit as rk
from rnnkit import engine
from rnnkit._structure import flatten, map_structure

TOL = {torch.float64: 1e-10, torch.float32: 2e-5}

CELLS = {
    "basic_lstm": lambda: rk.BasicLSTMCell(6),
    "lstm_full": lambda: rk.LSTMCell(6, use_peepholes=True, cell_clip=0.4, num_proj=4, proj_clip=0.3),
    "lstm_proj_concat_state": lambda: rk.LSTMCell(5, num_proj=3, forget_bias=0.3, state_is_tuple=False),
    "layer_norm_lstm": lambda: rk.LayerNormBasicLSTMCell(6, forget_bias=0.5, norm_gain=1.3, norm_shift=0.1),
    "layer_norm_off": lambda: rk.LayerNormBasicLSTMCell(6, layer_norm=False),
    "gru": lambda: rk.GRUCell(6),
    "rnn_tanh": lambda: rk.BasicRNNCell(6),
    "rnn_relu": lambda: rk.BasicRNNCell(6, activation="relu"),
    "multi": lambda: rk.MultiRNNCell([rk.BasicLSTMCell(5), rk.GRUCell(4), rk.BasicRNNCell(3)]),
    "multi_concat_state": lambda: rk.MultiRNNCell(
        [rk.BasicLSTMCell(4, state_is_tuple=False), rk.GRUCell(3)], state_is_tuple=False
    ),
    "residual": lambda: rk.ResidualWrapper(rk.GRUCell(5)),
    "dropout_eval": lambda: rk.DropoutWrapper(rk.LSTMCell(5), 0.5, 0.5, 0.5).eval(),
}
# (lengths, reverse): full batch, ragged with an empty sequence, reversed within lengths.
LENGTHS = [(None, False), (None, True), ([7, 3, 0, 5], False), ([2, 7, 7, 1], True)]
DEPTH, STEPS, BATCH = 5, 7, 4


def _setup(name, dtype, seed=0):
    torch.manual_seed(seed)
    cell = CELLS[name]()
    cell.build(DEPTH)
    cell = cell.to(dtype)
    with torch.no_grad():  # non-trivial biases and peepholes, so every parameter matters
        for p in cell.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(STEPS, BATCH, DEPTH, dtype=dtype, requires_grad=True)
    state = map_structure(lambda s: (0.5 * torch.randn_like(s)).requires_grad_(), cell.zero_state(BATCH, dtype))
    return cell, x, state


def _run_and_grads(run, cell, x, state, weights):
    out, final = run()
    loss = (out * weights[0]).sum() + sum((s * w).sum() for s, w in zip(flatten(final), weights[1:], strict=True))
    leaves = [x, *flatten(state), *cell.parameters()]
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return out, final, grads


def assert_matches_reference(name, dtype, lengths, reverse, backend, kernels="auto", expect=None):
    cell, x, state = _setup(name, dtype)
    lens = None if lengths is None else torch.tensor(lengths)
    with engine.use(backend, kernels):
        if expect is not None:
            assert set(engine.explain(cell, x, lens)) == {expect}
        out, final = engine.unroll(cell, x, state, lens, reverse)
    ref, ref_final = engine.reference_unroll(cell, x, state, lens, reverse)
    weights = [torch.randn_like(ref)] + [torch.randn_like(s) for s in flatten(ref_final)]
    tol = TOL[dtype]
    out, final, grads = _run_and_grads(lambda: (out, final), cell, x, state, weights)
    ref, ref_final, ref_grads = _run_and_grads(lambda: (ref, ref_final), cell, x, state, weights)
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    assert type(final) is type(ref_final)
    for a, b in zip(flatten(final), flatten(ref_final), strict=True):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)
    names = ["inputs", *[f"state{k}" for k in range(len(flatten(state)))], *(n for n, _ in cell.named_parameters())]
    for label, a, b in zip(names, grads, ref_grads, strict=True):
        assert (a is None) == (b is None), label
        if a is not None:
            torch.testing.assert_close(a, b, atol=tol * 10, rtol=tol * 10, msg=lambda m, lb=label: f"{lb}: {m}")


@pytest.mark.parametrize("kernels", ["compiled", "python"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", sorted(CELLS))
def test_fused_matches_reference(name, dtype, kernels):
    for lengths, reverse in LENGTHS:
        assert_matches_reference(name, dtype, lengths, reverse, "fused", kernels, expect="fused")


TORCH_CELLS = ["basic_lstm", "layer_norm_off", "rnn_tanh", "rnn_relu", "dropout_eval"]


@pytest.mark.parametrize("name", TORCH_CELLS)
def test_torch_kernels_match_reference(name):
    """TF cells on torch's kernels: gate blocks reordered, forget_bias folded, gradients back to TF's kernel."""
    for lengths, reverse in LENGTHS:
        assert_matches_reference(name, torch.float64, lengths, reverse, "torch", expect="torch")


def test_torch_kernel_with_projection_matches_reference():
    """LSTMCell(num_proj) equals torch.lstm with proj_size."""
    with warnings.catch_warnings():
        # torch says once per process that oneDNN cannot project (its native loop runs): not ours to test.
        warnings.filterwarnings("ignore", message=".*projections is not supported with oneDNN")
        assert_matches_reference("lstm_proj_concat_state", torch.float32, None, False, "torch", expect="torch")
    assert_matches_reference("lstm_proj_concat_state", torch.float64, [7, 3, 0, 5], True, "torch", expect="torch")


@pytest.mark.parametrize("name", sorted(CELLS))
def test_auto_matches_reference(name):
    for lengths, reverse in LENGTHS[::3]:
        assert_matches_reference(name, torch.float32, lengths, reverse, "auto")


@torch.no_grad()
def test_auto_routes():
    """Under auto on CPU: the oneDNN LSTM when torch's math, no lengths, inference and a batch above 4; the fused
    kernels otherwise."""
    x = torch.randn(3, 8, 4)
    lstm = rk.BasicLSTMCell(5, input_size=4)
    assert engine.explain(lstm, x) == ["torch"]
    assert engine.explain(lstm, x, torch.tensor([3, 1, 2, 3, 3, 3, 3, 2])) == ["fused"]
    assert engine.explain(lstm, x, torch.full((8,), 3)) == ["torch"]  # full lengths are no lengths
    assert engine.explain(lstm, x[:, :4]) == ["fused"]  # a batch of 1-4 rows: the fused kernel
    assert engine.explain(lstm, x[:, :5]) == ["torch"]
    with torch.enable_grad():
        assert engine.explain(lstm, x) == ["fused"]  # training: the fused kernel
        lstm.requires_grad_(False)
        assert engine.explain(lstm, x) == ["torch"]  # ... unless nothing of the cell is trained
        lstm.requires_grad_(True)
    torch_layout = rk.LSTM(4, 5)._cell(0, 0)  # torch's layout: the same rule
    assert engine.explain(torch_layout, x) == ["torch"]
    assert engine.explain(torch_layout, x[:, :1]) == ["fused"]
    with torch.enable_grad():
        assert engine.explain(torch_layout, x) == ["fused"]
    assert engine.explain(rk.GRUCell(5, input_size=4), x) == ["fused"]
    assert engine.explain(rk.BasicRNNCell(5, input_size=4), x) == ["fused"]
    assert engine.explain(rk.LSTMCell(5, num_proj=2, input_size=4), x) == ["fused"]  # oneDNN cannot project
    multi = rk.MultiRNNCell([rk.BasicLSTMCell(5), rk.LayerNormBasicLSTMCell(5)])
    multi.build(4)
    assert engine.explain(multi, x) == ["torch", "fused"]
    with engine.use("torch"):
        assert engine.explain(multi, x) == ["reference"]  # torch has no layer norm: nothing partial
    with engine.use("reference"):
        assert engine.explain(lstm, x) == ["reference"]
    assert engine.explain(lstm.double(), x.double()) == ["torch"]
    # float16: fused with float32 compute (torch's CPU half LSTM is its slow native loop); bf16: oneDNN's
    assert engine.explain(lstm.half(), x.half()) == ["fused"]
    assert engine.explain(lstm.bfloat16(), x.bfloat16()) == ["torch"]


@pytest.mark.parametrize("reverse", [False, True])
def test_lstm_with_few_distinct_lengths_runs_onednn_segment_by_segment(reverse):
    """Under use("torch"), sorted by length, each run of steps with a constant batch is one padded oneDNN
    call; exact states."""
    torch.manual_seed(2)
    cell = rk.BasicLSTMCell(6, forget_bias=0.5, input_size=4)
    x = torch.randn(16, 6, 4, requires_grad=True)
    lengths = torch.tensor([16, 8, 0, 16, 8, 16])
    state = cell.zero_state(6)
    with torch.no_grad():
        assert engine.explain(cell, x, lengths) == ["fused"]  # auto: the fused kernels skip finished sequences
    with engine.use("torch"):
        out, final = engine.unroll(cell, x, state, lengths, reverse)
    ref, ref_final = engine.reference_unroll(cell, x, state, lengths, reverse)
    torch.testing.assert_close(out, ref, atol=2e-6, rtol=0)
    for a, b in zip(final, ref_final, strict=True):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=0)
    leaves = [x, *cell.parameters()]
    grads = torch.autograd.grad(out.sum() + final.c.sum(), leaves)
    ref_grads = torch.autograd.grad(ref.sum() + ref_final.c.sum(), leaves)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=0)


def test_bidirectional_stack_matches_reference():
    """torch's stacked bidirectional topology (TF's stack_bidirectional_dynamic_rnn), each direction via the engine."""
    torch.manual_seed(1)
    fw = [rk.LSTMCell(4, use_peepholes=True, input_size=2), rk.GRUCell(3, input_size=8)]
    bw = [rk.LSTMCell(4, use_peepholes=True, input_size=2), rk.GRUCell(3, input_size=8)]
    cells = [c.double() for c in fw + bw]
    x = torch.randn(6, 3, 2, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([6, 2, 5])

    def network(run_dir):
        h, states = x, []
        for cf, cb in zip(fw, bw, strict=True):
            o_f, s_f = run_dir(cf, h, cf.zero_state(3, torch.float64), lengths, False)
            o_b, s_b = run_dir(cb, h, cb.zero_state(3, torch.float64), lengths, True)
            h = torch.cat([o_f, o_b], -1)  # (T, B, 8): the next layer reads both directions
            states += flatten(s_f) + flatten(s_b)
        return [h, *states]

    with engine.use("fused"):
        fused = network(engine.unroll)
    ref = network(engine.reference_unroll)
    for a, b in zip(fused, ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
    leaves = [x] + [p for c in cells for p in c.parameters()]
    grads = torch.autograd.grad(sum(t.sum() for t in fused), leaves)
    ref_grads = torch.autograd.grad(sum(t.sum() for t in ref), leaves)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_mismatched_dtypes_take_the_reference_path():
    """A cell whose parameters are not the inputs' dtype is not lowered: torch's own error speaks."""
    cell = rk.BasicLSTMCell(4, input_size=3)
    x = torch.randn(2, 2, 3, dtype=torch.float64)
    assert engine.explain(cell, x) == ["reference"]
    with pytest.raises(RuntimeError, match="dtype|Double|Float"):
        engine.unroll(cell, x, cell.zero_state(2, torch.float64))
