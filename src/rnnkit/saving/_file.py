"""rnnkit's save format, the file half: `save` writes a module's weights and description to a ``.safetensors``
file, `load` reads one back after checking it (``rnnkit.saving._checks``); `read_config` reads without building.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from .._version import __version__
from ..convert.guards import loads_json, regular_file
from ..convert.tf_cells import TFCellStack
from ._checks import check_config, compare_specs, header_specs, torch_dtype
from ._config import module_config, module_from_config

__all__ = ["save", "load", "read_config", "FORMAT_VERSION", "CONFIG_KEY"]

FORMAT_VERSION = 1
CONFIG_KEY = "rnnkit.config"
_MAGIC = {
    b"PK\x03\x04": "a zip archive (a torch.save file or a .keras archive)",
    b"\x89HDF": "an HDF5 file (Keras weights?)",
    b"\x80": "a Python pickle (rnnkit never unpickles: it could run code)",
}


def _state_tensors(module: Any) -> dict[str, torch.Tensor]:
    if isinstance(module, TFCellStack):
        tensors = {}
        for side, cells in (("fw", module.cells_fw), ("bw", module.cells_bw)):
            for k, cell in enumerate(cells):
                tensors.update({f"{side}.{k}.{n}": t for n, t in cell.state_dict().items()})
        return tensors
    return dict(module.state_dict())


def save(module: Any, path: str | os.PathLike) -> None:
    """Save ``module``'s weights and configuration to a ``.safetensors`` file that `load` rebuilds it from.

    ``module``: an ``rnnkit.RNN/LSTM/GRU`` (or ``torch.nn.RNN/LSTM/GRU``), a TF-style cell tree, or a
    `TFCellStack`. Raises ``ValueError``/``TypeError`` naming what is not serialisable (a custom activation,
    a ``residual_fn``, a subclass) instead of writing a file that would not reload.

    Example::

        >>> save(rnnkit.MultiRNNCell([rnnkit.BasicLSTMCell(8, input_size=3), rnnkit.BasicLSTMCell(8)]), "s.safetensors")
    """
    from safetensors.torch import save_file

    modules = module.cells_fw + module.cells_bw if isinstance(module, TFCellStack) else [module]
    if any(parametrize.is_parametrized(m) for root in modules if isinstance(root, nn.Module) for m in root.modules()):
        raise ValueError(
            "rnnkit.convert.save: the module has parametrizations (weight_norm, spectral_norm, ...), whose functions "
            "a saved file cannot hold; bake them in first: torch.nn.utils.parametrize.remove_parametrizations"
        )
    config = module_config(module)
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in _state_tensors(module).items()}
    metadata = {
        "format": "pt",
        "rnnkit.format": str(FORMAT_VERSION),
        "rnnkit.version": __version__,
        CONFIG_KEY: json.dumps(config, sort_keys=True),
    }
    save_file(tensors, os.fspath(path), metadata=metadata)


# -- file -> configuration and tensors --------------------------------------------------------------------
def _sniff(path: Path, who: str) -> None:
    """Refuse, with what it seems to be, a file that is not safetensors (8-byte header size, then JSON)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(9)
    if len(head) == 9:
        (header_size,) = struct.unpack("<Q", head[:8])
        if header_size + 8 <= size and head[8:9] == b"{":
            return
    for magic, what in _MAGIC.items():
        if head.startswith(magic):
            raise ValueError(f"{who} is not a safetensors file: it looks like {what}")
    if len(head) < 9:
        raise ValueError(f"{who} is not a safetensors file ({size} bytes: too short)")
    raise ValueError(
        f"{who} is not a safetensors file (or is truncated): its first 8 bytes give a header of {header_size} bytes "
        f"in a file of {size}"
    )


