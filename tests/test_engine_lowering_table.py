"""A new cell whose step is an existing kernel family runs on the kernels with one table entry.

The toy cell below is written here, with its own math in ``call`` (a tanh Elman step over TF-style ``kernel`` and
``bias``); it is declared with ``register_cell`` and lowered by ONE entry of ``rnnkit.engine.lowering.LOWERINGS``.
Then ``explain`` routes it to the fused kernels, and outputs, final states and every gradient equal the reference
loop over its own ``call`` (float64, 1e-10), with lengths (a zero among them) and reversed; a subclass is not
lowered (it may change ``call``). The fixture removes the registry and table entries afterwards.
"""

from __future__ import annotations

import pytest
import torch

import rnnkit
from rnnkit import engine
from rnnkit.cells import RNNCell, SingleStateCell, register_cell
from rnnkit.cells import registry as cell_registry
from rnnkit.engine.lowering import LOWERINGS, RNNSpec, lowering_for


class ToyElmanCell(SingleStateCell):
    """``h' = tanh(x @ kernel[:I] + h @ kernel[I:] + bias)``: written out here, not BasicRNNCell's code."""

    def _build(self, input_depth: int) -> None:
        self.kernel = self._new_parameter(input_depth + self.num_units, self.num_units)
        self.bias = self._new_parameter(self.num_units, init=0.0)

    def call(self, inputs: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._build_for(inputs)
        depth = self.input_depth
        h = torch.tanh(inputs @ self.kernel[:depth] + state @ self.kernel[depth:] + self.bias)
        return h, h


@pytest.fixture
def toy_cell():
    register_cell(kind="leaf", namespaces=())(ToyElmanCell)
    LOWERINGS[ToyElmanCell] = lambda cell: RNNSpec.from_tf_kernel(cell, relu=False)  # the one entry
    try:
        yield ToyElmanCell
    finally:
        LOWERINGS.pop(ToyElmanCell, None)
        cell_registry._ENTRIES.pop("ToyElmanCell", None)


def _make(cls: type, seed: int = 0) -> RNNCell:
    torch.manual_seed(seed)
    cell = cls(5, input_size=3, dtype=torch.float64)
    with torch.no_grad():
        cell.bias.uniform_(-0.5, 0.5)  # (zeros at init: give the bias something to be wrong about)
    return cell


def _run(cell: RNNCell, x: torch.Tensor, h0: torch.Tensor, lengths: torch.Tensor | None, reverse: bool) -> list:
    out, h = engine.unroll(cell, x, h0, lengths, reverse)
    loss = (out * torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype)).pow(2).sum() + h.sin().sum()
    grads = torch.autograd.grad(loss, [x, h0, *cell.parameters()])
    return [out, h, *grads]


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("lengths", [None, [6, 2, 0, 4]], ids=["full", "lengths"])
def test_one_table_entry_runs_a_new_cell_on_the_fused_kernels(toy_cell, lengths, reverse):
    assert "ToyElmanCell" in rnnkit.cells.cell_names(kind="leaf")
    cell = _make(toy_cell)
    x = torch.randn(6, 4, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    lens = None if lengths is None else torch.tensor(lengths)
    assert engine.explain(cell, x, lens) == ["fused"]
    got = _run(cell, x, h0, lens, reverse)
    with engine.use("reference"):
        assert engine.explain(cell, x, lens) == ["reference"]
        want = _run(cell, x, h0, lens, reverse)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-10)
    # torch's own Elman kernel computes the same step: the entry's spec gives it TF's kernel re-laid out.
    with engine.use("torch"):
        assert engine.explain(cell, x, lens) == ["torch"]
        on_torch = _run(cell, x, h0, lens, reverse)
    for g, w in zip(on_torch, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-10)


def test_the_runners_and_a_stack_take_the_entry(toy_cell):
    """Through dynamic_rnn and stack_bidirectional_dynamic_rnn (float64, 1e-10 against the reference loop)."""
    fw, bw = _make(toy_cell, 1), _make(toy_cell, 2)
    x = torch.randn(4, 6, 3, dtype=torch.float64)  # (batch, time, depth)
    top = toy_cell(5, input_size=10, dtype=torch.float64)
    lengths = [6, 3, 0, 5]

    def run() -> list:
        out, state = rnnkit.dynamic_rnn(fw, x, sequence_length=lengths)
        stacked, s_fw, s_bw = rnnkit.stack_bidirectional_dynamic_rnn([fw, top], [bw, top], x, sequence_length=lengths)
        return [out, state, stacked, *s_fw, *s_bw]

    got = run()
    with engine.use("reference"):
        want = run()
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-10)


def test_a_subclass_is_not_lowered(toy_cell):
    class Changed(toy_cell):
        def call(self, inputs, state):  # a subclass may change the step: the table's entry is not its math
            h, _ = super().call(inputs, state)
            return 2 * h, h

    cell = _make(Changed)
    assert not isinstance(lowering_for(cell), RNNSpec)  # compiled from its own call instead (issue 13)
    x = torch.randn(3, 2, 3, dtype=torch.float64)
    assert engine.explain(cell, x, reasons=True)[0].startswith("fused: compiled Changed")
    out, _ = engine.unroll(cell, x, cell.zero_state(2, torch.float64))
    with engine.use("reference"):
        ref, _ = engine.unroll(cell, x, cell.zero_state(2, torch.float64))
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)  # the subclass's math (2 * h), not the entry's
    assert isinstance(lowering_for(_make(toy_cell)), RNNSpec)


def test_without_the_entry_the_cell_runs_compiled_from_its_call():
    cell = _make(ToyElmanCell)
    assert ToyElmanCell not in LOWERINGS
    assert not isinstance(lowering_for(cell), RNNSpec)
    assert engine.explain(cell, torch.randn(3, 2, 3, dtype=torch.float64), reasons=True)[0].startswith(
        "fused: compiled ToyElmanCell"
    )
