"""Keras 3 files -> the torch layout, against the outputs Keras itself computed (no Keras imported).

Fixtures: tests/fixtures/keras/ (make_keras_fixtures.py, Keras 3.15 on TensorFlow): ``<case>.keras``,
``<case>.weights.h5`` and ``<case>.npz`` (input and Keras's output). Tolerance 1e-5.
"""

from __future__ import annotations

import pickle
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from rnnkit.convert import (
    KerasRecurrentLayer,
    keras_layer_to_torch,
    keras_layers_to_torch,
    keras_to_torch,
    read_keras,
    torch_to_cells,
    torch_to_keras,
)

FIXTURES = Path(__file__).parent / "fixtures" / "keras"
TORCH_NN_CASES = [
    "lstm",
    "gru_reset_after",
    "simple_rnn",
    "simple_rnn_relu_last",
    "bidirectional_lstm",
    "stacked_lstm",
    "stacked_bidirectional_gru",
]
TF_GRU_CASES = ["gru_reset_before", "functional_gru"]
TOL = 1e-5


def _expected(case):
    data = np.load(FIXTURES / f"{case}.npz")
    return torch.from_numpy(data["inputs"]), torch.from_numpy(data["outputs"])


def _run_torch_nn(state_dict, config, x):
    module = config.torch_nn_module(batch_first=True)
    module.load_state_dict(state_dict)
    return module(x)[0]


@pytest.mark.parametrize("case", TORCH_NN_CASES)
@pytest.mark.parametrize("suffix", [".keras", ".weights.h5"])
def test_keras_into_torch_nn(case, suffix):
    x, want = _expected(case)
    config_source = FIXTURES / f"{case}.keras" if suffix == ".weights.h5" else None
    state_dict, config = keras_to_torch(FIXTURES / f"{case}{suffix}", target="torch.nn", config=config_source)
    got = _run_torch_nn(state_dict, config, x)
    if want.dim() == 2:  # return_sequences=False: Keras returns the last step
        got = got[:, -1]
    torch.testing.assert_close(got, want, rtol=0, atol=TOL)


def test_bare_weights_file_infers_sizes():
    """Without a config, kinds come from group names and sizes from shapes; activations are Keras's defaults."""
    for case in ("stacked_lstm", "stacked_bidirectional_gru", "gru_reset_before"):
        from_archive = keras_to_torch(FIXTURES / f"{case}.keras")
        inferred = keras_to_torch(FIXTURES / f"{case}.weights.h5")
        assert inferred[1] == from_archive[1]
        assert all(torch.equal(inferred[0][k], v) for k, v in from_archive[0].items())
    # The relu of this SimpleRNN is only in the config: inferred as tanh, right with config=.
    assert keras_to_torch(FIXTURES / "simple_rnn_relu_last.weights.h5")[1].nonlinearity == "tanh"
    assert keras_to_torch(FIXTURES / "simple_rnn_relu_last.keras")[1].nonlinearity == "relu"


@pytest.mark.parametrize("case", TF_GRU_CASES)
def test_reset_before_gru_is_tfs_gru(case):
    """Keras GRU(reset_after=False) is TF1's GRUCell: refused by torch.nn, exact as rnnkit cells."""
    x, want = _expected(case)
    with pytest.raises(ValueError, match="reset_after=False"):
        keras_to_torch(FIXTURES / f"{case}.keras", target="torch.nn")
    state_dict, config = keras_to_torch(FIXTURES / f"{case}.keras")
    assert config.mode == "GRU" and not config.reset_after
    stack = torch_to_cells(state_dict, config)
    assert type(stack.cell).__name__ == "GRUCell"
    torch.testing.assert_close(stack.run(x)[0], want, rtol=0, atol=TOL)


@pytest.mark.parametrize("case", TORCH_NN_CASES + TF_GRU_CASES)
def test_keras_torch_keras_round_trip_is_exact(case):
    layers = read_keras(FIXTURES / f"{case}.keras")
    state_dict, config = keras_layers_to_torch(layers)
    back = torch_to_keras(state_dict, config)
    assert [b.class_name for b in back] == [a.class_name for a in layers]
    for a, b in zip(layers, back, strict=True):
        assert len(a.weights) == len(b.weights)
        for wa, wb in zip(a.weights, b.weights, strict=True):
            np.testing.assert_array_equal(wb.numpy(), wa)
        # The configs written back read again as the same torch layer.
        again, again_config = keras_layer_to_torch(b)
        assert again_config.mode == config.mode and again_config.reset_after == config.reset_after