def _read_header(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, tuple[str, tuple[int, ...]]], str]:
    """``(configuration, {tensor name: (dtype, shape)}, who)``: everything but the tensor data, all checked.

    ``who`` (``"rnnkit.convert.load: 'path'"``) starts every later error about this file.
    """
    path = regular_file(path, "rnnkit.convert.load")
    who = f"rnnkit.convert.load: {str(path)!r}"
    _sniff(path, who)
    metadata, specs = header_specs(path, who)
    if CONFIG_KEY not in metadata:
        raise ValueError(
            f"{who} is a safetensors file without rnnkit's configuration (metadata keys {sorted(metadata)}); it "
            "was not written by rnnkit.convert.save. Read its tensors with safetensors.torch.load_file and load "
            "them into a module you build"
        )
    version = metadata.get("rnnkit.format", "1")
    if not version.isdigit() or int(version) > FORMAT_VERSION:
        raise ValueError(
            f"{who} has rnnkit format {version[:20]!r}; this rnnkit reads format {FORMAT_VERSION} and older "
            "(upgrade rnnkit)"
        )
    config = loads_json(metadata[CONFIG_KEY], who, "the rnnkit configuration")
    if not isinstance(config, dict) or "class" not in config:
        raise ValueError(f"{who}: the rnnkit configuration has no 'class'")
    check_config(config, who)
    return config, specs, who


def _read_tensors(path: str | os.PathLike, who: str) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file whose header `_read_header` checked (so at most the file's size)."""
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            return {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open has no iteration)
    except Exception as err:  # safetensors raises its own SafetensorError, and OSError/ValueError for bad files
        raise ValueError(f"{who} is not a readable safetensors file: {err}") from None


def read_config(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The rnnkit configuration (parsed JSON, its structure checked) and the tensors of a file written by `save`."""
    config, _, who = _read_header(path)
    return config, _read_tensors(path, who)


def load(path: str | os.PathLike, device: Any = None) -> Any:
    """Rebuild the module `save` wrote to ``path``: the same class, options, weights and training flag.

    Errors (``ValueError``, naming the file): a file that is not safetensors (a pickle, a zip, HDF5,
    truncated), a safetensors file without rnnkit's configuration, a configuration of the wrong structure,
    types or sizes, an unknown class, tensors that do not fit the configuration (names, shapes, dtypes).
    Everything is checked on the header and a ``meta``-device build before any tensor is read or any weight
    allocated, so a file costs at most about twice its size. ``device``: where to put the module (default CPU).

    Example::

        >>> save(rnnkit.MultiRNNCell([rnnkit.BasicLSTMCell(8, input_size=3), rnnkit.BasicLSTMCell(8)]), "s.safetensors")
        >>> cell = load("s.safetensors")       # the MultiRNNCell, weights and all
        >>> outputs, state = rnnkit.dynamic_rnn(cell, torch.randn(2, 5, 3))
        >>> tuple(outputs.shape)
        (2, 5, 8)
    """
    config, specs, who = _read_header(path)
    floats = {torch_dtype(dtype) for dtype, _ in specs.values()} - {None}
    dtype = floats.pop() if len(floats) == 1 else torch.float32
    with torch.device("meta"):  # shapes only: checked against the file before anything is allocated
        skeleton = module_from_config(config, dtype, who)
    compare_specs(_state_tensors(skeleton), specs, who)
    tensors = _read_tensors(path, who)
    # Building draws initial weights that the file then overwrites: keep the caller's random stream untouched.
    with torch.random.fork_rng(devices=[]):
        module = module_from_config(config, dtype, who)
    training = bool(config.get("training", False))
    if isinstance(module, TFCellStack):
        for side, cells in (("fw", module.cells_fw), ("bw", module.cells_bw)):
            for k, cell in enumerate(cells):
                prefix = f"{side}.{k}."
                cell.load_state_dict({n[len(prefix) :]: t for n, t in tensors.items() if n.startswith(prefix)})
                cell.train(training)
                if device is not None:
                    cell.to(device)
        return module
    module.load_state_dict(tensors, strict=True)
    module.train(training)
    if device is not None:
        module.to(device)
    return module
