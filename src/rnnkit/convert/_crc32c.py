"""CRC-32C (Castagnoli), the checksum of TF's checkpoint files, in Python and NumPy.

TF stores it *masked* (LevelDB's ``crc32c::Mask``): ``((crc >> 15) | (crc << 17)) + 0xa282ead8``
modulo 2**32, so that a CRC of data holding CRCs does not degenerate.

Long inputs are split into ``K`` equal lanes whose raw CRC registers advance together, one NumPy
table lookup per byte position; the lanes are then chained with the linear "advance over ``L`` zero
bytes" operator ``M_L`` (CRC is linear over GF(2): ``crc(r, A + B) = M_|B| crc(r, A) xor crc(0, B)``),
applied through four byte tables. A 100 MB tensor takes about a second instead of a minute.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = ["crc32c", "mask", "unmask"]

_POLY = 0x82F63B78  # reversed Castagnoli polynomial
_MASK_DELTA = 0xA282EAD8
_LANE_THRESHOLD = 1 << 14


def _make_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _POLY if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _make_table()
_NP_TABLE = np.array(_TABLE, dtype=np.uint32)


def _raw_update(register: int, data: bytes | memoryview) -> int:
    """The raw CRC register after ``data`` (no pre/post inversion)."""
    table = _TABLE
    for byte in bytes(data):
        register = table[(register ^ byte) & 0xFF] ^ (register >> 8)
    return register


def _raw_lanes(lanes: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Raw CRC registers of the rows of ``lanes`` ``(K, L)`` uint8, starting from ``start`` ``(K,)``."""
    register = start.copy()
    for column in lanes.T:  # L steps, each over all K lanes
        register = _NP_TABLE[(register ^ column) & 0xFF] ^ (register >> 8)
    return register


@lru_cache(maxsize=16)
def _advance_tables(length: int) -> np.ndarray:
    """Byte tables ``(4, 256)`` of ``M_length``: ``M r = T0[r & 255] ^ T1[(r >> 8) & 255] ^ ...``."""
    basis = (np.uint32(1) << np.arange(32, dtype=np.uint32)).astype(np.uint32)  # (32,) unit registers
    images = _raw_lanes(np.zeros((32, length), dtype=np.uint8), basis)  # (32,) M e_b
    values = np.arange(256, dtype=np.uint32)
    tables = np.zeros((4, 256), dtype=np.uint32)
    for j in range(4):
        for bit in range(8):
            tables[j] ^= np.where((values >> bit) & 1, images[8 * j + bit], 0).astype(np.uint32)
    return tables


def crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-32C of ``data`` (``crc`` continues an earlier value), e.g. ``crc32c(b"123456789") == 0xE3069283``."""
    view = memoryview(data).cast("B")
    register = crc ^ 0xFFFFFFFF
    n = len(view)
    if n < _LANE_THRESHOLD:
        return _raw_update(register, view) ^ 0xFFFFFFFF
    k = min(1 << 16, n // 256)  # lanes
    length = n // k
    body = np.frombuffer(view[: k * length], dtype=np.uint8).reshape(k, length)
    lane_crcs = _raw_lanes(body, np.zeros(k, dtype=np.uint32)).tolist()
    t0, t1, t2, t3 = (t.tolist() for t in _advance_tables(length))
    for lane in lane_crcs:
        register = (
            t0[register & 0xFF] ^ t1[(register >> 8) & 0xFF] ^ t2[(register >> 16) & 0xFF] ^ t3[register >> 24]
        ) ^ lane
    return _raw_update(register, view[k * length :]) ^ 0xFFFFFFFF


def mask(crc: int) -> int:
    """LevelDB's masked CRC, as stored in TF's table blocks and tensor bundle entries."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def unmask(masked: int) -> int:
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF
