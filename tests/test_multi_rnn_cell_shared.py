"""``MultiRNNCell([cell] * n)``: one cell object in several layers shares its weights, as in TF1."""

from __future__ import annotations

import pytest
import torch

import rnnkit as rk
from rnnkit._structure import flatten


def _shared(cell: rk.RNNCell, n: int) -> rk.MultiRNNCell:
    with pytest.warns(UserWarning, match="same object and will share weights"):
        return rk.MultiRNNCell([cell] * n)


CELLS = [lambda: rk.BasicLSTMCell(4), lambda: rk.GRUCell(4), lambda: rk.LSTMCell(4, use_peepholes=True)]


@pytest.mark.parametrize("make", CELLS)
def test_every_engine_path_runs_the_shared_stack_as_the_cell_applied_layer_by_layer(make):
    cell = make()
    cell.build(4)
    cell.double()
    stack = _shared(cell, 3)
    x = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    # By hand: the same cell unrolled three times, each layer over the outputs of the one below.
    h, states = x, []
    with rk.engine.use("reference"):
        for _ in range(3):
            h, s = rk.dynamic_rnn(cell, h, sequence_length=[5, 3])
            states.append(s)
    want_grads = torch.autograd.grad(h.sum(), [x, *cell.parameters()])
    for backend in ("auto", "fused", "reference"):
        with rk.engine.use(backend):
            out, final = rk.dynamic_rnn(stack, x, sequence_length=[5, 3])
        torch.testing.assert_close(out, h, atol=1e-10, rtol=1e-10)
        for a, b in zip(flatten(final), flatten(tuple(states)), strict=True):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
        grads = torch.autograd.grad(out.sum(), [x, *cell.parameters()])  # one parameter set, summed over layers
        for g, w in zip(grads, want_grads, strict=True):
            torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-10)


def test_shared_stack_saves_and_loads_with_the_sharing(tmp_path):
    cell = rk.BasicLSTMCell(3, input_size=3)
    stack = rk.MultiRNNCell([_shared(cell, 2), rk.GRUCell(2)], input_size=3)
    rk.save(stack, tmp_path / "s.safetensors")
    with pytest.warns(UserWarning, match="share weights"):
        back = rk.load(tmp_path / "s.safetensors")
    inner = back.cells[0]
    assert inner.cells[0] is inner.cells[1]
    assert list(back.state_dict()) == list(stack.state_dict())
    x = torch.randn(2, 4, 3)
    torch.testing.assert_close(rk.dynamic_rnn(back, x)[0], rk.dynamic_rnn(stack, x)[0], rtol=0, atol=0)
