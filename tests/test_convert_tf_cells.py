"""TF1 checkpoints -> rnnkit cells and the torch layout, against the outputs TF itself computed.

Fixtures: tests/fixtures/tf_ckpt/<case>/ (make_tf_checkpoints.py): real ``tf.compat.v1.train.Saver``
checkpoints, the input, the lengths (5 and 3) and TF's outputs and final states. Tolerance 1e-5.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from rnnkit import BasicLSTMCell, DropoutWrapper, LSTMCell, MultiRNNCell, dynamic_rnn
from rnnkit._structure import flatten
from rnnkit.convert import (
    LayerConfig,
    TFCellStack,
    cells_from_tf_variables,
    cells_to_torch,
    load_tf_checkpoint,
    load_tf_variables,
    parse_tf_variables,
    read_tf_checkpoint,
    tf_to_torch,
    tf_variable_names,
    torch_to_cells,
    torch_to_tf,
)

FIXTURES = Path(__file__).parent / "fixtures" / "tf_ckpt"
CASES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())
TOL = 1e-5


def _fixture(case):
    meta = json.loads((FIXTURES / case / "meta.json").read_text())
    expected = dict(np.load(FIXTURES / case / "expected.npz"))
    options = {k: meta[k] for k in ("forget_bias", "cell_clip", "proj_clip") if k in meta}
    return meta, expected, options


def _state_leaves(expected):
    """TF's final state leaves in the order rnnkit's runners flatten their states."""
    names = [k for k in expected if k.startswith("state")]  # np.savez keeps insertion order: TF's structure
    return [torch.from_numpy(expected[k]) for k in names]


@pytest.mark.parametrize("case", CASES)
def test_checkpoint_runs_as_tf_ran_it(case):
    _, expected, options = _fixture(case)
    stack = load_tf_checkpoint(FIXTURES / case, **options)
    outputs, state = stack.run(torch.from_numpy(expected["inputs"]), expected["sequence_length"])
    torch.testing.assert_close(outputs, torch.from_numpy(expected["outputs"]), rtol=0, atol=TOL)
    leaves = flatten(state)
    assert len(leaves) == len(_state_leaves(expected))
    for got, want in zip(leaves, _state_leaves(expected), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=TOL)


def test_unstored_options_matter():
    """The peephole fixture clips its cell and projection: without those options the outputs differ."""
    _, expected, options = _fixture("lstm_peephole_proj")
    assert options == {"forget_bias": 0.7, "cell_clip": 0.5, "proj_clip": 0.4}
    stack = load_tf_checkpoint(FIXTURES / "lstm_peephole_proj", forget_bias=0.7)
    assert stack.cell.use_peepholes and stack.cell.num_proj == 3
    outputs, _ = stack.run(torch.from_numpy(expected["inputs"]), expected["sequence_length"])
    assert (outputs - torch.from_numpy(expected["outputs"])).abs().max() > 1e-2


def _torch_state(expected, config):
    """TF's final states as torch's (h_n, c_n): (layers * directions, batch, hidden), layer-major."""
    names = [k for k in expected if k.startswith("state")]
    if config.bidirectional and config.num_layers > 1:
        order = [f"state/{d}/{k}" for k in range(config.num_layers) for d in ("fw", "bw")]
    elif config.bidirectional:
        order = ["state/fw", "state/bw"]
    elif config.num_layers > 1:
        order = [f"state/{k}" for k in range(config.num_layers)]
    else:
        order = ["state"]
    if config.mode == "LSTM":
        h = np.stack([expected[f"{p}/h"] for p in order])
        c = np.stack([expected[f"{p}/c"] for p in order])
        return torch.from_numpy(h), torch.from_numpy(c)
    assert set(order) <= set(names)
    return torch.from_numpy(np.stack([expected[p] for p in order])), None


@pytest.mark.parametrize("case", ["multi_basic_lstm", "basic_rnn", "bidirectional_lstm", "stack_bidirectional_lstm"])
def test_checkpoint_into_torch_nn(case):
    """target='torch.nn' (forget bias folded) loads into torch.nn itself and reproduces TF, lengths included."""
    _, expected, options = _fixture(case)
    state_dict, config = tf_to_torch(read_tf_checkpoint(FIXTURES / case), target="torch.nn", **options)
    assert config.forget_bias == 0.0 and config.torch_nn_compatible
    module = config.torch_nn_module(batch_first=True)
    module.load_state_dict(state_dict)
    lengths = torch.from_numpy(expected["sequence_length"]).long()
    packed = pack_padded_sequence(torch.from_numpy(expected["inputs"]), lengths, batch_first=True)
    out, final = module(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=expected["inputs"].shape[1])
    torch.testing.assert_close(out, torch.from_numpy(expected["outputs"]), rtol=0, atol=TOL)
    h_want, c_want = _torch_state(expected, config)
    if config.mode == "LSTM":
        torch.testing.assert_close(final[0], h_want, rtol=0, atol=TOL)
        torch.testing.assert_close(final[1], c_want, rtol=0, atol=TOL)
    else:
        torch.testing.assert_close(final, h_want, rtol=0, atol=TOL)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("gru", "reset gate before the recurrent matmul"),
        ("lstm_peephole_proj", "peepholes"),
    ],
)
def test_torch_nn_refuses_what_it_cannot_compute(case, reason):
    _, _, options = _fixture(case)
    options.pop("proj_clip", None)
    with pytest.raises(ValueError, match=reason):
        tf_to_torch(read_tf_checkpoint(FIXTURES / case), target="torch.nn", **options)


def test_proj_clip_has_no_torch_layout():
    _, _, options = _fixture("lstm_peephole_proj")
    with pytest.raises(ValueError, match="proj_clip=0.4"):
        tf_to_torch(read_tf_checkpoint(FIXTURES / "lstm_peephole_proj"), **options)


@pytest.mark.parametrize("case", CASES)
def test_tf_torch_tf_round_trip_is_exact(case):
    variables = read_tf_checkpoint(FIXTURES / case)
    layout = parse_tf_variables(variables)
    state_dict, config = tf_to_torch(variables, target="rnnkit", forget_bias=1.0)
    back = torch_to_tf(
        state_dict,
        config,
        forget_bias=1.0,
        scope=layout.scope,
        topology=layout.topology,
        multi_rnn_cell=layout.multi_rnn_cell,
        cell_type=layout.fw[0].cell_type,
    )
    original = layout.variables()
    assert sorted(back) == sorted(original)
    for name, value in original.items():
        assert torch.equal(back[name], value), name
        np.testing.assert_array_equal(back[name].numpy(), variables[name])


@pytest.mark.parametrize("case", ["multi_basic_lstm", "gru", "stack_bidirectional_lstm", "bidirectional_lstm"])
def test_cells_torch_cells_round_trip(case):
    """rnnkit cells -> torch layout (rnnkit target) -> cells: same weights bit for bit, same outputs."""
    _, expected, options = _fixture(case)
    stack = load_tf_checkpoint(FIXTURES / case, **options)
    state_dict, config = cells_to_torch(stack)
    again = torch_to_cells(state_dict, config, topology=stack.topology, multi_rnn_cell=stack.multi_rnn_cell)
    if stack.cells_fw[0].__class__ is LSTMCell:
        again = torch_to_cells(state_dict, config, topology=stack.topology, cell_type="LSTMCell")
    for a, b in zip(stack.tf_variables().items(), again.tf_variables().items(), strict=True):
        assert a[0] == b[0] and torch.equal(a[1], b[1])
    outputs, _ = again.run(torch.from_numpy(expected["inputs"]), expected["sequence_length"])
    torch.testing.assert_close(outputs, torch.from_numpy(expected["outputs"]), rtol=0, atol=TOL)


def test_multi_basic_lstm_becomes_torch_lstm_and_back():
    """A MultiRNNCell of BasicLSTMCells (forget_bias 1) == torch.nn.LSTM with the bias folded, and back."""
    stack = MultiRNNCell([BasicLSTMCell(6, input_size=3), BasicLSTMCell(6, input_size=6)])
    x = torch.randn(4, 7, 3)
    want, _ = dynamic_rnn(stack, x)
    state_dict, config = cells_to_torch(stack, target="torch.nn")
    assert config == LayerConfig("LSTM", 3, 6, num_layers=2)
    lstm = config.torch_nn_module(batch_first=True)
    lstm.load_state_dict(state_dict)
    torch.testing.assert_close(lstm(x)[0], want, rtol=0, atol=1e-6)
    cells = torch_to_cells(lstm.state_dict(), LayerConfig.from_module(lstm), forget_bias=1.0)
    assert [type(c).__name__ for c in cells.cells_fw] == ["BasicLSTMCell", "BasicLSTMCell"]
    assert cells.cells_fw[0].forget_bias == 1.0
    torch.testing.assert_close(cells.run(x)[0], want, rtol=0, atol=1e-6)


def test_load_into_user_cells_and_names():
    _, expected, _ = _fixture("multi_basic_lstm")
    variables = read_tf_checkpoint(FIXTURES / "multi_basic_lstm")
    cell = MultiRNNCell([DropoutWrapper(BasicLSTMCell(4), output_keep_prob=0.5), BasicLSTMCell(4)])
    assert not cell.built
    load_tf_variables(cell, variables)
    cell.eval()
    outputs, _ = dynamic_rnn(cell, torch.from_numpy(expected["inputs"]), expected["sequence_length"])
    torch.testing.assert_close(outputs, torch.from_numpy(expected["outputs"]), rtol=0, atol=TOL)
    assert tf_variable_names(cell) == {
        "cell_0.cell.kernel": "rnn/multi_rnn_cell/cell_0/basic_lstm_cell/kernel",
        "cell_0.cell.bias": "rnn/multi_rnn_cell/cell_0/basic_lstm_cell/bias",
        "cell_1.kernel": "rnn/multi_rnn_cell/cell_1/basic_lstm_cell/kernel",
        "cell_1.bias": "rnn/multi_rnn_cell/cell_1/basic_lstm_cell/bias",
    }


def test_load_into_user_bidirectional_and_stacked_cells():
    for case, cells in [
        ("bidirectional_lstm", (LSTMCell(4), LSTMCell(4))),
        ("stack_bidirectional_lstm", ([BasicLSTMCell(4), BasicLSTMCell(4)], [BasicLSTMCell(4), BasicLSTMCell(4)])),
    ]:
        _, expected, _ = _fixture(case)
        load_tf_variables(cells, read_tf_checkpoint(FIXTURES / case))
        if isinstance(cells[0], list):
            stack = TFCellStack("stack_bidirectional", *cells)
        else:
            stack = TFCellStack("bidirectional", [cells[0]], [cells[1]])
        outputs, _ = stack.run(torch.from_numpy(expected["inputs"]), expected["sequence_length"])
        torch.testing.assert_close(outputs, torch.from_numpy(expected["outputs"]), rtol=0, atol=TOL)


def test_missing_variable_is_named():
    variables = read_tf_checkpoint(FIXTURES / "multi_basic_lstm")
    del variables["rnn/multi_rnn_cell/cell_1/basic_lstm_cell/bias"]
    with pytest.raises(ValueError, match=r"missing variable rnn/multi_rnn_cell/cell_1/basic_lstm_cell/bias .*\(16,\)"):
        cells_from_tf_variables(variables)
    cell = MultiRNNCell([BasicLSTMCell(4), BasicLSTMCell(4)])
    with pytest.raises(ValueError, match=r"missing variable 'rnn/multi_rnn_cell/cell_1/basic_lstm_cell/bias'"):
        load_tf_variables(cell, variables)


def test_wrong_shape_is_named_with_both_shapes():
    variables = read_tf_checkpoint(FIXTURES / "multi_basic_lstm")
    name = "rnn/multi_rnn_cell/cell_1/basic_lstm_cell/kernel"
    variables[name] = np.zeros((9, 16), np.float32)
    with pytest.raises(ValueError, match=rf"{name} has shape \(9, 16\), expected \(8, 16\)"):
        cells_from_tf_variables(variables)
    variables = read_tf_checkpoint(FIXTURES / "multi_basic_lstm")
    cell = MultiRNNCell([BasicLSTMCell(4), BasicLSTMCell(5)])
    with pytest.raises(ValueError, match=rf"'{name}' has shape \(8, 16\), but the BasicLSTMCell's 'kernel' expects"):
        load_tf_variables(cell, variables)
    bias = "rnn/multi_rnn_cell/cell_0/basic_lstm_cell/bias"
    variables[bias] = np.zeros(15, np.float32)
    with pytest.raises(ValueError, match=rf"{bias} has shape \(15,\), expected \(16,\)"):
        parse_tf_variables(variables)


def test_scope_selection_and_unknown_names():
    variables = {**read_tf_checkpoint(FIXTURES / "gru"), **read_tf_checkpoint(FIXTURES / "bidirectional_lstm")}
    with pytest.raises(ValueError, match="several recurrent stacks, at scopes \\['bidirectional_rnn', 'rnn'\\]"):
        parse_tf_variables(variables)
    assert parse_tf_variables(variables, scope="rnn").fw[0].cell_type == "GRUCell"
    with pytest.raises(ValueError, match="no TF1 RNN cell variables"):
        parse_tf_variables({"dense/kernel": np.zeros((2, 2))})


def test_bidirectional_over_multirnncells_is_cells_only():
    """bidirectional_dynamic_rnn over MultiRNNCells: no torch layer computes it, rnnkit cells do."""
    fw = [BasicLSTMCell(4, input_size=3), BasicLSTMCell(4, input_size=4)]
    bw = [BasicLSTMCell(4, input_size=3), BasicLSTMCell(4, input_size=4)]
    stack = TFCellStack("bidirectional", fw, bw, multi_rnn_cell=True)
    variables = stack.tf_variables()
    assert "bidirectional_rnn/bw/multi_rnn_cell/cell_1/basic_lstm_cell/kernel" in variables
    with pytest.raises(ValueError, match="two independent deep stacks"):
        tf_to_torch(variables, forget_bias=1.0)
    rebuilt = cells_from_tf_variables(variables, forget_bias=1.0)
    x = torch.randn(2, 5, 3)
    torch.testing.assert_close(rebuilt.run(x)[0], stack.run(x)[0], rtol=0, atol=0)
