"""What is derived from the cell registry: the TF1 namespaces, ``rnnkit.__all__``, ``rnnkit.cells.__all__`` and the
CLI's cell-expression parser, checked against today's public names, and a toy cell registered the documented way
(README, "Adding a cell") showing up in each of them.
"""

from __future__ import annotations

import pytest
import torch

import rnnkit
from cell_registry import temporary_cells
from rnnkit.cells import SingleStateCell, cell_entries, cell_names, register_cell
from rnnkit.cli.tf_expr import CONSTRUCTORS, parse_cell

TF_CELLS = {"RNNCell", "BasicRNNCell", "BasicLSTMCell", "LSTMCell", "GRUCell", "MultiRNNCell", "DropoutWrapper"}
TF_CELLS |= {"ResidualWrapper"}
NN_RUNNERS = {"dynamic_rnn", "static_rnn", "bidirectional_dynamic_rnn", "static_bidirectional_rnn"}
CONTRIB_RUNNERS = {"stack_bidirectional_dynamic_rnn", "static_rnn", "static_bidirectional_rnn"}


def _public(namespace: object) -> set[str]:
    return {n for n in dir(namespace) if not n.startswith("_")}


def test_tf_namespaces_hold_exactly_todays_names():
    assert _public(rnnkit.nn.rnn_cell) == TF_CELLS | {"LSTMStateTuple"}
    assert _public(rnnkit.nn) == NN_RUNNERS | {"rnn_cell"}
    contrib_cells = TF_CELLS | {"LSTMStateTuple", "LayerNormBasicLSTMCell", "LayerRNNCell"}
    assert _public(rnnkit.contrib.rnn) == contrib_cells | CONTRIB_RUNNERS
    assert _public(rnnkit.compat.v1) == {"nn", "contrib"}
    assert rnnkit.compat.v1.nn is rnnkit.nn and rnnkit.compat.v1.contrib is rnnkit.contrib
    for name in _public(rnnkit.contrib.rnn):
        assert getattr(rnnkit.contrib.rnn, name) is getattr(rnnkit, name), name
    assert rnnkit.nn.rnn_cell.LSTMStateTuple is rnnkit.LSTMStateTuple


def test_an_unknown_tf_name_is_an_attribute_error_naming_the_module():
    with pytest.raises(AttributeError, match=r"rnnkit\.nn\.rnn_cell' has no attribute 'LayerNormBasicLSTMCell'"):
        rnnkit.nn.rnn_cell.LayerNormBasicLSTMCell  # noqa: B018 (TF1 has it in contrib only)
    assert not hasattr(rnnkit.contrib.rnn, "TorchLSTMCell")
    assert getattr(rnnkit.nn, "__wrapped__", None) is None


def test_package_exports_are_todays():
    expected = TF_CELLS | {"RNNCellWrapper", "LayerNormBasicLSTMCell", "LayerRNNCell", "LSTMStateTuple"}
    expected |= {"RNN", "LSTM", "GRU", "TensorShape", "Dimension"}
    expected |= NN_RUNNERS | CONTRIB_RUNNERS | {"reverse_sequence", "summary", "Summary", "convert", "engine"}
    expected |= {"errors", "backend_info", "save", "load", "export_onnx", "nn", "contrib", "compat"}
    expected |= {"float16", "float32", "float64", "bfloat16"}
    assert set(rnnkit.__all__) == expected and len(rnnkit.__all__) == len(expected)
    assert all(hasattr(rnnkit, name) for name in rnnkit.__all__)


def test_cells_package_exports_every_registered_class():
    assert set(cell_names()) <= set(rnnkit.cells.__all__)
    assert all(getattr(rnnkit.cells, e.name) is e.cls for e in cell_entries())


def test_parser_knows_the_registered_cells_stacks_and_wrappers():
    assert set(CONSTRUCTORS) == set(cell_names(("leaf", "stack", "wrapper")))
    assert "RNNCell" not in CONSTRUCTORS and "TorchGRUCell" not in CONSTRUCTORS


class ToyCell(SingleStateCell):
    """``h' = tanh(x @ kernel) * h + x @ kernel``: a cell no TF module has, registered as a test would add one."""

    def _build(self, input_depth: int) -> None:
        self.kernel = self._new_parameter(input_depth, self.num_units)

    def call(self, inputs, state):
        self._build_for(inputs)
        z = inputs @ self.kernel
        h = torch.tanh(z) * state + z
        return h, h


def test_a_registered_toy_cell_shows_up_everywhere_and_goes_away():
    with temporary_cells():
        register_cell(namespaces=("contrib.rnn",))(ToyCell)
        assert rnnkit.contrib.rnn.ToyCell is ToyCell and "ToyCell" in dir(rnnkit.contrib.rnn)
        assert rnnkit.compat.v1.contrib.rnn.ToyCell is ToyCell
        assert not hasattr(rnnkit.nn.rnn_cell, "ToyCell")
        assert CONSTRUCTORS["ToyCell"] is ToyCell
        stack = parse_cell("tf.contrib.rnn.MultiRNNCell([ToyCell(3), ToyCell(2)])")
        x, h0 = torch.randn(4, 5), stack.zero_state(4, torch.float32)
        out, (h1, h2) = stack(x, h0)
        z = x @ stack.cells[0].kernel
        torch.testing.assert_close(h1, torch.tanh(z) * h0[0] + z, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(out, h2, atol=0, rtol=0)
        outputs, _ = rnnkit.dynamic_rnn(stack, torch.randn(4, 6, 5))
        assert outputs.shape == (4, 6, 2)
    assert not hasattr(rnnkit.contrib.rnn, "ToyCell") and "ToyCell" not in CONSTRUCTORS
    with pytest.raises(ValueError, match="unknown cell constructor 'ToyCell'"):
        parse_cell("ToyCell(3)")
