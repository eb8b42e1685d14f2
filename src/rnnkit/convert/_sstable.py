"""LevelDB's sorted-table format, as TF writes the ``.index`` file of a checkpoint (``tensorflow/core/lib/io/table``).

Layout of the file::

    [data block 0][trailer] ... [data block n][trailer] [metaindex block][trailer] [index block][trailer] [footer]

* footer (48 bytes): the metaindex and index *block handles* (``varint64 offset, varint64 size``
  each), zero padding to 40 bytes, then the 8-byte little-endian magic ``0xdb4775248b80fb57``;
* trailer (5 bytes) after every block: the compression type (0 none, 1 snappy) and the masked
  CRC-32C of the block contents followed by that type byte;
* a block: entries ``varint32 shared, varint32 non_shared, varint32 value_length,
  key_delta[non_shared], value[value_length]`` where the key is ``previous_key[:shared] + key_delta``
  (prefix compression), then ``uint32`` restart offsets (entries stored with ``shared == 0``) and
  their ``uint32`` count;
* the index block maps a separator key ``>=`` the last key of each data block to that block's handle.
"""

from __future__ import annotations

import struct

from ._crc32c import crc32c, unmask
from ._wire import WireError, read_varint

__all__ = ["read_table", "TableError"]

_MAGIC = 0xDB4775248B80FB57
_FOOTER_SIZE = 48
_TRAILER_SIZE = 5
# Prefix compression lets a few bytes of block stand for a long key: bound what the entries expand to.
MAX_ENTRIES = 1 << 19  # half a million variables
MAX_KEY_BYTES = 64 << 20


class TableError(ValueError):
    """A corrupted, truncated or foreign ``.index`` file."""


def _handle(buf: bytes, pos: int, what: str, source: str) -> tuple[int, int, int]:
    try:
        offset, pos = read_varint(buf, pos)
        size, pos = read_varint(buf, pos)
    except WireError as err:
        raise TableError(f"{source}: corrupted {what} block handle ({err})") from None
    return offset, size, pos


def _read_block(data: bytes, offset: int, size: int, what: str, source: str, verify: bool) -> bytes:
    end = offset + size + _TRAILER_SIZE
    if end > len(data) - _FOOTER_SIZE:
        raise TableError(
            f"{source}: truncated or corrupted: the {what} block at bytes [{offset}, {end}) runs past the "
            f"table's data ({len(data)} bytes in the file, {_FOOTER_SIZE} of them the footer)"
        )
    contents = data[offset : offset + size]
    kind = data[offset + size]
    if verify:
        (stored,) = struct.unpack_from("<I", data, offset + size + 1)
        actual = crc32c(data[offset : offset + size + 1])
        if unmask(stored) != actual:
            raise TableError(
                f"{source}: corrupted: checksum mismatch in the {what} block at byte {offset} "
                f"(stored CRC-32C {unmask(stored):#010x}, computed {actual:#010x})"
            )
    if kind == 1:
        raise TableError(
            f"{source}: the {what} block is snappy-compressed; TF's tensor bundles are written uncompressed "
            "(BundleWriter sets kNoCompression), so this is not a checkpoint index rnnkit can read"
        )
    if kind != 0:
        raise TableError(f"{source}: corrupted: unknown block compression type {kind} in the {what} block")
    return contents


def _block_entries(block: bytes, what: str, source: str, budget: list[int]) -> list[tuple[bytes, bytes]]:
    """The ``(key, value)`` entries of a block; ``budget`` (``[entries, key bytes]`` left) is spent and checked."""
    if len(block) < 4:
        raise TableError(f"{source}: corrupted: the {what} block is {len(block)} bytes, too short for its restarts")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 * (num_restarts + 1)
    if num_restarts == 0 or limit < 0:
        raise TableError(f"{source}: corrupted: the {what} block claims {num_restarts} restart points")
    restarts = set(struct.unpack_from(f"<{num_restarts}I", block, limit))
    entries: list[tuple[bytes, bytes]] = []
    starts: set[int] = set()
    key = b""
    pos = 0
    try:
        while pos < limit:
            start = pos
            starts.add(start)
            shared, pos = read_varint(block, pos)
            non_shared, pos = read_varint(block, pos)
            value_length, pos = read_varint(block, pos)
            if shared > len(key) or pos + non_shared + value_length > limit or (start in restarts and shared):
                raise WireError(f"bad entry header at byte {start}")
            budget[0] -= 1
            budget[1] -= shared + non_shared
            if budget[0] < 0 or budget[1] < 0:
                raise TableError(
                    f"{source}: the table's entries expand past {MAX_ENTRIES:,} entries or {MAX_KEY_BYTES:,} bytes "
                    "of keys; a checkpoint index holds one short key per variable"
                )
            key = key[:shared] + block[pos : pos + non_shared]
            pos += non_shared
            entries.append((key, block[pos : pos + value_length]))
            pos += value_length
    except WireError as err:
        raise TableError(f"{source}: corrupted {what} block ({err})") from None
    if entries and not restarts <= starts:
        raise TableError(f"{source}: corrupted: restart points of the {what} block point outside its entries")
    return entries


def read_table(data: bytes, source: str, verify_checksums: bool = True) -> list[tuple[bytes, bytes]]:
    """All ``(key, value)`` pairs of a LevelDB/TF table held in ``data``, in key order.

    ``source`` names the file in error messages. Checks the magic number, every block's masked
    CRC-32C (unless ``verify_checksums=False``), block bounds and key order.
    """
    if len(data) < _FOOTER_SIZE:
        raise TableError(f"{source}: truncated: {len(data)} bytes, shorter than a table footer ({_FOOTER_SIZE} bytes)")
    (magic,) = struct.unpack_from("<Q", data, len(data) - 8)
    if magic != _MAGIC:
        raise TableError(
            f"{source}: not a TF checkpoint index (bad magic number {magic:#018x}, expected {_MAGIC:#018x}); "
            "the file is truncated, corrupted or of another format"
        )
    footer = data[len(data) - _FOOTER_SIZE :]
    _meta_offset, _meta_size, pos = _handle(footer, 0, "metaindex", source)
    index_offset, index_size, _ = _handle(footer, pos, "index", source)
    budget = [MAX_ENTRIES, MAX_KEY_BYTES]
    index = _block_entries(
        _read_block(data, index_offset, index_size, "index", source, verify_checksums), "index", source, budget
    )
    entries: list[tuple[bytes, bytes]] = []
    for separator, handle in index:
        offset, size, _ = _handle(handle, 0, "data", source)
        block = _read_block(data, offset, size, "data", source, verify_checksums)
        for key, value in _block_entries(block, "data", source, budget):
            if entries and key <= entries[-1][0]:
                raise TableError(f"{source}: corrupted: keys out of order ({entries[-1][0]!r} then {key!r})")
            if key > separator:
                raise TableError(f"{source}: corrupted: key {key!r} lies beyond its index separator {separator!r}")
            entries.append((key, value))
    return entries
