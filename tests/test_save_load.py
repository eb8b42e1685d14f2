"""rnnkit.convert.save / load: safetensors weights + the configuration in the metadata, reloaded with no user code.

References: the saved module itself (the reload must be bit-identical: same class, options, weights and outputs),
torch.nn's own modules, and the outputs TF1 recorded for the committed checkpoints (tests/fixtures/tf_ckpt, 1e-5).
"""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import rnnkit
from rnnkit import (
    BasicLSTMCell,
    BasicRNNCell,
    DropoutWrapper,
    GRUCell,
    LayerNormBasicLSTMCell,
    LSTMCell,
    MultiRNNCell,
    ResidualWrapper,
    dynamic_rnn,
)
from rnnkit.convert import load_tf_checkpoint
from rnnkit.saving import CONFIG_KEY, load, module_config, save

TF_CKPT = Path(__file__).parent / "fixtures" / "tf_ckpt"
TOL = 1e-5

LAYERS = {
    "rnn-relu-nobias": lambda: rnnkit.RNN(3, 5, num_layers=2, nonlinearity="relu", bias=False),
    "rnn-bi-batch-first": lambda: rnnkit.RNN(3, 5, bidirectional=True, batch_first=True, dropout=0.25, num_layers=2),
    "gru-tf": lambda: rnnkit.GRU(3, 4, reset_after=False, num_layers=2, bidirectional=True),
    "gru-regularised": lambda: rnnkit.GRU(3, 4, recurrent_dropout=0.2, zoneout=0.1),
    "lstm-torch": lambda: rnnkit.LSTM(3, 4),
    "lstm-tf-options": lambda: rnnkit.LSTM(3, 6, num_layers=2, forget_bias=1.0, peepholes=True, cell_clip=0.5),
    "lstm-proj": lambda: rnnkit.LSTM(3, 6, proj_size=2, bidirectional=True, batch_first=True, zoneout=0.3),
    "lstm-layer-norm": lambda: rnnkit.LSTM(3, 6, layer_norm=True, forget_bias=0.5, num_layers=2, dropout=0.1),
    "lstm-float64": lambda: rnnkit.LSTM(3, 4, dtype=torch.float64, bias=False, forget_bias=0.3),
}


