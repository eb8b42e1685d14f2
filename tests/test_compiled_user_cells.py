"""User-written cells run compiled (issue 13): the engine captures ``call`` and runs generated code in its time loop.

Every family of ``tests/user_cells.py``, in both writings (TF1 protocol and torch style), against the reference loop
over the same cell (``engine.use("reference")``, the oracle): outputs, final states and the gradients of every
parameter, the inputs and the initial state, at 1e-5 in float32 (the generated code's sigmoid/tanh/exp are the fused
kernels' approximations, within a few ulps), with ``sequence_length`` and reversal, inside ``MultiRNNCell``, through
every runner; float64 gradients by ``gradcheck`` on the compiled path. ``explain(..., reasons=True)`` must say the
cell ran compiled, so none of these comparisons is the loop against itself.
"""

from __future__ import annotations

import pytest
import torch

import rnnkit
from rnnkit import engine
from user_cells import USER_CELLS

STYLES = ("tf_style", "torch_style")
CASES = [pytest.param(entry, style, id=f"{entry.name}-{style}") for entry in USER_CELLS for style in STYLES]
TOL = {"atol": 1e-5, "rtol": 1e-5}


def _cell(entry, style, units=12, depth=7, dtype=torch.float32):  # noqa: ANN001, ANN202
    cell = getattr(entry, style)(units, depth)
    if not cell.built:
        cell.build(depth)
    return cell.to(dtype)


def _run(cell, x, lengths=None, backend="auto"):  # noqa: ANN001, ANN202
    with engine.use(backend):
        return rnnkit.dynamic_rnn(cell, x, sequence_length=lengths, time_major=True)


def _grads(cell, x, out):  # noqa: ANN001, ANN202
    leaves = [t for t in rnnkit._structure.flatten(out) if t.requires_grad]
    loss = sum((t * torch.linspace(-1, 1, t.numel()).view_as(t)).sum() for t in leaves)
    params = list(cell.parameters())
    return torch.autograd.grad(loss, [x, *params], allow_unused=True)


def _same(a, b, **tol):  # noqa: ANN001, ANN202
    for u, v in zip(rnnkit._structure.flatten(a), rnnkit._structure.flatten(b), strict=True):
        if u is None or v is None:
            assert u is None and v is None
            continue
        torch.testing.assert_close(u, v, **(tol or TOL))


@pytest.mark.parametrize(("entry", "style"), CASES)
def test_compiled_equals_reference_with_lengths(entry, style):  # noqa: ANN001
    cell = _cell(entry, style)
    x = torch.randn(9, 5, 7, requires_grad=True)
    lengths = torch.tensor([9, 4, 0, 7, 1])
    assert engine.explain(cell, x, reasons=True)[0].startswith("fused: compiled")
    out = _run(cell, x, lengths)
    ref = _run(cell, x, lengths, "reference")
    _same(out, ref)
    _same(_grads(cell, x, out), _grads(cell, x, ref))


@pytest.mark.parametrize(("entry", "style"), CASES)
def test_compiled_batch_one_inference(entry, style):  # noqa: ANN001
    cell = _cell(entry, style)
    x = torch.randn(20, 1, 7)
    with torch.no_grad():
        _same(_run(cell, x), _run(cell, x, backend="reference"))


@pytest.mark.parametrize(("entry", "style"), CASES)
def test_compiled_float64_gradcheck(entry, style):  # noqa: ANN001
    cell = _cell(entry, style, units=4, depth=3, dtype=torch.float64)
    x = torch.randn(4, 3, 3, dtype=torch.float64, requires_grad=True)
    params = list(cell.parameters())

    def f(x, *ps):  # noqa: ANN001, ANN202
        return rnnkit.dynamic_rnn(cell, x, sequence_length=torch.tensor([4, 2, 3]), time_major=True)[0]

    assert engine.explain(cell, x)[0] == "fused"
    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("entry", USER_CELLS, ids=[e.name for e in USER_CELLS])
def test_compiled_in_multi_rnn_cell_and_bidirectional(entry):  # noqa: ANN001
    stack = rnnkit.MultiRNNCell([entry.tf_style(10, None), entry.torch_style(8, 10)])
    stack.build(6)
    x = torch.randn(6, 4, 6, requires_grad=True)
    lengths = torch.tensor([6, 2, 5, 3])
    assert engine.explain(stack, x) == ["fused", "fused"]
    out = _run(stack, x, lengths)
    ref = _run(stack, x, lengths, "reference")
    _same(out, ref)
    _same(_grads(stack, x, out), _grads(stack, x, ref))
    fw, bw = entry.tf_style(5, 6), entry.torch_style(5, 6)
    runs = []
    for backend in ("auto", "reference"):
        with engine.use(backend):
            runs.append(rnnkit.bidirectional_dynamic_rnn(fw, bw, x, sequence_length=lengths, time_major=True))
    _same(runs[0], runs[1])


def test_the_interpreter_runs_a_program_when_the_kernels_are_pure_pytorch():
    cell = _cell(USER_CELLS[0], "tf_style")
    x = torch.randn(5, 3, 7)
    with engine.use("fused", "python"):
        assert "interpreted" in engine.explain(cell, x, reasons=True)[0]
        out = rnnkit.dynamic_rnn(cell, x, time_major=True)
    _same(out, _run(cell, x, backend="reference"))


class _Branchy(rnnkit.RNNCell):
    state_size = output_size = 4

    def build(self, inputs_shape):  # noqa: ANN001, ANN202
        self.kernel = self.add_variable("kernel", [inputs_shape[-1] + 4, 4])

    def call(self, inputs, state):  # noqa: ANN001, ANN202
        h = torch.tanh(torch.cat([inputs, state], 1) @ self.kernel)
        if h.sum() > 0:  # a branch on a value: the capture cannot follow it
            h = -h
        return h, h


def test_a_cell_the_capture_cannot_take_runs_on_the_loop_and_explain_says_why():
    cell = _Branchy(input_size=3)
    x = torch.randn(5, 2, 3)
    (why,) = engine.explain(cell, x, reasons=True)
    assert why.startswith("reference: _Branchy.call: data-dependent control flow"), why
    assert engine.explain(cell, x) == ["reference"]
    out = rnnkit.dynamic_rnn(cell, x, time_major=True)
    _same(out, _run(cell, x, backend="reference"))


@pytest.mark.parametrize(("entry", "style"), CASES[:2] + CASES[-2:])
def test_compiled_float64_gradgradcheck(entry, style):  # noqa: ANN001
    # second derivatives: the native backward hands create_graph=True over to the program in torch ops
    cell = _cell(entry, style, units=3, depth=2, dtype=torch.float64)
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    params = list(cell.parameters())

    def f(x, *ps):  # noqa: ANN001, ANN202
        return rnnkit.dynamic_rnn(cell, x, sequence_length=torch.tensor([3, 2]), time_major=True)[0]

    assert engine.explain(cell, x)[0] == "fused"
    assert torch.autograd.gradgradcheck(f, (x, *params), eps=1e-6, atol=1e-6)
