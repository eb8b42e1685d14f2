"""Cells that draw random numbers at every step (zoneout, per-step dropout) run compiled, equal to the reference loop.

The capture replaces each draw with columns of the inputs; before the loop the engine makes the reference loop's own
calls, step by step and in its order (``rnnkit.engine.compiler.draws``), so under one seed both paths draw the same
masks: outputs, final states and gradients must agree (1e-5, float32), and the random stream must end in the same
state (compiling a cell draws nothing from it). A draw whose probability the step computes is refused, named.
"""

from __future__ import annotations

import pytest
import torch

import rnnkit
from rnnkit import engine
from rnnkit._structure import flatten

TOL = {"atol": 1e-5, "rtol": 1e-5}


def _both(run):  # noqa: ANN001, ANN202
    """``run()`` on the chosen path and on the reference loop from one seed; the random stream's next number after."""
    out = []
    for backend in ("auto", "reference"):
        with engine.use(backend):
            torch.manual_seed(7)
            result = run()
            out.append((result, torch.rand(1)))
    return out


def _check(fast, ref, wrt):  # noqa: ANN001, ANN202
    (y, after), (r, ref_after) = fast, ref
    for a, b in zip(flatten(y), flatten(r), strict=True):
        torch.testing.assert_close(a, b, **TOL)
    torch.testing.assert_close(after, ref_after, rtol=0, atol=0)  # the same draws, no more, no fewer
    loss = lambda out: sum((t * torch.arange(t.numel()).view_as(t).sin()).sum() for t in flatten(out))  # noqa: E731
    ga = torch.autograd.grad(loss(y), wrt, allow_unused=True)
    gb = torch.autograd.grad(loss(r), wrt, allow_unused=True)
    for a, b in zip(ga, gb, strict=True):
        torch.testing.assert_close(a, b, **TOL)


LAYERS = [
    pytest.param(lambda: rnnkit.LSTM(5, 6, zoneout=0.2), id="lstm"),
    pytest.param(lambda: rnnkit.LSTM(5, 6, zoneout=0.2, num_layers=2, bidirectional=True, proj_size=4), id="lstm2bi"),
    pytest.param(lambda: rnnkit.GRU(5, 6, zoneout=0.3, num_layers=3, dropout=0.2), id="gru3-dropout"),
    pytest.param(lambda: rnnkit.RNN(5, 6, zoneout=0.1, nonlinearity="relu", bidirectional=True), id="rnn-bi"),
]


@pytest.mark.parametrize("make", LAYERS)
@pytest.mark.parametrize("lengths", [None, [7, 2, 5]], ids=["full", "lengths"])
def test_zoneout_layers_in_training_run_compiled(make, lengths):  # noqa: ANN001
    layer = make().train()
    x = torch.randn(7, 3, 5, requires_grad=True)
    node = layer.engine_stack()
    assert all(type(s).__name__ == "ProgramSpec" for units in node.specs for s in units)
    if lengths is None:
        run = lambda: layer(x)  # noqa: E731
    else:
        def run():  # noqa: ANN202
            packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=False)
            out, state = layer(packed)
            return out.data, state
    fast, ref = _both(run)
    _check(fast, ref, [x, *layer.parameters()])


CELLS = [
    pytest.param(lambda: rnnkit.LayerNormBasicLSTMCell(6, dropout_keep_prob=0.7), id="layer_norm_dropout"),
    pytest.param(lambda: rnnkit.DropoutWrapper(rnnkit.GRUCell(6), 0.8, 0.7, 0.6), id="dropout_wrapper_per_step"),
    pytest.param(
        lambda: rnnkit.MultiRNNCell([rnnkit.DropoutWrapper(rnnkit.BasicLSTMCell(6), 0.9, output_keep_prob=0.8),
                                     rnnkit.LayerNormBasicLSTMCell(6, dropout_keep_prob=0.7)]),
        id="stack_of_two_drawing_layers",
    ),  # fmt: skip
]


@pytest.mark.parametrize("make", CELLS)
def test_per_step_dropout_cells_run_compiled(make):  # noqa: ANN001
    cell = make()
    cell.build(5)
    x = torch.randn(6, 3, 5, requires_grad=True)
    lengths = torch.tensor([6, 0, 4])
    (why,) = engine.explain(cell, x, reasons=True)
    assert why.startswith("fused: compiled"), why  # (a stack whose two layers draw is compiled whole: one program)
    fast, ref = _both(lambda: rnnkit.dynamic_rnn(cell, x, sequence_length=lengths, time_major=True))
    _check(fast, ref, [x, *cell.parameters()])


class _DrawsFromState(rnnkit.RNNCell):
    state_size = output_size = 4

    def build(self, inputs_shape):  # noqa: ANN001, ANN202
        self.kernel = self.add_variable("kernel", [inputs_shape[-1] + 4, 4])

    def call(self, inputs, state):  # noqa: ANN001, ANN202
        h = torch.tanh(torch.cat([inputs, state], 1) @ self.kernel)
        h = h * torch.bernoulli(torch.sigmoid(state))  # a probability the step computes: not replayable
        return h, h


def test_a_draw_from_computed_probabilities_is_refused_and_named():
    cell = _DrawsFromState(input_size=3)
    (why,) = engine.explain(cell, torch.randn(4, 2, 3), reasons=True)
    assert why.startswith("reference: _DrawsFromState.call: aten.bernoulli.default draws random numbers from values")


def test_compiling_a_cell_draws_nothing_from_the_random_stream():
    cell = rnnkit.BasicLSTMCell(5, activation=torch.relu, input_size=3)  # no kernel family: compiled on first use
    x = torch.randn(4, 2, 3, requires_grad=True)
    torch.manual_seed(3)
    rnnkit.dynamic_rnn(cell, x, time_major=True)[0].sum().backward()  # capture, code generation, forward, backward
    after = torch.rand(1)
    torch.manual_seed(3)
    assert torch.equal(torch.rand(1), after)
