"""The TF checkpoint reader (no TensorFlow): real Saver checkpoints from tests/fixtures/make_tf_checkpoints.py."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from rnnkit.convert import CheckpointError, TFCheckpointReader, list_tf_checkpoint, read_tf_checkpoint
from rnnkit.convert._crc32c import _raw_update, crc32c, mask, unmask

FIXTURES = Path(__file__).parent / "fixtures" / "tf_ckpt"
CASES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())
DATA = "model.ckpt.data-00000-of-00001"


def test_crc32c_known_values():
    # RFC 3720 (iSCSI) B.4 test vectors and the classic check value.
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E
    assert unmask(mask(0xE3069283)) == 0xE3069283


@pytest.mark.parametrize("n", [16384, 16385, 70001])
def test_crc32c_lanes_equal_bytewise(n):
    data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
    assert crc32c(data) == _raw_update(0xFFFFFFFF, data) ^ 0xFFFFFFFF
    assert crc32c(data[777:], crc32c(data[:777])) == crc32c(data)


@pytest.mark.parametrize("case", CASES)
def test_every_variable_has_tfs_shape(case):
    meta = json.loads((FIXTURES / case / "meta.json").read_text())
    variables = read_tf_checkpoint(FIXTURES / case)
    assert {k: list(v.shape) for k, v in variables.items()} == meta["variables"]
    listed = list_tf_checkpoint(FIXTURES / case / "model.ckpt")
    assert [e.name for e in listed] == sorted(meta["variables"])
    assert {e.name: list(e.shape) for e in listed} == meta["variables"]


def test_dtypes_and_values():
    folder = FIXTURES / "basic_rnn"
    v = read_tf_checkpoint(folder / "model.ckpt.index")
    assert v["extra/int32_var"].dtype == np.int32
    np.testing.assert_array_equal(v["extra/int32_var"], np.arange(6).reshape(2, 3))
    assert v["extra/float64_var"].dtype == np.float64
    np.testing.assert_array_equal(v["extra/float64_var"], np.linspace(-1, 1, 4))
    assert v["global_step"].dtype == np.int64 and v["global_step"].shape == () and v["global_step"] == 0
    assert list(v["extra/strings"]) == [b"rnnkit", b"", b"tf1"]
    assert v["rnn/basic_rnn_cell/kernel"].dtype == np.float32
    dtypes = {e.name: e.dtype for e in list_tf_checkpoint(folder)}
    assert dtypes["global_step"] == "int64" and dtypes["extra/strings"] == "string"


def test_path_forms_agree():
    folder = FIXTURES / "gru"
    forms = [folder, folder / "model.ckpt", folder / "model.ckpt.index", folder / DATA]
    results = [read_tf_checkpoint(p) for p in forms]
    for other in results[1:]:
        assert all(np.array_equal(results[0][k], other[k]) for k in results[0])
    reader = TFCheckpointReader(folder)
    assert "rnn/gru_cell/gates/kernel" in reader and reader.shape("rnn/gru_cell/gates/kernel") == (7, 8)
    with pytest.raises(KeyError, match="no variable 'rnn/gru_cell/kernel'"):
        reader.get_tensor("rnn/gru_cell/kernel")


@pytest.fixture
def ckpt_copy(tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(FIXTURES / "multi_basic_lstm", folder)
    return folder


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_corrupted_tensor_data_names_the_variable(ckpt_copy):
    reader = TFCheckpointReader(ckpt_copy)
    entry = reader._entries["rnn/multi_rnn_cell/cell_1/basic_lstm_cell/kernel"]
    _flip(ckpt_copy / DATA, entry.offset + 5)
    with pytest.raises(CheckpointError, match=r"checksum mismatch for variable 'rnn/multi_rnn_cell/cell_1/basic_lstm"):
        read_tf_checkpoint(ckpt_copy)
    # The checksum is what catches it: unchecked, the flipped value comes through.
    unchecked = read_tf_checkpoint(ckpt_copy, verify_checksums=False)
    original = read_tf_checkpoint(FIXTURES / "multi_basic_lstm")
    name = "rnn/multi_rnn_cell/cell_1/basic_lstm_cell/kernel"
    assert not np.array_equal(unchecked[name], original[name])


def test_truncated_data_file(ckpt_copy):
    data = ckpt_copy / DATA
    data.write_bytes(data.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=r"truncated: variable 'rnn/.*' needs bytes \[\d+, \d+\) .* has only"):
        read_tf_checkpoint(ckpt_copy)


def test_corrupted_index_block(ckpt_copy):
    _flip(ckpt_copy / "model.ckpt.index", 20)
    with pytest.raises(CheckpointError, match="checksum mismatch in the data block"):
        list_tf_checkpoint(ckpt_copy)


@pytest.mark.parametrize("keep", [0, 30, -1])
def test_truncated_index(ckpt_copy, keep):
    index = ckpt_copy / "model.ckpt.index"
    raw = index.read_bytes()
    index.write_bytes(raw[:keep] if keep >= 0 else raw[:-1])
    with pytest.raises(CheckpointError, match="truncated|bad magic"):
        read_tf_checkpoint(ckpt_copy)


def test_missing_files(ckpt_copy, tmp_path):
    os.remove(ckpt_copy / DATA)
    with pytest.raises(FileNotFoundError, match="data file .* is missing"):
        read_tf_checkpoint(ckpt_copy)
    assert len(list_tf_checkpoint(ckpt_copy)) == 4  # the index alone still lists
    with pytest.raises(FileNotFoundError, match="no index file"):
        read_tf_checkpoint(tmp_path / "nothing" / "model.ckpt")


def test_foreign_file(tmp_path):
    (tmp_path / "x.index").write_bytes(b"not a checkpoint at all, just some text, long enough for a footer!!")
    with pytest.raises(CheckpointError, match="not a TF checkpoint index"):
        read_tf_checkpoint(tmp_path / "x")
