"""Hostile and damaged files: every reader fails with a ValueError naming the file, before allocating.

Each test builds its files in tmp_path: truncations and bit flips of real saved files and committed fixtures,
configurations declaring absurd sizes or nesting, zip bombs, HDF5 datasets declaring shapes they do not
store, TF checkpoint indexes (written here by a minimal LevelDB-table writer, checked first on a well-formed
table) with absurd shapes, sizes and offsets, pickles, FIFOs and symbolic links. The reference for "bounded"
is the 300 MB rule of issue 11: the size cases run in one subprocess whose peak resident memory
(``ru_maxrss``) may grow by at most 300 MB over its baseline after imports.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import rnnkit
from rnnkit.cli.conversion import main
from rnnkit.convert import CheckpointError, read_keras, read_tf_checkpoint
from rnnkit.convert._crc32c import crc32c, mask
from rnnkit.saving import CONFIG_KEY, load, module_config, save

FIXTURES = Path(__file__).parent / "fixtures"
KERAS = FIXTURES / "keras"
BUDGET_MB = 300


def _with_config(path: Path, config, tensors=None) -> Path:
    tensors = rnnkit.LSTM(3, 4).state_dict() if tensors is None else tensors
    text = config if isinstance(config, str) else json.dumps(config)
    save_file(tensors, path, metadata={"format": "pt", CONFIG_KEY: text})
    return path


def _lstm_config(**args) -> dict:
    config = module_config(rnnkit.LSTM(3, 4))
    return {**config, "args": {**config["args"], **args}}


def _raises_naming(path: Path, call, error=ValueError, match: str = ""):
    with pytest.raises(error, match=match) as info:
        call(path)
    assert str(path) in str(info.value), info.value
    return info.value


# -- rnnkit's safetensors files ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "match"),
    [
        ({"hidden_size": 10**9}, r"'hidden_size' = 1000000000: expected an integer in \[0, 16777216\]"),
        ({"hidden_size": 1e9}, r"'hidden_size' = 1000000000.0: expected an integer"),
        ({"hidden_size": "4"}, r"'hidden_size' = '4': expected an integer"),
        ({"hidden_size": True}, r"'hidden_size' = True: expected an integer"),
        ({"num_layers": 10**6}, r"'num_layers' = 1000000: expected an integer in \[0, 1024\]"),
        ({"hidden_size": 2**22}, r"weight_hh_l0: expected shape \(16777216, 4194304\), got \(16, 4\)"),
        ({"hidden_size": 2**24, "input_size": 2**24, "num_layers": 2}, r"missing weight_ih_l1 \(67108864, 16777216\)"),
        ({"dropout": [0.5]}, r"'dropout' is a list; expected a number"),
        ({"forget_bias": float("nan")}, r"'forget_bias' = nan: expected a finite number"),
    ],
    ids=["int-1e9", "float-1e9", "string", "bool", "layers", "2^22-vs-file", "2^24-2-layers", "list", "nan"],
)
def test_config_sizes_and_types_are_checked_before_building(tmp_path, args, match):
    path = _with_config(tmp_path / "big.safetensors", _lstm_config(**args))
    _raises_naming(path, load, match=match)


def test_config_structure(tmp_path):
    cell = module_config(rnnkit.MultiRNNCell([rnnkit.BasicLSTMCell(4, input_size=3)]))
    cases = {
        "list-args": ({**cell, "args": [1]}, "'args' must be an object, got list"),
        "cells-not-list": ({**cell, "cells": {"a": 1}}, "'cells' must be a list of cells, got dict"),
        "class-int": ({**cell, "cells": [{"class": 7}]}, "'class' must be a string, got int"),
        "cell-string": ({**cell, "cells": ["LSTM"]}, "expected an object with a 'class', got str"),
        "training": ({**cell, "training": "yes"}, "'training' must be true or false"),
        "too-many-cells": ({**cell, "cells": [{"class": "BasicRNNCell"}] * 2000}, "more than 1024 cells"),
    }
    for name, (config, match) in cases.items():
        path = _with_config(tmp_path / f"{name}.safetensors", config)
        _raises_naming(path, load, match=match)


def test_deeply_nested_config(tmp_path):
    deep = '{"class": "LSTM", "args": ' + "[" * 100_000 + "]" * 100_000 + "}"
    path = _with_config(tmp_path / "deep.safetensors", deep)
    _raises_naming(path, load, match="nests 100001 levels deep; a configuration is expected to nest at most 64")
    wrapped = {"class": "BasicRNNCell", "args": {"num_units": 4}, "input_depth": 3}
    for _ in range(70):  # 72 levels of JSON objects: within what json parses, beyond what a config needs
        wrapped = {"class": "ResidualWrapper", "args": {}, "cell": wrapped}
    path = _with_config(tmp_path / "wrapped.safetensors", wrapped)
    _raises_naming(path, load, match="nests 72 levels deep")


def test_garbage_config_json(tmp_path):
    path = _with_config(tmp_path / "garbage.safetensors", '{"class": "LSTM", "args": {nope')
    _raises_naming(path, load, match="the rnnkit configuration is not valid JSON")


def test_tensors_of_the_wrong_dtype_or_names(tmp_path):
    ints = {k: v.to(torch.int32) for k, v in rnnkit.LSTM(3, 4).state_dict().items()}
    path = _with_config(tmp_path / "ints.safetensors", _lstm_config(), ints)
    _raises_naming(path, load, match=r"weight_ih_l0: expected a floating-point dtype \(F16, BF16, F32, F64\), got I32")
    extra = {**rnnkit.LSTM(3, 4).state_dict(), "evil": torch.zeros(3)}
    path = _with_config(tmp_path / "extra.safetensors", _lstm_config(), extra)
    _raises_naming(path, load, match="unexpected evil")


def test_a_tfcellstack_with_foreign_tensors(tmp_path):
    from rnnkit.convert import load_tf_checkpoint

    stack = load_tf_checkpoint(FIXTURES / "tf_ckpt" / "multi_basic_lstm", forget_bias=1.0)
    save(stack, tmp_path / "s.safetensors")
    from safetensors.torch import load_file

    from rnnkit.saving._file import _read_header

    config, _, _ = _read_header(tmp_path / "s.safetensors")
    tensors = {**load_file(tmp_path / "s.safetensors"), "fw.9.kernel": torch.zeros(2, 2)}
    path = _with_config(tmp_path / "foreign.safetensors", config, tensors)
    _raises_naming(path, load, match=r"unexpected fw\.9\.kernel")


def test_truncated_and_bit_flipped_safetensors(tmp_path):
    good = tmp_path / "good.safetensors"
    save(rnnkit.GRU(3, 4, num_layers=2), good)
    raw = good.read_bytes()
    rng = random.Random(11)
    bad = tmp_path / "bad.safetensors"
    header_end = 8 + struct.unpack("<Q", raw[:8])[0]
    for k in range(60):
        data = bytearray(raw)
        if k % 2:
            data = data[: rng.randrange(len(raw))]
        else:  # flips in the header: its JSON, sizes, offsets (flips in tensor data are not detectable)
            for _ in range(rng.randrange(1, 4)):
                data[rng.randrange(header_end)] ^= 1 << rng.randrange(8)
        bad.write_bytes(bytes(data))
        try:
            module = load(bad)
        except ValueError as err:
            assert str(bad) in str(err), err
        else:  # a flip that left a valid file (e.g. in a JSON string's letter case) must still load whole
            assert isinstance(module, torch.nn.Module)


@pytest.mark.parametrize("kind", ["pickle", "fifo", "directory", "dangling", "loop", "device"])
def test_files_that_are_not_files(tmp_path, kind):
    path = tmp_path / "x.safetensors"
    if kind == "pickle":
        path.write_bytes(pickle.dumps({"weight": [1.0]}))
        _raises_naming(path, load, match="a Python pickle")
    elif kind == "fifo":
        os.mkfifo(path)  # opening it for reading would block forever
        _raises_naming(path, load, match="is a FIFO")
    elif kind == "directory":
        path.mkdir()
        _raises_naming(path, load, match="is a directory, expected a regular file")
    elif kind == "dangling":
        path.symlink_to(tmp_path / "absent")
        _raises_naming(path, load, FileNotFoundError, match="symbolic link to")
    elif kind == "loop":
        path.symlink_to(path)
        _raises_naming(path, load, FileNotFoundError, match="symbolic link to")
    else:
        if not Path("/dev/zero").exists():  # pragma: no cover - every Linux has it
            pytest.fail("no /dev/zero on this machine")
        path.symlink_to("/dev/zero")
        _raises_naming(path, load, match="is a device")


def test_a_symlink_to_a_good_file_loads(tmp_path):
    lstm = rnnkit.LSTM(3, 4).eval()
    save(lstm, tmp_path / "real.safetensors")
    (tmp_path / "link.safetensors").symlink_to(tmp_path / "real.safetensors")
    again = load(tmp_path / "link.safetensors")
    assert type(again) is rnnkit.LSTM and again.state_dict().keys() == lstm.state_dict().keys()
    for name, tensor in lstm.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], tensor, rtol=0, atol=0)


# -- Keras files -------------------------------------------------------------------------------------------------
def _keras_zip(path: Path, config: bytes | str, weights: bytes | None = None, deflate=False) -> Path:
    weights = (KERAS / "lstm.weights.h5").read_bytes() if weights is None else weights
    mode = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=mode) as archive:
        archive.writestr("metadata.json", "{}")
        archive.writestr("config.json", config)
        archive.writestr("model.weights.h5", weights)
    return path


def _fixture_config(name: str = "lstm") -> dict:
    with zipfile.ZipFile(KERAS / f"{name}.keras") as archive:
        return json.loads(archive.read("config.json"))


def test_keras_zip_bomb_and_ratio(tmp_path):
    bomb = _keras_zip(tmp_path / "bomb.keras", b" " * (100 << 20) + b"{}", deflate=True)
    assert bomb.stat().st_size < 1 << 20
    _raises_naming(bomb, read_keras, match=r"entry 'config.json' declares 104,857,602 bytes; at most 67,108,864")
    ratio = _keras_zip(tmp_path / "ratio.keras", b" " * (8 << 20) + json.dumps(_fixture_config()).encode(), None, True)
    _raises_naming(ratio, read_keras, match=r"entry 'config.json' inflates .* \(ratio [\d,]+, at most 100 accepted\)")


def test_keras_zip_whose_directory_lies(tmp_path):
    path = _keras_zip(tmp_path / "lies.keras", json.dumps(_fixture_config()) + " " * 5000, deflate=True)
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("config.json")
    raw = bytearray(path.read_bytes())
    declared = struct.pack("<I", info.file_size)
    smaller = struct.pack("<I", 100)
    assert raw.count(declared) >= 2
    path.write_bytes(bytes(raw).replace(declared, smaller))  # the local header and the directory both lie
    _raises_naming(path, read_keras, match="config.json")


def test_keras_archive_with_many_entries(tmp_path):
    path = tmp_path / "many.keras"
    with zipfile.ZipFile(path, "w") as archive:
        for k in range(5000):
            archive.writestr(f"e{k}", b"")
    _raises_naming(path, read_keras, match="a zip archive of 5,000 entries; a model archive is expected to hold at")


def test_keras_nested_and_garbage_configs(tmp_path):
    deep = _keras_zip(tmp_path / "deep.keras", "[" * 50_000 + "]" * 50_000)
    _raises_naming(deep, read_keras, match="its config.json nests 50000 levels deep")
    garbage = _keras_zip(tmp_path / "garbage.keras", b"\x00garbage{")
    _raises_naming(garbage, read_keras, match="its config.json is not valid JSON")
    (tmp_path / "config.json").write_bytes(b'{"class_name": "Sequential", "config": {"layers": [')
    config = tmp_path / "config.json"
    with pytest.raises(ValueError, match="is not valid JSON") as info:
        read_keras(KERAS / "lstm.weights.h5", config=config)
    assert str(config) in str(info.value)
    (tmp_path / "latin1.json").write_bytes(b'{"name": "caf\xe9"}')
    with pytest.raises(ValueError, match="not UTF-8") as info:
        read_keras(KERAS / "lstm.weights.h5", config=tmp_path / "latin1.json")
    assert "latin1.json" in str(info.value)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda c: c.update(config=[1]), "the config has no layer list"),
        (lambda c: c["config"]["layers"].append(7), "expected a layer object, got int"),
        (lambda c: c["config"]["layers"][-1]["config"].update(units=10**9), r"units = 1000000000: expected an int"),
        (lambda c: c["config"]["layers"][-1]["config"].update(units="4"), r"units = '4': expected an integer"),
        (lambda c: c["config"]["layers"][-1]["config"].update(use_bias="no"), "use_bias = 'no': expected true or"),
        (lambda c: c["config"]["layers"][-1].update(config=[]), "'config' must be an object, got list"),
        (lambda c: c["config"]["layers"][-1].update(name=["x"]), "'name' must be a string"),
    ],
    ids=["layers-list", "layer-int", "units-huge", "units-string", "bool", "config-list", "name-list"],
)
def test_keras_config_types(tmp_path, edit, match):
    config = _fixture_config()
    edit(config)
    path = _keras_zip(tmp_path / "edited.keras", json.dumps(config))
    _raises_naming(path, read_keras, match=match)


def _fake_weights(path: Path, shape, dtype="f4", write=False) -> Path:
    with h5py.File(path, "w") as f:
        store = f.create_group("layers/lstm/cell/vars")
        store.attrs["name"] = "lstm"
        for k, s in enumerate((shape, (4, 16), (16,))):
            data = f.create_dataset(f"layers/lstm/cell/vars/{k}", shape=s, dtype=dtype)
            if write or k:
                data[...] = 0
    return path


def test_hdf5_datasets_that_do_not_hold_their_shape(tmp_path):
    huge = _fake_weights(tmp_path / "huge.weights.h5", (100_000, 400_000))
    assert huge.stat().st_size < 1 << 20
    _raises_naming(huge, read_keras, match=r"declares shape \(100000, 400000\) \(160,000,000,000 bytes\) but stores 0")
    ints = _fake_weights(tmp_path / "ints.weights.h5", (3, 16), dtype="i4", write=True)
    _raises_naming(ints, read_keras, match="holds int32, expected floating-point weights")
    with h5py.File(tmp_path / "group.weights.h5", "w") as f:
        f.create_group("layers/lstm/cell/vars/0")
        f.create_group("layers/lstm/cell/vars/1")
    _raises_naming(tmp_path / "group.weights.h5", read_keras, match="is a Group, expected a dataset of weights")
    with h5py.File(tmp_path / "names.weights.h5", "w") as f:
        f.create_dataset("layers/lstm/cell/vars/kernel", data=np.zeros((3, 16), np.float32))
    _raises_naming(tmp_path / "names.weights.h5", read_keras, match=r"weights named \['kernel'\], expected 0..0")


@pytest.mark.parametrize("name", ["lstm.weights.h5", "bidirectional_lstm.keras", "functional_gru.keras"])
def test_damaged_keras_files(tmp_path, name):
    raw = (KERAS / name).read_bytes()
    rng = random.Random(5)
    bad = tmp_path / f"bad.{name.split('.', 1)[1]}"
    outcomes = set()
    for k in range(90):
        data = bytearray(raw)
        if k % 3 == 0:
            data = data[: rng.randrange(len(raw))]
        else:
            for _ in range(rng.randrange(1, 6)):
                data[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        bad.write_bytes(bytes(data))
        try:
            read_keras(bad)  # h5py's KeyError / OSError / RuntimeError must not escape
            outcomes.add("read")
        except ValueError as err:
            assert str(bad) in str(err), err
            outcomes.add("error")
    assert "error" in outcomes


# -- TF checkpoints ----------------------------------------------------------------------------------------------
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _common(a: bytes, b: bytes) -> int:
    """The length of the common prefix of ``a`` and ``b`` (binary search: slices compare in C)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if a[:mid] == b[:mid] else (lo, mid - 1)
    return lo


