"""Guards the file readers share: check what a file declares before allocating for it, and fail naming the file.

A hostile or damaged file must cost a bounded amount of memory before its error, and the error must be a
``ValueError`` naming the file, what was expected and what came. The guards here:

* `regular_file`: the path exists and is a regular file (not a directory, a FIFO that would block a read, a
  device such as ``/dev/zero`` that never ends, a dangling or looping symbolic link);
* `read_bounded`: a whole small file (a ``config.json``, TF's ``checkpoint`` state file, a table index) with a
  size limit checked before reading, and a read that stops at the limit whatever the size said;
* `loads_json`: JSON with its nesting depth checked first (``json`` recurses once per level, so ``[[[[...``
  would end in a ``RecursionError``), and decode errors naming the file;
* `zip_member`: one entry of a zip archive, its declared size and compression ratio checked against limits
  before inflating, then read through a bounded reader (the declared size may lie), and the archive's entry
  count checked before ``zipfile`` builds one object per entry.
"""

from __future__ import annotations

import json
import os
import re
import stat
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_JSON_BYTES",
    "regular_file",
    "read_bounded",
    "loads_json",
    "open_zip",
    "zip_member",
    "one_line",
]

MAX_JSON_DEPTH = 64  # rnnkit and Keras configurations nest ~10 levels; json's C parser recurses per level
MAX_JSON_BYTES = 64 << 20  # a model configuration is kilobytes; 64 MiB leaves room and bounds the parse
MAX_ZIP_ENTRIES = 4096  # a .keras archive holds 3 entries (plus assets)
MAX_ZIP_RATIO = 100  # deflate reaches ~10:1 on JSON (Keras stores entries uncompressed); zip bombs ~1000:1
_RATIO_EXEMPT = 1 << 20  # entries up to 1 MiB inflated may have any ratio (a tiny, very regular file)
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_ESCAPES = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")  # CSI, OSC, 2-byte
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


def one_line(text: str) -> str:
    """``text`` for a one-line error: terminal escape sequences and control characters removed, whitespace runs
    (newlines, tabs) made single spaces, nothing cut off."""
    return " ".join(_CONTROLS.sub(" ", _ESCAPES.sub("", text)).split())


def regular_file(path: str | os.PathLike, who: str, error: type[ValueError] = ValueError) -> Path:
    """``Path(path)`` if it names a regular file (through symbolic links), else a clear error.

    ``FileNotFoundError`` when nothing is there (or a symbolic link leads nowhere), ``ValueError`` for a
    directory, a FIFO, a device or a socket (or ``error``, a subclass), which a reader must not open (a FIFO
    blocks, ``/dev/zero`` never ends).
    """
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except OSError as err:  # absent, a dangling or looping link, an unreadable folder on the way
        if p.is_symlink():
            raise FileNotFoundError(
                f"{who}: {str(p)!r} is a symbolic link to {os.readlink(p)!r}, which cannot be followed ({err.strerror})"
            ) from None
        raise FileNotFoundError(f"{who}: no file {str(p)!r}") from None
    if stat.S_ISREG(mode):
        return p
    kind = (
        "a directory" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode)
        else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
        else "not a regular file"
    )  # fmt: skip
    raise error(f"{who}: {str(p)!r} is {kind}, expected a regular file")


def read_bounded(path: Path, limit: int, who: str, what: str, error: type[ValueError] = ValueError) -> bytes:
    """The bytes of ``path`` (a regular file), refused with ``error`` if there are more than ``limit``."""
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise error(f"{who}: {str(path)!r} is {size:,} bytes; {what} is expected to be at most {limit:,} bytes")
        data = f.read(limit + 1)  # the size may change under us: never read past the limit
    if len(data) > limit:
        raise error(f"{who}: {str(path)!r} grew past {limit:,} bytes while being read ({what})")
    return data


def _max_depth(text: bytes) -> int:
    """The deepest nesting of ``[`` and ``{`` in JSON ``text`` (strings removed first; their brackets are text)."""
    skeleton = np.frombuffer(_STRING.sub(b'""', text), dtype=np.uint8)
    steps = np.isin(skeleton, (ord("["), ord("{"))).astype(np.int64)
    steps -= np.isin(skeleton, (ord("]"), ord("}")))
    return int(np.cumsum(steps).max()) if steps.size else 0


