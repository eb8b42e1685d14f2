"""Building and loading rnnkit's compiled kernels (a C++ extension against the installed torch).

The sources (``rnnkit/engine/csrc``, shipped as package data) are compiled on first use with
``torch.utils.cpp_extension.load`` (needs ``ninja`` and a C++ compiler) into a cache directory keyed
by the sources, torch, Python and the CPU, so a rebuild happens only when one of those changes. The ops
register as ``torch.ops.rnnkit.*`` (no pybind), which keeps the build light.

If the build or the load fails, rnnkit warns once (:class:`FusedKernelUnavailableWarning`) and
the engine uses the pure-PyTorch twins of the kernels (:mod:`rnnkit.engine.twin`): the same
algorithm with the time loop in Python. ``RNNKIT_NO_COMPILE=1`` skips the build on purpose.

The public face of this module, for tools outside the engine, is :mod:`rnnkit.engine.extension`.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import torch

__all__ = ["FusedKernelUnavailableWarning", "load", "status", "source_dir", "cache_dir"]

_SOURCES = ("common.cpp", "lstm.cpp", "lnlstm.cpp", "gru.cpp", "rnn.cpp", "program.cpp", "frame.cpp", "bf16.cpp",
            "register.cpp")  # fmt: skip
_HEADERS = ("bf16.h", "common.h", "gemm.h", "gru.h", "loop.h", "lstm.h", "ops.h", "rk_math.h")
# What torch.utils.cpp_extension.load leaves in the build directory: the library named after the extension.
LIBRARY_NAMES = ("rnnkit_fused.so", "rnnkit_fused.pyd")


class FusedKernelUnavailableWarning(RuntimeWarning):
    """rnnkit's compiled kernels could not be built or loaded; the pure-PyTorch twins run instead."""


_lock = threading.Lock()
_state: dict[str, Any] = {"tried": False, "ops": None, "error": None, "build_s": None, "path": None}


def source_dir() -> Path | None:
    """Where the C++ sources are: ``rnnkit/engine/csrc``, shipped as package data (``None`` if incomplete)."""
    candidate = Path(__file__).resolve().parent / "csrc"
    return candidate if all((candidate / f).is_file() for f in _SOURCES + _HEADERS) else None


def _cpu_tag() -> str:
    """The CPU's identity: the build uses -march=native, so a cache must never cross CPU models."""
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "model name", "Features")):
                    flags += line
                if line.strip() == "":
                    break
    except OSError:
        flags = platform.processor()
    return flags + platform.machine()


def _cflags() -> list[str]:
    flags = ["-O3", "-std=c++20", "-fno-math-errno", "-fno-trapping-math", "-fopenmp-simd"]
    if platform.machine() in ("x86_64", "AMD64"):
        flags.append("-march=native")
    return flags + _openmp()


def _ldflags() -> list[str]:
    return _openmp()


def _openmp() -> list[str]:
    """``-fopenmp`` where torch parallelises with OpenMP (Linux builds): ``at::parallel_for`` in the kernels is
    an OpenMP region only when compiled with it (else it silently runs serially), and at load time the
    extension binds to the ``libgomp.so.1`` torch has already loaded, so both share one thread pool."""
    return ["-fopenmp"] if sys.platform.startswith("linux") and "OpenMP" in torch.__config__.parallel_info() else []


def cache_dir(src: Path) -> Path:
    """``$RNNKIT_EXTENSIONS_DIR`` or ``~/.cache/rnnkit/ext``, one subfolder per (sources, torch, python, CPU)."""
    digest = hashlib.sha256()
    for name in _SOURCES + _HEADERS:
        digest.update((src / name).read_bytes())
    digest.update(f"{torch.__version__}|{platform.python_version()}|{_cpu_tag()}".encode())
    digest.update(" ".join(_cflags() + _ldflags()).encode())
    root = os.environ.get("RNNKIT_EXTENSIONS_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "rnnkit", "ext"
    )
    return Path(root) / digest.hexdigest()[:16]


def _build() -> Any:
    if os.environ.get("RNNKIT_NO_COMPILE", "") not in ("", "0"):
        raise RuntimeError("RNNKIT_NO_COMPILE is set")
    src = source_dir()
    if src is None:
        raise RuntimeError("the C++ sources (rnnkit/engine/csrc/*.cpp) are not found in the package")
    from torch.utils import cpp_extension

    build = cache_dir(src)
    copied = build / "src"
    copied.mkdir(parents=True, exist_ok=True)
    # Compile a copy inside the cache folder (its name is their hash), so that the build commands do not depend
    # on where this checkout lies: two checkouts of the same sources share one build instead of each rewriting
    # the other's build.ninja and recompiling everything.
    for name in _SOURCES + _HEADERS:
        target, text = copied / name, (src / name).read_bytes()
        if not target.is_file() or target.read_bytes() != text:
            tmp = target.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(text)
            os.replace(tmp, target)
    cpp_extension.load(
        name="rnnkit_fused",
        sources=[str(copied / f) for f in _SOURCES],
        extra_cflags=_cflags(),
        extra_ldflags=_ldflags(),
        build_directory=str(build),
        is_python_module=False,
        verbose=False,
    )
    _state["path"] = str(build)
    return torch.ops.rnnkit


def _summary(err: Exception) -> str:
    """One line for the warning: the first compiler error when there is one, else the last line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    first_error = next((line for line in lines if "error:" in line), None)
    return f"{type(err).__name__}: {first_error or (lines[-1] if lines else '')}"


def load() -> Any | None:
    """``torch.ops.rnnkit`` when the compiled kernels are available, else ``None`` (after one warning)."""
    if _state["tried"]:
        return _state["ops"]
    with _lock:
        if _state["tried"]:
            return _state["ops"]
        start = time.perf_counter()
        # Expected failures of a build are many (no compiler, no ninja, read-only cache, bad
        # toolchain); each leaves rnnkit working on the twins, so all are reported, none raised.
        try:
            with warnings.catch_warnings():
                # The toolchain's own chatter (ABI notes, deprecations) is not rnnkit's signal; under
                # ``-W error`` it would otherwise turn a working build into a failed one.
                warnings.simplefilter("default")
                ops = _build()
        except Exception as err:  # noqa: BLE001
            ops = None
            _state["error"] = _summary(err)
        _state["build_s"] = time.perf_counter() - start
        _state["ops"] = ops
        _state["tried"] = True
    if ops is None:
        warnings.warn(
            "rnnkit: the compiled fused kernels are unavailable "
            f"({_state['error']}); using the pure-PyTorch kernels instead (same results, slower at small batch). "
            "rnnkit.engine.backend_info() tells what runs.",
            FusedKernelUnavailableWarning,
            stacklevel=3,
        )
    return ops


def status() -> dict[str, Any]:
    """What :func:`load` found: ``{"tried", "loaded", "error", "build_s", "path"}`` (no build is started)."""
    return {
        "tried": _state["tried"],
        "loaded": _state["ops"] is not None,
        "error": _state["error"],
        "build_s": _state["build_s"],
        "path": _state["path"],
    }


def _reset_for_tests() -> None:
    """Forget the outcome of :func:`load` (tests simulate a failed build with it)."""
    with _lock:
        _state.update(tried=False, ops=None, error=None, build_s=None, path=None)
