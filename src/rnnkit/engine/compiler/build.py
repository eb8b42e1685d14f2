"""Compiling a generated C unit into a shared library, cached on disk, loaded with ctypes.

``load_unit(source, names)`` -> ``{name: address}``. The library lives in ``<cache>/<key>.so`` where ``key`` is
the sha256 of the source, the compiler, its flags and the CPU (``-march=native`` code must never cross CPU
models); ``<cache>`` is ``$RNNKIT_CELLS_DIR``, else ``$RNNKIT_EXTENSIONS_DIR/cells``, else
``~/.cache/rnnkit/cells``. ``RNNKIT_CELLS_CACHE=0`` compiles into a fresh temporary folder every time (nothing
read from or left on disk). Writes are atomic (a temporary file, then ``os.replace``), so processes compiling
the same unit at once all end with one complete library. Nothing touches the network.

A plain C unit compiles in a fraction of a second (it includes no torch header); loaded libraries stay in a
process dict, so a unit is compiled and loaded once per process at most, and found on disk by later processes.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from .. import _ext

__all__ = ["BuildError", "compiler", "compiler_available", "cache_root", "flags", "load_unit", "stats"]


class BuildError(RuntimeError):
    """The C compiler failed on a generated unit (a bug of the code generator: the message holds its errors)."""


_lock = threading.Lock()
_loaded: dict[str, tuple[ctypes.CDLL, dict[str, int]]] = {}
_stats = {"compiled": 0, "disk_hits": 0, "compile_s": 0.0}


def compiler() -> str | None:
    """The C compiler: ``$CC`` when set, else ``cc`` on the PATH (``None``: none found)."""
    return shutil.which(os.environ.get("CC") or "cc")


def compiler_available() -> bool:
    """Whether a C compiler is there to build compiled steps (no compile is started; looked up once per ``$CC``)."""
    cc = os.environ.get("CC") or "cc"
    if cc not in _found:
        _found[cc] = compiler() is not None
    return _found[cc]


_found: dict[str, bool] = {}


def flags() -> list[str]:
    """The flags every unit compiles with: optimised, vectorised loops (``#pragma omp simd``), no errno."""
    out = ["-O3", "-std=gnu11", "-shared", "-fPIC", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd"]
    if platform.machine() in ("x86_64", "AMD64"):
        out.append("-march=native")
    return out


def cache_root() -> Path | None:
    """Where compiled units are kept (see the module's docstring); ``None`` when caching is off."""
    if os.environ.get("RNNKIT_CELLS_CACHE", "") in ("0", "off", "false"):
        return None
    if os.environ.get("RNNKIT_CELLS_DIR"):
        return Path(os.environ["RNNKIT_CELLS_DIR"])
    if os.environ.get("RNNKIT_EXTENSIONS_DIR"):
        return Path(os.environ["RNNKIT_EXTENSIONS_DIR"]) / "cells"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "rnnkit" / "cells"


def _key(source: str, cc: str) -> str:
    digest = hashlib.sha256(source.encode())
    digest.update(f"|{os.path.realpath(cc)}|{' '.join(flags())}|{_ext._cpu_tag()}".encode())
    return digest.hexdigest()[:32]


def _compile(source: str, cc: str, target: Path) -> None:
    """Compiles ``source`` into ``target`` through a private temporary name, then renames it in place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_c = tempfile.mkstemp(suffix=".c", dir=target.parent)
    tmp_so = f"{tmp_c[:-2]}.so"
    try:
        with os.fdopen(fd, "w") as f:
            f.write(source)
        done = subprocess.run([cc, *flags(), tmp_c, "-o", tmp_so, "-lm"], capture_output=True, text=True)
        if done.returncode != 0:
            raise BuildError(f"rnnkit compiled step: {cc} failed on {tmp_c}:\n{done.stderr[-4000:]}")
        os.replace(tmp_so, target)
    finally:
        for leftover in (tmp_c, tmp_so):
            if os.path.exists(leftover):
                os.unlink(leftover)


def load_unit(source: str, names: list[str]) -> dict[str, int]:
    """Compiles (or finds) ``source`` and returns the address of every function of ``names`` in it."""
    cc = compiler()
    if cc is None:
        raise BuildError("rnnkit compiled step: no C compiler (cc) on the PATH; compiler_available() says so first")
    key = _key(source, cc)
    with _lock:
        if key not in _loaded:
            root = cache_root()
            scratch = None if root is not None else tempfile.TemporaryDirectory(prefix="rnnkit-cells-")
            path = (root if root is not None else Path(scratch.name)) / f"{key}.so"
            if path.is_file():
                _stats["disk_hits"] += 1
            else:
                start = time.perf_counter()
                _compile(source, cc, path)
                _stats["compiled"] += 1
                _stats["compile_s"] += time.perf_counter() - start
            lib = ctypes.CDLL(str(path))
            if scratch is not None:
                scratch.cleanup()  # the loaded library stays mapped
            _loaded[key] = (lib, {})
        lib, found = _loaded[key]
        for name in names:
            if name not in found:
                found[name] = ctypes.cast(getattr(lib, name), ctypes.c_void_p).value
        return {name: found[name] for name in names}


def stats() -> dict[str, float]:
    """Counts of this process: units ``compiled``, ``disk_hits`` (found built on disk), ``compile_s`` (seconds)."""
    return dict(_stats)
