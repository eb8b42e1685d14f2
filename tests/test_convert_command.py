"""``rnnkit convert SRC DST`` on the committed TF1 checkpoints and Keras files, against what TF1 and Keras computed.

References: tests/fixtures/tf_ckpt/<case>/expected.npz (TF 2.21 compat.v1 dynamic_rnn / bidirectional runners with
sequence_length) and tests/fixtures/keras/<case>.npz (Keras 3.15), tolerance 1e-5; the written files are read back
by torch.nn itself (``torch.load(weights_only=True)`` into ``torch.nn.LSTM``), by onnxruntime, and by
``rnnkit.convert.load``. Bad input exits with code 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkit
from rnnkit.cli.conversion import add_subparser, detect_format, main
from rnnkit.saving import load

FIXTURES = Path(__file__).parent / "fixtures"
TF_CKPT = FIXTURES / "tf_ckpt"
KERAS = FIXTURES / "keras"
TOL = 1e-5


def _convert(capsys, *argv) -> tuple[int, str, str]:
    code = main(["convert", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _tf_expected(case: str):
    data = np.load(TF_CKPT / case / "expected.npz")
    return {k: torch.from_numpy(v) for k, v in data.items()}


def _keras_expected(case: str):
    data = np.load(KERAS / f"{case}.npz")
    return torch.from_numpy(data["inputs"]), torch.from_numpy(data["outputs"])


# -- Keras ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "case", ["lstm", "stacked_bidirectional_gru", "gru_reset_before", "functional_gru", "simple_rnn_relu_last"]
)
def test_keras_to_safetensors_reloads_and_matches_keras(case, capsys, tmp_path):
    code, out, err = _convert(capsys, KERAS / f"{case}.keras", tmp_path / "m.safetensors")
    assert code == 0, err
    layer = load(tmp_path / "m.safetensors")
    assert layer.batch_first and f"rnnkit.{type(layer).__name__}(" in out
    assert f"{sum(p.numel() for p in layer.parameters()):,} parameters" in out
    x, want = _keras_expected(case)
    with torch.no_grad():
        got = layer(x)[0]
    if want.dim() == 2:  # return_sequences=False: Keras gives the last step
        got = got[:, -1]
    torch.testing.assert_close(got, want, rtol=0, atol=TOL)


def test_keras_weights_file_to_torch_nn(capsys, tmp_path):
    """A bare .weights.h5 (with --keras-config for the exact options) into a file torch.nn itself loads."""
    dst = tmp_path / "lstm.pt"
    code, out, err = _convert(
        capsys, KERAS / "stacked_lstm.weights.h5", dst, "--keras-config", KERAS / "stacked_lstm.keras"
    )
    assert code == 0, err
    assert "torch.nn.LSTM(input_size=3, hidden_size=4, num_layers=2" in out
    lstm = torch.nn.LSTM(3, 4, num_layers=2, batch_first=True)
    lstm.load_state_dict(torch.load(dst, weights_only=True))
    x, want = _keras_expected("stacked_lstm")
    with torch.no_grad():
        torch.testing.assert_close(lstm(x)[0], want, rtol=0, atol=TOL)


# -- TF1 checkpoints --------------------------------------------------------------------------------------------
def test_tf_checkpoint_to_torch_nn_state_dict(capsys, tmp_path):
    """MultiRNNCell of BasicLSTMCells (forget_bias 1.0, folded) -> a torch.nn.LSTM state dict, run with packing."""
    code, out, err = _convert(capsys, TF_CKPT / "multi_basic_lstm", tmp_path / "lstm.pt")
    assert code == 0, err
    assert "forget_bias=1.0 assumed" in out and "304 parameters" in out  # 4*4*(3+4) + 2*16 + 4*4*(4+4) + 2*16
    lstm = torch.nn.LSTM(3, 4, num_layers=2, batch_first=True)
    lstm.load_state_dict(torch.load(tmp_path / "lstm.pt", weights_only=True))
    e = _tf_expected("multi_basic_lstm")
    packed = pack_padded_sequence(e["inputs"], e["sequence_length"], batch_first=True, enforce_sorted=False)
    with torch.no_grad():
        out_packed, (h_n, c_n) = lstm(packed)
    outputs, _ = pad_packed_sequence(out_packed, batch_first=True, total_length=e["inputs"].shape[1])
    torch.testing.assert_close(outputs, e["outputs"], rtol=0, atol=TOL)
    for k in range(2):
        torch.testing.assert_close(h_n[k], e[f"state/{k}/h"], rtol=0, atol=TOL)
        torch.testing.assert_close(c_n[k], e[f"state/{k}/c"], rtol=0, atol=TOL)


def test_tf_stack_bidirectional_to_onnx_with_sequence_lens(capsys, tmp_path):
    code, out, err = _convert(capsys, TF_CKPT / "stack_bidirectional_lstm", tmp_path / "m.onnx", "--sequence-lens")
    assert code == 0, err
    assert "LSTM ops" in out and "sequence_lens" in out
    e = _tf_expected("stack_bidirectional_lstm")
    batch = e["inputs"].shape[0]
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    feeds = {
        "input": e["inputs"].numpy(),
        "h_0": np.zeros((4, batch, 4), np.float32),
        "c_0": np.zeros((4, batch, 4), np.float32),
        "sequence_lens": e["sequence_length"].numpy().astype(np.int32),
    }
    outputs, h_n, c_n = (torch.from_numpy(a) for a in session.run(None, feeds))
    torch.testing.assert_close(outputs, e["outputs"], rtol=0, atol=TOL)
    for k in range(2):
        for d, side in enumerate(("fw", "bw")):
            torch.testing.assert_close(h_n[2 * k + d], e[f"state/{side}/{k}/h"], rtol=0, atol=TOL)
            torch.testing.assert_close(c_n[2 * k + d], e[f"state/{side}/{k}/c"], rtol=0, atol=TOL)


@pytest.mark.parametrize("as_kind", ["layer", "cells"])
def test_tf_gru_to_safetensors(as_kind, capsys, tmp_path):
    code, out, err = _convert(capsys, TF_CKPT / "gru", tmp_path / "gru.safetensors", "--as", as_kind)
    assert code == 0, err
    assert "forget_bias" not in out  # a GRU has none to assume
    module = load(tmp_path / "gru.safetensors")
    e = _tf_expected("gru")
    with torch.no_grad():
        if as_kind == "layer":
            assert type(module) is rnnkit.GRU and not module.reset_after
            outputs, h_n = module(e["inputs"], lengths=e["sequence_length"])
            state = h_n[0]
        else:
            assert type(module.cell).__name__ == "GRUCell"
            outputs, state = module.run(e["inputs"], sequence_length=e["sequence_length"])
    torch.testing.assert_close(outputs, e["outputs"], rtol=0, atol=TOL)
    torch.testing.assert_close(state, e["state"], rtol=0, atol=TOL)


def test_tf_cells_no_layer_expresses_stay_cells(capsys, tmp_path):
    """proj_clip exists in no torch-layout layer: kept as TF-style cells in .safetensors, refused for ONNX."""
    meta = json.loads((TF_CKPT / "lstm_peephole_proj" / "meta.json").read_text())
    options = ["--forget-bias", meta["forget_bias"], "--cell-clip", meta["cell_clip"], "--proj-clip", meta["proj_clip"]]
    src = TF_CKPT / "lstm_peephole_proj" / "model.ckpt"
    code, out, err = _convert(capsys, src, tmp_path / "cells.safetensors", *options)
    assert code == 0, err
    assert "kept as TF-style cells" in out and "proj_clip=0.4" in out and "LSTMCell(num_units=5)" in out
    stack = load(tmp_path / "cells.safetensors")
    e = _tf_expected("lstm_peephole_proj")
    with torch.no_grad():
        outputs, state = stack.run(e["inputs"], sequence_length=e["sequence_length"])
    torch.testing.assert_close(outputs, e["outputs"], rtol=0, atol=TOL)
    torch.testing.assert_close(state.c, e["state/c"], rtol=0, atol=TOL)
    code, out, err = _convert(capsys, src, tmp_path / "m.onnx", *options)
    assert code == 2 and "needs an RNN/LSTM/GRU layer" in err and "proj_clip" in err


# -- torch, safetensors and ONNX sources ---------------------------------------------------------------------------
def test_torch_state_dict_through_safetensors_and_onnx(capsys, tmp_path):
    torch.manual_seed(3)
    gru = torch.nn.GRU(3, 5, num_layers=2, bidirectional=True).eval()
    torch.save(gru.state_dict(), tmp_path / "gru.pt")
    code, out, err = _convert(
        capsys, tmp_path / "gru.pt", tmp_path / "gru.safetensors", "--mode", "gru", "--hidden-size", 5
    )
    assert code == 0, err
    assert f"{sum(p.numel() for p in gru.parameters()):,} parameters" in out
    layer = load(tmp_path / "gru.safetensors")
    assert all(torch.equal(layer.state_dict()[k], v) for k, v in gru.state_dict().items())
    code, out, err = _convert(capsys, tmp_path / "gru.safetensors", tmp_path / "gru.onnx", "--batch-first")
    assert code == 0, err
    x = torch.randn(2, 6, 3)  # batch first, as asked
    session = ort.InferenceSession(str(tmp_path / "gru.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy(), "h_0": np.zeros((4, 2, 5), np.float32)})
    with torch.no_grad():
        want = gru(x.transpose(0, 1))[0].transpose(0, 1)
    torch.testing.assert_close(torch.from_numpy(got[0]), want, rtol=0, atol=TOL)
    # ... and back from ONNX into torch.nn's layout, exactly
    code, out, err = _convert(capsys, tmp_path / "gru.onnx", tmp_path / "back.pt")
    assert code == 0, err
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    assert all(torch.equal(back[k], v) for k, v in gru.state_dict().items())


def test_rnnkit_options_to_pt_fold_or_refuse(capsys, tmp_path):
    lstm = rnnkit.LSTM(3, 4, forget_bias=1.0).eval()
    rnnkit.saving.save(lstm, tmp_path / "fb.safetensors")
    code, out, err = _convert(capsys, tmp_path / "fb.safetensors", tmp_path / "fb.pt")
    assert code == 0, err
    torch_lstm = torch.nn.LSTM(3, 4)
    torch_lstm.load_state_dict(torch.load(tmp_path / "fb.pt", weights_only=True))
    x = torch.randn(5, 2, 3)
    with torch.no_grad():
        torch.testing.assert_close(torch_lstm(x)[0], lstm(x)[0], rtol=0, atol=TOL)
    rnnkit.saving.save(rnnkit.LSTM(3, 4, peepholes=True), tmp_path / "p.safetensors")
    code, out, err = _convert(capsys, tmp_path / "p.safetensors", tmp_path / "p.pt")
    assert code == 2 and "no torch.nn.LSTM computes this model: peepholes" in err
    assert not (tmp_path / "p.pt").exists()


# -- the command's errors -------------------------------------------------------------------------------------------
@pytest.fixture
def ckpt_copy(tmp_path):
    return Path(shutil.copytree(TF_CKPT / "multi_basic_lstm", tmp_path / "ckpt"))


def _fails(capsys, *argv, match: str) -> None:
    code, out, err = _convert(capsys, *argv)
    assert code == 2, (out, err)
    assert err.startswith("rnnkit convert: error: ") and err.count("\n") == 1, err
    assert match in err, err


def test_error_exits(capsys, tmp_path, ckpt_copy):
    torch.save(rnnkit.LSTM(3, 4).state_dict(), tmp_path / "ok.pt")
    _fails(capsys, tmp_path / "model.xyz", tmp_path / "a.pt", match="cannot tell the format of")
    _fails(capsys, tmp_path / "ok.pt", tmp_path / "a.xyz", match="pass --to")
    _fails(capsys, tmp_path / "ok.pt", tmp_path / "a.keras", match="writing Keras 3 archive files is not supported")
    _fails(capsys, tmp_path / "ok.pt", tmp_path / "ok.pt", match="same file")
    _fails(capsys, tmp_path / "absent.pt", tmp_path / "a.safetensors", match="no such file")
    _fails(capsys, tmp_path / "ok.pt", tmp_path / "a.onnx", "--hidden-size", 7, match="--hidden-size 7 does not match")
    _fails(capsys, KERAS / "gru_reset_before.keras", tmp_path / "g.pt", match="no torch.nn.GRU computes this model")
    _fails(capsys, KERAS / "dense.keras", tmp_path / "d.pt", match="'dense' (Dense) is not a recurrent layer")
    (tmp_path / "evil.pt").write_bytes(pickle.dumps(argparse.Namespace(x=1)))
    _fails(capsys, tmp_path / "evil.pt", tmp_path / "e.safetensors", match="never unpickles")
    (tmp_path / "fake.safetensors").write_bytes(b"\x00" * 64)
    _fails(capsys, tmp_path / "fake.safetensors", tmp_path / "f.pt", match="not a safetensors file")
    data = ckpt_copy / "model.ckpt.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:-10])
    _fails(capsys, ckpt_copy, tmp_path / "t.pt", match="truncated")
    _fails(capsys, tmp_path / "nothing" / "model.ckpt", tmp_path / "n.pt", "--from", "tf", match="no index file")
    assert not list(tmp_path.glob("[adgetfn].*"))  # nothing written by a failed conversion


def test_formats_from_names(tmp_path):
    assert detect_format("m.weights.h5", reading=True) == "keras-weights"
    assert detect_format("M.KERAS", reading=True) == "keras"
    assert detect_format(TF_CKPT / "gru", reading=True) == "tf"
    assert detect_format(TF_CKPT / "gru" / "model.ckpt", reading=True) == "tf"
    assert detect_format(TF_CKPT / "gru" / "model.ckpt.index", reading=True) == "tf"
    assert detect_format("x.pth", reading=False) == "torch"


def test_registers_on_another_parser(capsys, tmp_path):
    """rnnkit.cli registers the command with add_subparser; args.run(args) returns the exit code."""
    parser = argparse.ArgumentParser(prog="rnnkit")
    add_subparser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["convert", str(KERAS / "simple_rnn.keras"), str(tmp_path / "s.onnx"), "--opset", "18"])
    assert args.run(args) == 0
    assert "ONNX opset 18, RNN ops" in capsys.readouterr().out


def test_a_write_that_fails_midway_leaves_the_existing_file(tmp_path, monkeypatch):
    """rnnkit convert writes beside DST and renames once whole: a failed write loses nothing already written."""
    import torch

    import rnnkit
    from rnnkit.cli import conversion as _command

    src, dst = tmp_path / "a.safetensors", tmp_path / "b.pt"
    rnnkit.save(rnnkit.LSTM(3, 4), src)
    dst.write_bytes(b"precious")

    def broken_save(obj, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    assert _command.main(["convert", str(src), str(dst)]) == _command.EXIT_USAGE
    assert dst.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.pt"]