def _block(entries, prefix_compress=False) -> bytes:
    """A table block with one restart point; keys share their common prefix with the previous key if asked."""
    body, previous = bytearray(), b""
    for key, value in entries:
        shared = _common(key, previous) if prefix_compress else 0
        body += _varint(shared) + _varint(len(key) - shared) + _varint(len(value)) + key[shared:] + value
        previous = key
    return bytes(body) + struct.pack("<II", 0, 1)  # one restart point, at 0


def _table(entries, shared=False) -> bytes:
    """A LevelDB table as TF writes a checkpoint index: one data block, an empty metaindex, the index, footer."""
    out = bytearray()

    def put(block: bytes) -> bytes:
        handle = _varint(len(out)) + _varint(len(block))
        out.extend(block + b"\x00" + struct.pack("<I", mask(crc32c(block + b"\x00"))))
        return handle

    data = put(_block(entries, shared))
    meta = put(struct.pack("<II", 0, 1))  # an empty metaindex block
    index = put(_block([(entries[-1][0], data)]))
    footer = (meta + index).ljust(40, b"\x00") + struct.pack("<Q", 0xDB4775248B80FB57)
    return bytes(out + footer)


def _entry(shape, size, offset=0, dtype=1, crc=None) -> bytes:
    dims = b"".join(b"\x12" + _varint(len(d)) + d for d in (b"\x08" + _varint(n) for n in shape))
    proto = b"\x08" + _varint(dtype) + b"\x12" + _varint(len(dims)) + dims
    proto += b"\x18\x00" + b"\x20" + _varint(offset) + b"\x28" + _varint(size)
    return proto + (b"\x35" + struct.pack("<I", mask(crc)) if crc is not None else b"")