def test_layer_names_and_order():
    layers = read_keras(FIXTURES / "stacked_lstm.keras")
    assert [layer.class_name for layer in layers] == ["LSTM", "LSTM"]
    assert [w.shape for w in layers[1].weights] == [(4, 16), (4, 16), (16,)]
    only_first = read_keras(FIXTURES / "stacked_lstm.keras", layer_names=[layers[0].name])
    assert [layer.name for layer in only_first] == [layers[0].name]


def test_non_recurrent_layer_is_refused():
    with pytest.raises(ValueError, match=r"layer 'dense\w*' \(Dense\) is not a recurrent layer"):
        read_keras(FIXTURES / "dense.keras")
    with pytest.raises(ValueError, match="is a Dense, not a recurrent layer"):
        keras_layer_to_torch(KerasRecurrentLayer("head", "Dense", {"units": 2}, [np.zeros((3, 2))]))


def test_pickle_where_weights_were_expected(tmp_path):
    path = tmp_path / "model.weights.h5"
    path.write_bytes(pickle.dumps({"kernel": np.zeros((3, 16))}))
    with pytest.raises(ValueError, match="is a Python pickle, not Keras weights"):
        read_keras(path)
    torch_file = tmp_path / "model.keras"
    torch.save(torch.nn.LSTM(3, 4).state_dict(), torch_file)
    with pytest.raises(ValueError, match="torch.save archive"):
        read_keras(torch_file)
    # A .keras archive whose weights member is a pickle.
    archive = tmp_path / "evil.keras"
    with zipfile.ZipFile(FIXTURES / "lstm.keras") as src, zipfile.ZipFile(archive, "w") as dst:
        dst.writestr("config.json", src.read("config.json"))
        dst.writestr("model.weights.h5", pickle.dumps([1, 2, 3]))
    with pytest.raises(ValueError, match=r"model.weights.h5 is a Python pickle"):
        read_keras(archive)


def test_missing_weight_is_named(tmp_path):
    path = tmp_path / "lstm.weights.h5"
    shutil.copy(FIXTURES / "stacked_lstm.weights.h5", path)
    with h5py.File(path, "r+") as f:
        del f["layers/lstm_1/cell/vars/2"]
    layers = read_keras(path, config=FIXTURES / "stacked_lstm.keras")
    with pytest.raises(ValueError, match=r"layer 'lstm_\d+'.*missing weight bias \(expected shape \(16,\)\)"):
        keras_layers_to_torch(layers)
    with h5py.File(path, "r+") as f:
        del f["layers/lstm_1"]
    with pytest.raises(ValueError, match=r"missing weights \(no group layers/lstm_1"):
        read_keras(path, config=FIXTURES / "stacked_lstm.keras")


def test_wrong_weight_shape_is_named():
    layer = read_keras(FIXTURES / "lstm.keras")[0]
    layer.weights[1] = np.zeros((4, 12), np.float32)
    with pytest.raises(ValueError, match=r"recurrent_kernel has shape \(4, 12\), expected \(4, 16\)"):
        keras_layer_to_torch(layer)


def test_unstackable_layers_are_refused():
    lstm = read_keras(FIXTURES / "lstm.keras")[0]
    gru = read_keras(FIXTURES / "gru_reset_after.keras")[0]
    with pytest.raises(ValueError, match="does not continue a stack"):
        keras_layers_to_torch([lstm, gru])
    last = read_keras(FIXTURES / "simple_rnn_relu_last.keras")[0]
    with pytest.raises(ValueError, match="return_sequences=False"):
        keras_layers_to_torch([last, last])


def test_options_torch_lacks_are_refused():
    layer = read_keras(FIXTURES / "lstm.keras")[0]
    for key, value, reason in [
        ("recurrent_activation", "hard_sigmoid", "recurrent_activation='hard_sigmoid'"),
        ("activation", "relu", "activation='relu'"),
        ("go_backwards", True, "go_backwards=True"),
    ]:
        changed = KerasRecurrentLayer(layer.name, layer.class_name, {**layer.config, key: value}, layer.weights)
        with pytest.raises(ValueError, match=reason):
            keras_layer_to_torch(changed)
    bidi = read_keras(FIXTURES / "bidirectional_lstm.keras")[0]
    summed = KerasRecurrentLayer(bidi.name, bidi.class_name, {**bidi.config, "merge_mode": "sum"}, bidi.weights)
    with pytest.raises(ValueError, match="merge_mode='sum'"):
        keras_layer_to_torch(summed)
