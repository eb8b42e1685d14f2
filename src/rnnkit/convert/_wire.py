"""Protocol-buffer wire format, decoded by hand (no protobuf dependency) for TF's checkpoint messages.

A message is a sequence of fields ``key = (field_number << 3) | wire_type`` followed by the value:
wire type 0 a base-128 varint (7 bits per byte, least significant group first, high bit = more), 1 a
little-endian fixed64, 2 a varint length then that many bytes (strings, bytes, sub-messages), 5 a
little-endian fixed32. Negative int32/int64 values are 10-byte two's-complement varints.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

__all__ = ["read_varint", "iter_fields", "as_signed64", "WireError"]


class WireError(ValueError):
    """Malformed varint or protocol-buffer bytes."""


def read_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """Decode the varint at ``buf[pos:]``; return ``(value, position after it)``."""
    result = 0
    shift = 0
    end = len(buf)
    while True:
        if pos >= end:
            raise WireError("varint runs past the end of the data")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError("varint longer than 10 bytes")


def as_signed64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def iter_fields(buf: bytes | memoryview) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield ``(field_number, wire_type, value)``: an int for wire types 0, 1, 5; bytes for type 2."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = read_varint(buf, pos)
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = read_varint(buf, pos)
        elif wire_type == 1:
            if pos + 8 > end:
                raise WireError(f"fixed64 field {field} runs past the end of the message")
            (value,) = struct.unpack_from("<Q", buf, pos)
            pos += 8
        elif wire_type == 5:
            if pos + 4 > end:
                raise WireError(f"fixed32 field {field} runs past the end of the message")
            (value,) = struct.unpack_from("<I", buf, pos)
            pos += 4
        elif wire_type == 2:
            length, pos = read_varint(buf, pos)
            if pos + length > end:
                raise WireError(f"field {field} of length {length} runs past the end of the message")
            value = bytes(buf[pos : pos + length])
            pos += length
        else:
            raise WireError(f"unsupported wire type {wire_type} (field {field})")
        if field == 0:
            raise WireError("field number 0 is invalid")
        yield field, wire_type, value