def _checkpoint(tmp_path: Path, entries, data: bytes, shared=False) -> Path:
    prefix = tmp_path / "model.ckpt"
    header = b"\x08\x01\x1a\x02\x08\x01"  # num_shards 1, version {producer 1}
    Path(f"{prefix}.index").write_bytes(_table([(b"", header), *entries], shared))
    Path(f"{prefix}.data-00000-of-00001").write_bytes(data)
    return prefix


def test_the_table_writer_makes_readable_checkpoints(tmp_path):
    values = np.arange(6, dtype=np.float32)
    prefix = _checkpoint(tmp_path, [(b"w", _entry((2, 3), 24, crc=crc32c(values.tobytes())))], values.tobytes())
    np.testing.assert_array_equal(read_tf_checkpoint(prefix)["w"], values.reshape(2, 3))


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        (_entry((2**32, 2**32), 24), r"'w' of shape \(4294967296, 4294967296\) and dtype float32 needs 73,786,"),
        (_entry((2**38,), 2**40), r"needs bytes \[0, 1099511627776\) of .* which has only 24 bytes"),
        (_entry((2, 3), 24, offset=2**62), r"needs bytes \[4611686018427387904, "),
        (_entry((10**12,), 100, dtype=7), r"dtype string needs at least 1,000,000,000,004 bytes, its entry gives 100"),
        (_entry((2, 3), 24, dtype=99), r"dtype DataType\(99\), not readable"),
    ],
    ids=["shape-overflow", "size-beyond-file", "offset-beyond-file", "strings", "dtype"],
)
def test_checkpoint_entries_that_lie(tmp_path, entry, match):
    prefix = _checkpoint(tmp_path, [(b"w", entry)], bytes(24))
    with pytest.raises(CheckpointError, match=match) as info:
        read_tf_checkpoint(prefix)
    assert str(prefix) in str(info.value)


def test_checkpoint_entry_of_the_wrong_wire_type(tmp_path):
    prefix = _checkpoint(tmp_path, [(b"w", b"\x0a\x03abc")], bytes(24))  # dtype as bytes
    with pytest.raises(CheckpointError, match=r"corrupted bundle entry b'w' \(field 1 holds 3 bytes where a number"):
        read_tf_checkpoint(prefix)


def test_prefix_compression_bomb(tmp_path):
    stem = b"v" * 60_000
    entries = [(stem + struct.pack(">H", k), _entry((1,), 4)) for k in range(1200)]  # 72 MB of keys in 3 MB
    prefix = _checkpoint(tmp_path, entries, bytes(4), shared=True)
    assert Path(f"{prefix}.index").stat().st_size < 1 << 20
    with pytest.raises(CheckpointError, match="expand past 524,288 entries or 67,108,864 bytes of keys") as info:
        read_tf_checkpoint(prefix)
    assert str(prefix) in str(info.value)


@pytest.mark.parametrize("which", ["index", "data-00000-of-00001"])
def test_damaged_checkpoints(tmp_path, which):
    import shutil

    folder = Path(shutil.copytree(FIXTURES / "tf_ckpt" / "gru", tmp_path / "ckpt"))
    target = folder / f"model.ckpt.{which}"
    raw = target.read_bytes()
    rng = random.Random(3)
    for k in range(80):
        data = bytearray(raw)
        if k % 2:
            data = data[: rng.randrange(len(raw))]
        else:
            for _ in range(rng.randrange(1, 5)):
                data[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        target.write_bytes(bytes(data))
        try:
            read_tf_checkpoint(folder / "model.ckpt")  # checksums on: a flip anywhere read must be caught
        except (CheckpointError, FileNotFoundError) as err:
            assert str(folder / "model.ckpt") in str(err), err


def test_huge_index_and_state_files(tmp_path):
    prefix = tmp_path / "model.ckpt"
    with open(f"{prefix}.index", "wb") as f:
        f.truncate(65 << 20)  # sparse: costs no disk
    with pytest.raises(CheckpointError, match=r"is 68,157,440 bytes; an index is expected to be at most 67,108,864"):
        read_tf_checkpoint(prefix)
    (tmp_path / "checkpoint").symlink_to("/dev/zero")
    with pytest.raises(ValueError, match="checkpoint"):
        read_tf_checkpoint(tmp_path)


# -- memory: the size cases in one subprocess ---------------------------------------------------------------------
_MEASURE = """
import resource, sys, json
import h5py
from rnnkit.convert import read_keras, read_tf_checkpoint
from rnnkit.saving import load
cases = json.loads(sys.argv[1])
readers = {"load": load, "keras": read_keras, "tf": read_tf_checkpoint}
read_keras(sys.argv[2])  # warm up the readers' own imports and buffers
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for reader, path in cases:
    try:
        readers[reader](path)
    except ValueError:
        pass
    else:
        raise SystemExit(f"{path} was read")
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
"""


def test_hostile_sizes_cost_bounded_memory(tmp_path):
    cases = [
        ("load", _with_config(tmp_path / "a.safetensors", _lstm_config(hidden_size=2**22))),
        ("load", _with_config(tmp_path / "b.safetensors", _lstm_config(hidden_size=2**24, input_size=2**24))),
        ("keras", _keras_zip(tmp_path / "bomb.keras", b" " * (100 << 20) + b"{}", deflate=True)),
        ("keras", _fake_weights(tmp_path / "huge.weights.h5", (100_000, 400_000))),
        ("tf", _checkpoint(tmp_path, [(b"w", _entry((2**38,), 2**40))], bytes(24))),
    ]
    stem = b"v" * 60_000
    entries = [(stem + struct.pack(">H", k), _entry((1,), 4)) for k in range(1200)]
    (tmp_path / "bomb").mkdir()
    cases.append(("tf", _checkpoint(tmp_path / "bomb", entries, bytes(4), shared=True)))
    argv = json.dumps([(reader, str(path)) for reader, path in cases])
    env = {**os.environ, "PYTHONPATH": str(Path(rnnkit.__file__).parents[1])}
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, argv, str(KERAS / "lstm.keras")], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) < BUDGET_MB, done.stdout


