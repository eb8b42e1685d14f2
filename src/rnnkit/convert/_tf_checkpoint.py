"""Read TF checkpoints (tensor bundles, as written by ``tf.compat.v1.train.Saver``) without TensorFlow.

A checkpoint ``PREFIX`` is ``PREFIX.index`` plus ``PREFIX.data-00000-of-0000N`` shards:

* ``.index`` is a sorted table (see ``_sstable``) whose empty key holds a ``BundleHeaderProto``
  (``num_shards`` = 1, ``endianness`` = 2, ``version`` = 3) and whose other keys are variable
  names mapped to ``BundleEntryProto`` (``dtype`` = 1, ``shape`` = 2, ``shard_id`` = 3,
  ``offset`` = 4, ``size`` = 5, ``crc32c`` = 6 (masked, fixed32), ``slices`` = 7);
* a ``.data`` shard holds the raw tensors: ``size`` bytes at ``offset``, C order, the header's byte
  order; a string tensor is ``varint64`` lengths, a masked CRC-32C (4 bytes) of those lengths as
  little-endian ``uint32``, then the bytes; the entry's CRC covers all three.

Example::

    variables = read_tf_checkpoint("model/model.ckpt")       # {name: np.ndarray}
    [(e.name, e.shape) for e in list_tf_checkpoint("model")]  # a folder with a `checkpoint` file works too
"""

from __future__ import annotations

import math
import os
import re
import struct
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ._crc32c import crc32c, mask, unmask
from ._sstable import TableError, read_table
from ._wire import WireError, as_signed64, iter_fields, read_varint
from .guards import read_bounded, regular_file

__all__ = ["TFCheckpointReader", "CheckpointEntry", "read_tf_checkpoint", "list_tf_checkpoint", "CheckpointError"]


class CheckpointError(ValueError):
    """A TF checkpoint that is truncated, corrupted, or holds something rnnkit cannot read."""


# TF's DataType enum (tensorflow/core/framework/types.proto) -> NumPy dtype (little endian).
_DTYPES: dict[int, tuple[str, Any]] = {
    1: ("float32", np.float32),
    2: ("float64", np.float64),
    3: ("int32", np.int32),
    4: ("uint8", np.uint8),
    5: ("int16", np.int16),
    6: ("int8", np.int8),
    7: ("string", object),
    8: ("complex64", np.complex64),
    9: ("int64", np.int64),
    10: ("bool", np.bool_),
    14: ("bfloat16", np.uint16),  # widened to float32 on read
    17: ("uint16", np.uint16),
    18: ("complex128", np.complex128),
    19: ("float16", np.float16),
    22: ("uint32", np.uint32),
    23: ("uint64", np.uint64),
}
_DT_STRING, _DT_BFLOAT16 = 7, 14
MAX_INDEX_BYTES = 64 << 20  # an index holds ~100 bytes per variable: 64 MiB is over half a million variables
_MAX_STATE_BYTES = 1 << 20  # TF's `checkpoint` state file: a few lines of text
_MAX_RANK = 254  # TF's TensorShape limit


class CheckpointEntry(NamedTuple):
    """One tensor of a checkpoint: its ``name``, TF ``dtype`` name and ``shape``."""

    name: str
    dtype: str
    shape: tuple[int, ...]


class _Entry(NamedTuple):
    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int | None
    sliced: bool


def _number(field: int, wire_type: int, value: int | bytes) -> int:
    """A numeric field's value; a field of another wire type is a damaged message, not a number."""
    if wire_type not in (0, 1, 5):
        raise WireError(f"field {field} holds {len(value)} bytes where a number belongs")
    return value


def _message(field: int, wire_type: int, value: int | bytes) -> bytes:
    if wire_type != 2:
        raise WireError(f"field {field} holds a number where a message belongs")
    return value


def _parse_shape(buf: bytes) -> tuple[int, ...]:
    dims = []
    for field, wire_type, value in iter_fields(buf):
        if field == 2:  # Dim { int64 size = 1; string name = 2; }
            size = 0
            for f, w, v in iter_fields(_message(field, wire_type, value)):
                if f == 1:
                    size = as_signed64(_number(f, w, v))
            dims.append(size)
        elif field == 3 and value:
            raise CheckpointError("tensor of unknown rank")
    if len(dims) > _MAX_RANK:
        raise CheckpointError(f"a shape of rank {len(dims)}, more than TF's {_MAX_RANK}")
    return tuple(dims)