def loads_json(text: str | bytes, who: str, what: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads(text)`` with errors (``ValueError``) naming ``who`` and ``what`` and its depth bounded.

    ``who``: the reader and the file (``"read_keras: 'model.keras'"``); ``what``: the document (``"its
    config.json"``). Refuses more than `MAX_JSON_BYTES`, invalid UTF-8, nesting deeper than ``max_depth``.
    """
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    if len(raw) > MAX_JSON_BYTES:
        raise ValueError(f"{who}: {what} is {len(raw):,} bytes of JSON; at most {MAX_JSON_BYTES:,} are read")
    depth = _max_depth(raw)
    if depth > max_depth:
        raise ValueError(
            f"{who}: {what} nests {depth} levels deep; a configuration is expected to nest at most {max_depth}"
        )
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{who}: {what} is not valid JSON: not UTF-8 text ({err.reason} at byte {err.start})"
        ) from None
    try:
        return json.loads(decoded)
    except json.JSONDecodeError as err:
        raise ValueError(f"{who}: {what} is not valid JSON ({err})") from None


def _zip_entry_count(path: Path, who: str) -> int:
    """The entry count in a zip's end-of-central-directory record (zip64 too), read before ``zipfile`` does."""
    with path.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        tail_start = max(0, size - (22 + 0xFFFF))  # the record (22 bytes) and a comment of at most 64 KiB
        f.seek(tail_start)
        tail = f.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or at + 22 > len(tail):
            raise ValueError(f"{who}: {str(path)!r} is a damaged zip archive (no end-of-central-directory record)")
        (count,) = struct.unpack_from("<H", tail, at + 10)
        if count != 0xFFFF or at < 20 or tail[at - 20 : at - 16] != b"PK\x06\x07":
            return count
        (record,) = struct.unpack_from("<Q", tail, at - 20 + 8)  # zip64 locator -> zip64 end record
        if record + 56 > size:
            raise ValueError(f"{who}: {str(path)!r} is a damaged zip archive (zip64 record beyond the file)")
        f.seek(record)
        head = f.read(56)
    if head[:4] != b"PK\x06\x06":
        raise ValueError(f"{who}: {str(path)!r} is a damaged zip archive (bad zip64 end record)")
    return struct.unpack_from("<Q", head, 32)[0]


def open_zip(path: Path, who: str) -> zipfile.ZipFile:
    """``zipfile.ZipFile(path)`` once its entry count is checked (``zipfile`` makes an object per entry)."""
    count = _zip_entry_count(path, who)
    if count > MAX_ZIP_ENTRIES:
        raise ValueError(
            f"{who}: {str(path)!r} is a zip archive of {count:,} entries; a model archive is expected to hold "
            f"at most {MAX_ZIP_ENTRIES:,}"
        )
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, struct.error) as err:
        raise ValueError(f"{who}: {str(path)!r} is a damaged zip archive ({err})") from None


def zip_member(archive: zipfile.ZipFile, name: str, limit: int, who: str) -> bytes:
    """The inflated bytes of entry ``name``, refused (``ValueError``) beyond ``limit`` bytes or `MAX_ZIP_RATIO`.

    The directory's declared size and ratio are checked before inflating anything; the read is then bounded
    at ``limit + 1`` bytes, and ``zipfile`` checks the CRC, so an entry whose declared size lies fails too.
    """
    info = archive.getinfo(name)
    if info.file_size > limit:
        raise ValueError(
            f"{who}: its entry {name!r} declares {info.file_size:,} bytes; at most {limit:,} are read from it"
        )
    if info.file_size > _RATIO_EXEMPT and info.file_size > MAX_ZIP_RATIO * max(info.compress_size, 1):
        raise ValueError(
            f"{who}: its entry {name!r} inflates {info.compress_size:,} bytes to {info.file_size:,} "
            f"(ratio {info.file_size / max(info.compress_size, 1):,.0f}, at most {MAX_ZIP_RATIO} accepted): a zip bomb?"
        )
    try:
        with archive.open(info) as f:
            data = f.read(limit + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as err:
        raise ValueError(f"{who}: its entry {name!r} cannot be read: damaged archive ({err})") from None
    if len(data) > limit:
        raise ValueError(
            f"{who}: its entry {name!r} inflates past {limit:,} bytes (its directory said {info.file_size:,})"
        )
    return data