# -- rnnkit convert ------------------------------------------------------------------------------------------------
def _convert(capsys, *argv) -> tuple[int, str]:
    code = main(["convert", *map(str, argv)])
    return code, capsys.readouterr().err


def test_convert_pickled_module_error_is_one_clean_line(tmp_path, capsys):
    torch.save(torch.nn.LSTM(3, 4), tmp_path / "module.pt")
    code, err = _convert(capsys, tmp_path / "module.pt", tmp_path / "out.safetensors")
    assert code == 2 and err.count("\n") == 1
    assert "\x1b" not in err and all(c.isprintable() for c in err.rstrip("\n")), repr(err)
    assert "never unpickles" in err and "torch.nn.modules.rnn.LSTM" in err and str(tmp_path / "module.pt") in err


def test_convert_nested_checkpoint_hint_names_the_key_option(tmp_path, capsys):
    torch.save({"model": torch.nn.LSTM(3, 4).state_dict(), "epoch": 3}, tmp_path / "ckpt.pt")
    code, err = _convert(capsys, tmp_path / "ckpt.pt", tmp_path / "out.safetensors")
    assert code == 2 and "--key model" in err, err
    assert main(["convert", str(tmp_path / "ckpt.pt"), str(tmp_path / "out.safetensors"), "--key", "model"]) == 0
    capsys.readouterr()