def _parse_entry(buf: bytes) -> _Entry:
    fields = {"dtype": 0, "shape": (), "shard_id": 0, "offset": 0, "size": 0, "crc32c": None, "sliced": False}
    for field, wire_type, value in iter_fields(buf):
        if field == 1:
            fields["dtype"] = _number(field, wire_type, value)
        elif field == 2:
            fields["shape"] = _parse_shape(_message(field, wire_type, value))
        elif field == 3:
            fields["shard_id"] = _number(field, wire_type, value)
        elif field == 4:
            fields["offset"] = as_signed64(_number(field, wire_type, value))
        elif field == 5:
            fields["size"] = as_signed64(_number(field, wire_type, value))
        elif field == 6:
            fields["crc32c"] = _number(field, wire_type, value)
        elif field == 7:
            fields["sliced"] = True
    return _Entry(**fields)


def _resolve_prefix(path: str | os.PathLike) -> Path:
    """The checkpoint prefix for a prefix, a ``.index``/``.data-*`` file, or a folder with a ``checkpoint`` file."""
    p = Path(path)
    if p.is_dir():
        state = p / "checkpoint"
        if not state.is_file():
            indexes = sorted(p.glob("*.index"))
            if len(indexes) == 1:
                return indexes[0].with_suffix("")
            raise FileNotFoundError(
                f"TF checkpoint: folder {str(p)!r} has no 'checkpoint' file and "
                f"{len(indexes)} '.index' files; pass the checkpoint prefix (e.g. 'model.ckpt')"
            )
        text = read_bounded(state, _MAX_STATE_BYTES, "TF checkpoint", "TF's state file", CheckpointError)
        match = re.search(r'^model_checkpoint_path:\s*"((?:[^"\\]|\\.)*)"', text.decode("utf-8", "replace"), re.M)
        if not match:
            raise CheckpointError(f"TF checkpoint: {str(state)!r} names no model_checkpoint_path")
        named = Path(re.sub(r"\\(.)", r"\1", match.group(1)))  # text-proto escapes: \" and \\
        prefix = named if named.is_absolute() else p / named
        if not Path(f"{prefix}.index").is_file() and named.is_absolute():
            prefix = p / named.name  # the folder was moved since the checkpoint was written
        return prefix
    name = p.name
    if name.endswith(".index"):
        return p.with_name(name[: -len(".index")])
    match = re.match(r"^(.*)\.data-\d+-of-\d+$", name)
    if match:
        return p.with_name(match.group(1))
    return p