def _perturb(module: torch.nn.Module) -> None:
    """Non-default values for every parameter (layer-norm gains start at 1 and would hide a lost tensor)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.3)


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("training", [False, True])
def test_layer_round_trip_is_exact(name, training, tmp_path):
    layer = LAYERS[name]()
    _perturb(layer)
    layer.train(training)
    path = tmp_path / "layer.safetensors"
    save(layer, path)
    again = load(path)
    assert type(again) is type(layer) and repr(again) == repr(layer)
    assert again.training == training
    assert module_config(again) == module_config(layer)
    mine, theirs = layer.state_dict(), again.state_dict()
    assert list(theirs) == list(mine)
    assert all(torch.equal(theirs[k], v) and theirs[k].dtype == v.dtype for k, v in mine.items())
    x = torch.randn(2, 5, 3, dtype=mine[next(iter(mine))].dtype)  # (B=2, T=5) batch-first, else (T=2, B=5)
    lengths = [5, 2] if layer.batch_first else [2, 1, 2, 2, 1]
    layer.eval(), again.eval()
    with torch.no_grad():
        want, got = layer(x, lengths=lengths), again(x, lengths=lengths)
    for a, b in zip(rnnkit._structure.flatten(got), rnnkit._structure.flatten(want), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_torch_nn_layer_reloads_as_the_rnnkit_drop_in(tmp_path):
    torch_lstm = torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True, batch_first=True)
    save(torch_lstm, tmp_path / "lstm.safetensors")
    again = load(tmp_path / "lstm.safetensors")
    assert type(again) is rnnkit.LSTM and again.batch_first and again.bidirectional
    x = torch.randn(2, 6, 3)
    with torch.no_grad():
        want, (h, c) = torch_lstm(x)
        got, (h2, c2) = again(x)
    for a, b in ((got, want), (h2, h), (c2, c)):
        torch.testing.assert_close(a, b, rtol=0, atol=TOL)


def _cell_trees():
    yield "basic-rnn-relu", BasicRNNCell(5, activation="relu", input_size=3)
    yield "basic-rnn-torch-relu", BasicRNNCell(5, activation=torch.nn.functional.relu, input_size=3)
    yield "basic-lstm-concat-state", BasicLSTMCell(4, forget_bias=0.25, state_is_tuple=False, input_size=3)
    yield "lstm-cell-everything", LSTMCell(6, use_peepholes=True, cell_clip=0.4, num_proj=3, proj_clip=0.3,
                                           forget_bias=0.7, activation="sigmoid", input_size=3)  # fmt: skip
    yield "gru", GRUCell(4, input_size=3)
    yield "layer-norm", LayerNormBasicLSTMCell(4, forget_bias=0.2, norm_gain=0.9, norm_shift=0.1,
                                               dropout_keep_prob=0.8, input_size=3)  # fmt: skip
    yield "layer-norm-off", LayerNormBasicLSTMCell(4, layer_norm=False, activation="elu", input_size=3)
    yield (
        "multi-wrapped",
        MultiRNNCell(
            [
                DropoutWrapper(
                    BasicLSTMCell(4, input_size=3),
                    input_keep_prob=0.9,
                    output_keep_prob=0.8,
                    state_keep_prob=0.7,
                    variational_recurrent=True,
                ),  # fmt: skip
                ResidualWrapper(GRUCell(4)),
                MultiRNNCell([LSTMCell(5, num_proj=4), BasicRNNCell(4, activation="linear")]),
            ],
            input_size=3,
        ),
    )


CELL_TREES = dict(_cell_trees())


@pytest.mark.parametrize("name", list(CELL_TREES))
def test_cell_tree_round_trip_is_exact(name, tmp_path):
    cell = CELL_TREES[name].eval()
    _perturb(cell)
    save(cell, tmp_path / "cell.safetensors")
    again = load(tmp_path / "cell.safetensors")
    assert repr(again) == repr(cell) and not again.training
    assert module_config(again) == module_config(cell)
    mine, theirs = cell.state_dict(), again.state_dict()
    assert list(theirs) == list(mine) and all(torch.equal(theirs[k], v) for k, v in mine.items())
    x = torch.randn(2, 5, 3)
    with torch.no_grad():
        want, want_state = dynamic_rnn(cell, x, sequence_length=[5, 3])
        got, got_state = dynamic_rnn(again, x, sequence_length=[5, 3])
    # F.relu reloads as its name, "relu" (torch.relu), which the engine may run on another (fused) path.
    tol = 1e-6 if name == "basic-rnn-torch-relu" else 0.0
    torch.testing.assert_close(got, want, rtol=0, atol=tol)
    for a, b in zip(rnnkit._structure.flatten(got_state), rnnkit._structure.flatten(want_state), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=tol)


def test_training_flags_and_dropout_options_survive(tmp_path):
    cell = DropoutWrapper(GRUCell(4, input_size=3), output_keep_prob=0.5, variational_recurrent=True)
    save(cell, tmp_path / "d.safetensors")
    again = load(tmp_path / "d.safetensors")
    assert again.training and again.output_keep_prob == 0.5 and again.variational_recurrent


def test_unbuilt_cell_reloads_unbuilt_and_builds_lazily(tmp_path):
    save(MultiRNNCell([BasicLSTMCell(4), GRUCell(3)]), tmp_path / "u.safetensors")
    again = load(tmp_path / "u.safetensors")
    assert not again.built and list(again.parameters()) == []
    out, _ = dynamic_rnn(again, torch.randn(2, 4, 7))
    assert tuple(out.shape) == (2, 4, 3) and again.cells[0].input_depth == 7


@pytest.mark.parametrize("case", ["bidirectional_lstm", "stack_bidirectional_lstm", "lstm_peephole_proj"])
def test_tf_cell_stack_round_trip_matches_tf(case, tmp_path):
    """A TF1 checkpoint loaded as rnnkit cells, saved and reloaded, still computes what TF1 computed."""
    meta = json.loads((TF_CKPT / case / "meta.json").read_text())
    options = {k: meta[k] for k in ("forget_bias", "cell_clip", "proj_clip") if k in meta}
    stack = load_tf_checkpoint(TF_CKPT / case, **options)
    save(stack, tmp_path / "stack.safetensors")
    again = load(tmp_path / "stack.safetensors")
    assert (again.topology, again.scope, again.multi_rnn_cell) == (stack.topology, stack.scope, stack.multi_rnn_cell)
    assert again.tf_variables().keys() == stack.tf_variables().keys()
    data = np.load(TF_CKPT / case / "expected.npz")
    with torch.no_grad():
        outputs, _ = again.run(
            torch.from_numpy(data["inputs"]), sequence_length=torch.from_numpy(data["sequence_length"])
        )
    torch.testing.assert_close(outputs, torch.from_numpy(data["outputs"]), rtol=0, atol=TOL)


def test_loading_leaves_the_global_random_stream_alone(tmp_path):
    save(rnnkit.LSTM(3, 8, num_layers=2), tmp_path / "l.safetensors")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load(tmp_path / "l.safetensors")
    assert torch.equal(torch.rand(3), expected)


def test_file_is_plain_safetensors_with_json_config(tmp_path):
    save(rnnkit.GRU(3, 4, reset_after=False), tmp_path / "g.safetensors")
    raw = (tmp_path / "g.safetensors").read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    config = json.loads(header["__metadata__"][CONFIG_KEY])
    assert config["class"] == "GRU" and config["args"]["reset_after"] is False
    assert sorted(k for k in header if k != "__metadata__") == sorted(rnnkit.GRU(3, 4).state_dict())


# -- what cannot be saved ---------------------------------------------------------------------------------------
class _MyLSTM(rnnkit.LSTM):
    pass


class _MyCell(BasicRNNCell):
    pass


@pytest.mark.parametrize(
    ("module", "match"),
    [
        (
            BasicRNNCell(4, activation=lambda x: x * 2, input_size=3),
            "activation '<lambda>' is not serialisable by name",
        ),
        (MultiRNNCell([GRUCell(4, activation=torch.nn.functional.softsign, input_size=3)]), "'softsign' is not serial"),
        (ResidualWrapper(GRUCell(3), residual_fn=lambda a, b: a - b), "residual_fn, a function that is not serial"),
        (DropoutWrapper(GRUCell(3), dropout_state_filter_visitor=lambda s: True), "custom dropout_state_filter"),
        (_MyLSTM(3, 4), "subclass of a recurrent layer"),
        (MultiRNNCell([_MyCell(3)]), "_MyCell"),
        (torch.nn.Linear(3, 4), "expected an rnnkit layer"),
        (rnnkit.GRU(3, 4), "parametrizations"),
    ],
    ids=[
        "lambda",
        "softsign",
        "residual_fn",
        "state_filter",
        "layer-subclass",
        "cell-subclass",
        "linear",
        "weight-norm",
    ],
)
def test_unserialisable_modules_are_refused(module, match, tmp_path):
    if match == "parametrizations":
        torch.nn.utils.parametrizations.weight_norm(module, "weight_hh_l0")
    with pytest.raises((ValueError, TypeError), match=match):
        save(module, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


# -- bad files --------------------------------------------------------------------------------------------------
def _saved(tmp_path) -> Path:
    path = tmp_path / "ok.safetensors"
    save(rnnkit.LSTM(3, 4), path)
    return path


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file"):
        load(tmp_path / "absent.safetensors")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (pickle.dumps({"weight": [1.0]}), "pickle"),
        (b"PK\x03\x04" + bytes(40), "zip archive"),
        (b"\x89HDF\r\n\x1a\n" + bytes(40), "HDF5"),
        (b"abc", "too short"),
        (struct.pack("<Q", 10**9) + b"{}", "truncated"),
    ],
    ids=["pickle", "zip", "hdf5", "short", "huge-header"],
)
def test_not_safetensors(content, match, tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        load(path)


def test_torch_save_file_is_refused(tmp_path):
    torch.save(rnnkit.LSTM(3, 4).state_dict(), tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="zip archive"):
        load(tmp_path / "w.safetensors")


def test_truncated_safetensors(tmp_path):
    path = _saved(tmp_path)
    raw = path.read_bytes()
    path.write_bytes(raw[:-20])
    with pytest.raises(ValueError, match="truncated|not a readable safetensors"):
        load(path)


def test_safetensors_without_rnnkit_config(tmp_path):
    save_file(rnnkit.LSTM(3, 4).state_dict(), tmp_path / "plain.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"without rnnkit's configuration \(metadata keys \['format'\]\)"):
        load(tmp_path / "plain.safetensors")


def _with_metadata(tmp_path, tensors, **metadata) -> Path:
    path = tmp_path / "m.safetensors"
    save_file(tensors, path, metadata={"format": "pt", **metadata})
    return path


def test_unknown_class_bad_json_and_newer_format(tmp_path):
    tensors = {"w": torch.zeros(2)}
    path = _with_metadata(tmp_path, tensors, **{CONFIG_KEY: json.dumps({"class": "Transformer", "args": {}})})
    with pytest.raises(ValueError, match="unknown class 'Transformer'"):
        load(path)
    path = _with_metadata(tmp_path, tensors, **{CONFIG_KEY: "{not json"})
    with pytest.raises(ValueError, match="not valid JSON"):
        load(path)
    path = _with_metadata(tmp_path, tensors, **{CONFIG_KEY: json.dumps({"args": {}})})
    with pytest.raises(ValueError, match="has no 'class'"):
        load(path)
    path = _with_metadata(tmp_path, tensors, **{CONFIG_KEY: json.dumps({"class": "GRU"}), "rnnkit.format": "99"})
    with pytest.raises(ValueError, match="format '99'"):
        load(path)


def test_tensors_that_do_not_fit_the_configuration(tmp_path):
    config = module_config(rnnkit.LSTM(3, 4))
    wrong = rnnkit.LSTM(3, 5).state_dict()  # hidden 5, config says 4
    path = _with_metadata(tmp_path, wrong, **{CONFIG_KEY: json.dumps(config)})
    with pytest.raises(
        ValueError, match=r"do not fit the configuration: weight_ih_l0: expected shape \(16, 3\), got \(20, 3\)"
    ):
        load(path)
    bad_args = {**config, "args": {**config["args"], "hidden_size": -1}}
    path = _with_metadata(tmp_path, wrong, **{CONFIG_KEY: json.dumps(bad_args)})
    with pytest.raises(ValueError, match="cannot rebuild the LSTM"):
        load(path)