def test_convert_keeps_an_existing_output_when_the_read_fails(tmp_path, capsys):
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"precious")
    bad = _with_config(tmp_path / "big.safetensors", _lstm_config(hidden_size=2**22))
    code, err = _convert(capsys, bad, out)
    assert code == 2 and str(bad) in err and "do not fit the configuration" in err
    bomb = _keras_zip(tmp_path / "bomb.keras", b" " * (100 << 20) + b"{}", deflate=True)
    code, err = _convert(capsys, bomb, out)
    assert code == 2 and "declares 104,857,602 bytes" in err
    assert out.read_bytes() == b"precious"


# -- ONNX ---------------------------------------------------------------------------------------------------------


def _exported_onnx(tmp_path):
    import rnnkit

    layer = rnnkit.LSTM(3, 4)
    path = tmp_path / "lstm.onnx"
    rnnkit.export_onnx(layer, path)
    return layer, path


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_onnx_damaged_files_name_the_file(tmp_path, damage):
    from rnnkit.convert import load_onnx

    _, path = _exported_onnx(tmp_path)
    data = path.read_bytes()
    path.write_bytes(b"\x0a\xff\xff\xff\xff\x0f" + bytes(64) if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"read_onnx: .*lstm\.onnx"):
        load_onnx(path)


@pytest.mark.parametrize("location", ["/etc/hostname", "../outside.bin", "missing.bin", "small.bin"])
def test_onnx_external_data_is_read_only_beside_the_model_and_within_its_bytes(tmp_path, location):
    """ONNX lets an initializer name a file to read its bytes from; onnx.load would follow any path."""
    import onnx
    from onnx.external_data_helper import set_external_data

    from rnnkit.convert import load_onnx

    _, path = _exported_onnx(tmp_path)
    model = onnx.load(path)
    (tmp_path / "small.bin").write_bytes(bytes(8))
    (tmp_path.parent / "outside.bin").write_bytes(bytes(1 << 16))
    tensor = model.graph.initializer[0]
    set_external_data(tensor, location=location, length=4 * int(np.prod(tensor.dims)))
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    onnx.save(model, path)
    error = FileNotFoundError if location == "missing.bin" else ValueError
    with pytest.raises(error, match=r"read_onnx: .*lstm\.onnx|read_onnx: no file"):
        load_onnx(path)


def test_onnx_fifo_is_refused(tmp_path):
    from rnnkit.convert import load_onnx

    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="FIFO"):
        load_onnx(fifo)