class TFCheckpointReader:
    """Random access to the tensors of one TF checkpoint, like ``tf.train.load_checkpoint``.

    ``path``: the prefix (``.../model.ckpt``), its ``.index`` or a ``.data`` file, or a folder
    holding TF's ``checkpoint`` state file. The index is read and every block checksum verified
    on construction; tensors are read on demand, each checked against its size and (with
    ``verify_checksums``) its CRC-32C.
    """

    def __init__(self, path: str | os.PathLike, verify_checksums: bool = True):
        self.prefix = _resolve_prefix(path)
        self._who = f"TF checkpoint {str(self.prefix)!r}"
        self.verify_checksums = verify_checksums
        index_path = Path(f"{self.prefix}.index")
        if not index_path.exists():
            raise FileNotFoundError(
                f"TF checkpoint: no index file {str(index_path)!r} (expected a checkpoint prefix such as "
                "'model.ckpt' with 'model.ckpt.index' and 'model.ckpt.data-00000-of-00001' beside it)"
            )
        source = str(regular_file(index_path, "TF checkpoint", CheckpointError))
        index = read_bounded(index_path, MAX_INDEX_BYTES, "TF checkpoint", "an index", CheckpointError)
        try:
            table = read_table(index, source, verify_checksums)
        except TableError as err:
            raise CheckpointError(str(err)) from None
        if not table or table[0][0] != b"":
            raise CheckpointError(f"{source}: corrupted: no bundle header entry (the empty key)")
        self.num_shards, self.big_endian = 1, False
        key = b""
        try:
            for field, wire_type, value in iter_fields(table[0][1]):
                if field == 1:
                    self.num_shards = _number(field, wire_type, value)
                elif field == 2:
                    self.big_endian = _number(field, wire_type, value) == 1
            self._entries: dict[str, _Entry] = {}
            for key, value in table[1:]:
                if key.startswith(b"\x00"):
                    continue  # encoded keys of the slices of partitioned variables
                self._entries[key.decode("utf-8")] = _parse_entry(value)
        except (WireError, UnicodeDecodeError, CheckpointError) as err:
            raise CheckpointError(f"{source}: corrupted bundle entry {key[:200]!r} ({err})") from None
        if self.num_shards < 1:
            raise CheckpointError(f"{source}: corrupted header: num_shards = {self.num_shards}")

    # -- listing -------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def list_variables(self) -> list[CheckpointEntry]:
        """Every tensor's name, dtype and shape, sorted by name (``tf.train.list_variables``)."""
        return [
            CheckpointEntry(name, _DTYPES.get(e.dtype, (f"DataType({e.dtype})",))[0], e.shape)
            for name, e in self._entries.items()
        ]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name).shape

    def _entry(self, name: str) -> _Entry:
        if name not in self._entries:
            close = [n for n in self._entries if n.rsplit("/", 1)[-1] == name.rsplit("/", 1)[-1]][:5]
            hint = f"; variables with the same last component: {close}" if close else ""
            raise KeyError(f"TF checkpoint {str(self.prefix)!r} has no variable {name!r}{hint}")
        return self._entries[name]

    # -- reading -------------------------------------------------------------------------------------
    def _shard_path(self, shard_id: int) -> Path:
        return Path(f"{self.prefix}.data-{shard_id:05d}-of-{self.num_shards:05d}")

    def _read_bytes(self, name: str, entry: _Entry) -> bytes:
        if not 0 <= entry.shard_id < self.num_shards:
            raise CheckpointError(f"{self._who}: variable {name!r} names shard {entry.shard_id} of {self.num_shards}")
        path = self._shard_path(entry.shard_id)
        if not path.exists():
            raise FileNotFoundError(f"{self._who}: data file {str(path)!r} (holding {name!r}) is missing")
        file_size = regular_file(path, self._who, CheckpointError).stat().st_size
        if entry.offset < 0 or entry.size < 0 or entry.offset + entry.size > file_size:
            raise CheckpointError(
                f"{self._who}: truncated: variable {name!r} needs bytes [{entry.offset}, "
                f"{entry.offset + entry.size}) of {str(path)!r}, which has only {file_size} bytes"
            )
        with path.open("rb") as f:
            f.seek(entry.offset)
            return f.read(entry.size)

    def _check_crc(self, name: str, entry: _Entry, crc: int) -> None:
        if self.verify_checksums and entry.crc32c is not None and unmask(entry.crc32c) != crc:
            raise CheckpointError(
                f"{self._who}: corrupted: checksum mismatch for variable {name!r} "
                f"(stored CRC-32C {unmask(entry.crc32c):#010x}, computed {crc:#010x})"
            )

    def get_tensor(self, name: str) -> np.ndarray:
        """The tensor ``name`` as a NumPy array (bfloat16 widened exactly to float32, strings as bytes objects)."""
        entry = self._entry(name)
        if entry.sliced:
            raise CheckpointError(
                f"{self._who}: variable {name!r} is partitioned into slices, which rnnkit does not read; "
                "re-save it unpartitioned"
            )
        if entry.dtype not in _DTYPES:
            raise CheckpointError(f"{self._who}: variable {name!r} has dtype DataType({entry.dtype}), not readable")
        if any(d < 0 for d in entry.shape):
            raise CheckpointError(f"{self._who}: variable {name!r} has an unknown dimension: {entry.shape}")
        count = math.prod(entry.shape)  # Python ints: an absurd shape must not wrap around as int64 would
        # The entry's size must fit its shape before anything is read or allocated: a string holds at least a
        # one-byte length each and a 4-byte checksum; another dtype exactly count * itemsize bytes.
        dtype = np.dtype(_DTYPES[entry.dtype][1])
        needed = count + 4 if entry.dtype == _DT_STRING else count * dtype.itemsize
        if entry.dtype == _DT_STRING and entry.size < needed or entry.dtype != _DT_STRING and entry.size != needed:
            raise CheckpointError(
                f"{self._who}: corrupted: variable {name!r} of shape {entry.shape} and dtype "
                f"{_DTYPES[entry.dtype][0]} needs {'at least ' if entry.dtype == _DT_STRING else ''}{needed:,} bytes, "
                f"its entry gives {entry.size:,}"
            )
        raw = self._read_bytes(name, entry)
        if entry.dtype == _DT_STRING:
            return self._decode_strings(name, entry, raw, count)
        if len(raw) != entry.size:
            raise CheckpointError(f"{self._who}: truncated: variable {name!r}: read {len(raw)} of {entry.size} bytes")
        if self.verify_checksums and entry.crc32c is not None:
            self._check_crc(name, entry, crc32c(raw))
        array = np.frombuffer(raw, dtype=dtype.newbyteorder(">" if self.big_endian else "<"))
        array = array.astype(dtype.newbyteorder("="), copy=True).reshape(entry.shape)
        if entry.dtype == _DT_BFLOAT16:
            array = (array.astype(np.uint32) << 16).view(np.float32)  # bfloat16 is float32's top half
        return array

    def _decode_strings(self, name: str, entry: _Entry, raw: bytes, count: int) -> np.ndarray:
        try:
            lengths, pos = [], 0
            for _ in range(count):
                n, pos = read_varint(raw, pos)
                lengths.append(n)
            (stored_length_crc,) = struct.unpack_from("<I", raw, pos)
        except (WireError, struct.error):
            raise CheckpointError(f"{self._who}: corrupted string tensor {name!r}") from None
        # TF extends the checksum by the low 4 bytes of each uint64 length (sizeof(uint32) in its writer).
        length_bytes = struct.pack(f"<{count}I", *(n & 0xFFFFFFFF for n in lengths))
        if self.verify_checksums and unmask(stored_length_crc) != crc32c(length_bytes):
            raise CheckpointError(f"{self._who}: corrupted: checksum mismatch in the lengths of {name!r}")
        pos += 4
        if pos + sum(lengths) != len(raw):
            raise CheckpointError(
                f"{self._who}: corrupted: string tensor {name!r} holds {len(raw) - pos} bytes of text, "
                f"its lengths say {sum(lengths)}"
            )
        crc = crc32c(raw[pos:], crc32c(struct.pack("<I", mask(crc32c(length_bytes))), crc32c(length_bytes)))
        self._check_crc(name, entry, crc)
        out = np.empty(count, dtype=object)
        for k, n in enumerate(lengths):
            out[k] = raw[pos : pos + n]
            pos += n
        return out.reshape(entry.shape)

    def read_all(self, names: list[str] | None = None) -> dict[str, np.ndarray]:
        return {name: self.get_tensor(name) for name in (self.names() if names is None else names)}


def read_tf_checkpoint(
    path: str | os.PathLike, names: list[str] | None = None, *, verify_checksums: bool = True
) -> dict[str, np.ndarray]:
    """``{variable name: np.ndarray}`` for every tensor (or the given ``names``) of a TF checkpoint.

    Reads TF1 ``Saver`` checkpoints (and any tensor bundle) without TensorFlow. Raises
    ``FileNotFoundError`` for missing files, :class:`CheckpointError` (a ``ValueError``) for a
    truncated or corrupted file (bad magic, block or tensor checksum, sizes), ``KeyError`` for a name
    that is not there.

    Example::

        v = read_tf_checkpoint("ckpt/model.ckpt")
        v["rnn/multi_rnn_cell/cell_0/basic_lstm_cell/kernel"].shape   # (input + units, 4 * units): (7, 16)
    """
    return TFCheckpointReader(path, verify_checksums=verify_checksums).read_all(names)


def list_tf_checkpoint(path: str | os.PathLike) -> list[CheckpointEntry]:
    """``[(name, dtype, shape), ...]`` of a TF checkpoint, sorted by name, reading no tensor data."""
    return TFCheckpointReader(path).list_variables()
