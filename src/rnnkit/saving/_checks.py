"""Checks `rnnkit.convert.load` runs on a file before building anything from it.

A saved file's configuration decides what gets allocated: ``{"hidden_size": 1000000000}`` in a 2 KB file
would make a 48 GB module. So, in this order, each step bounded by what the file itself holds:

1. `header_specs`: the safetensors header (read by ``safetensors``, which checks the offsets against the file
   size) gives every tensor's name, dtype and shape, and the metadata, without reading any tensor;
2. `check_config`: the configuration's structure and types (classes are strings, ``args`` objects of JSON
   scalars, sizes integers of at most ``2**24``, at most `MAX_CELLS` cells and `MAX_LAYERS` layers, finite
   numbers);
3. the module is built on the ``meta`` device (shapes, no storage) and `compare_specs` checks every expected
   tensor's name, shape and dtype against the header: the real module is built only for a file whose
   tensors it fits, so it costs no more than the file.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch

__all__ = ["MAX_SIZE", "MAX_LAYERS", "MAX_CELLS", "header_specs", "check_config", "compare_specs", "torch_dtype"]

MAX_SIZE = 1 << 24  # any width above this is no recurrent net (and 4 * 2**24 squared still counts in int64)
MAX_LAYERS = 1024
MAX_CELLS = 1024
_SIZES = ("input_size", "hidden_size", "proj_size", "num_units", "num_proj")
_FLOATS = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_OTHERS = {
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_TREE_KEYS = {"cells", "cell", "cells_fw", "cells_bw"}


def torch_dtype(name: str) -> torch.dtype | None:
    """The floating torch dtype of a safetensors dtype name (``"F32"``), ``None`` for any other."""
    return _FLOATS.get(name)


def header_specs(path: str | os.PathLike, who: str) -> tuple[dict[str, str], dict[str, tuple[str, tuple[int, ...]]]]:
    """``(metadata, {name: (dtype name, shape)})`` of a safetensors file, reading no tensor data.

    ``safetensors`` validates the header (its size, every tensor's byte range within the file, dtype and shape
    agreeing with that range): a damaged file raises ``ValueError`` naming ``who``.
    """
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            metadata = f.metadata() or {}
            specs = {}
            for name in f.keys():  # noqa: SIM118 (safe_open has no iteration)
                piece = f.get_slice(name)
                specs[name] = (str(piece.get_dtype()), tuple(int(d) for d in piece.get_shape()))
    except Exception as err:  # safetensors raises its own SafetensorError, and OSError/ValueError for bad files
        raise ValueError(f"{who} is not a readable safetensors file: {err}") from None
    return metadata, specs


def _check_scalar(key: str, value: Any, where: str) -> None:
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: '{key}' = {value}: expected a finite number")
    if not isinstance(value, (int, float)):
        raise ValueError(f"{where}: '{key}' is a {type(value).__name__}; expected a number, a string, a bool or null")


def _check_size(key: str, value: Any, low: int, high: int, where: str) -> None:
    if value is None and key in ("num_proj", "input_depth"):
        return
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{where}: '{key}' = {value!r}: expected an integer in [{low}, {high}]")


def _check_node(node: Any, where: str, count: list[int]) -> None:
    if not isinstance(node, dict):
        raise ValueError(f"{where}: expected an object with a 'class', got {type(node).__name__}")
    name = node.get("class")
    if not isinstance(name, str):
        raise ValueError(f"{where}: 'class' must be a string, got {type(name).__name__}")
    where = f"{where} ({name})"
    count[0] += 1
    if count[0] > MAX_CELLS:
        raise ValueError(f"{where}: the configuration holds more than {MAX_CELLS} cells")
    args = node.get("args", {})
    if not isinstance(args, dict):
        raise ValueError(f"{where}: 'args' must be an object, got {type(args).__name__}")
    rebuild = f"{where}: cannot rebuild the {name}"
    for key, value in args.items():
        _check_scalar(key, value, rebuild)
        if key in _SIZES:
            _check_size(key, value, 0, MAX_SIZE, rebuild)
        elif key == "num_layers":
            _check_size(key, value, 0, MAX_LAYERS, rebuild)
    if "input_depth" in node:
        _check_size("input_depth", node["input_depth"], 0, MAX_SIZE, rebuild)
    if "training" in node and not isinstance(node["training"], bool):
        raise ValueError(f"{where}: 'training' must be true or false, got {node['training']!r}")
    for key in _TREE_KEYS & node.keys():
        children = node[key]
        if key == "cell":
            _check_node(children, f"{where}.cell", count)
            continue
        if not isinstance(children, list):
            raise ValueError(f"{where}: '{key}' must be a list of cells, got {type(children).__name__}")
        for k, child in enumerate(children):
            if key == "cells" and isinstance(child, dict) and child.keys() == {"same_as"}:
                same = child["same_as"]  # a MultiRNNCell layer repeating an earlier layer's cell object
                if isinstance(same, bool) or not isinstance(same, int) or not 0 <= same < k:
                    raise ValueError(f"{where}.{key}[{k}]: 'same_as' must name an earlier layer, got {same!r}")
                continue
            _check_node(child, f"{where}.{key}[{k}]", count)


def check_config(config: Any, who: str) -> None:
    """Refuse (``ValueError`` naming ``who``) a configuration of the wrong structure, types or sizes.

    Checks what building would trust: the tree's shape (objects with a string ``class``; ``cells`` lists,
    ``cell`` objects), ``args`` holding JSON scalars with finite numbers, sizes (``input_size``,
    ``hidden_size``, ``proj_size``, ``num_units``, ``num_proj``, ``input_depth``) integers in
    ``[0, MAX_SIZE]``, ``num_layers`` in ``[0, MAX_LAYERS]``, at most `MAX_CELLS` cells. The constructors then
    check the values (e.g. a negative size) and the meta build checks the shapes against the file.
    """
    _check_node(config, f"{who}: the rnnkit configuration", [0])


def compare_specs(expected: dict[str, torch.Tensor], specs: dict[str, tuple[str, tuple[int, ...]]], who: str) -> None:
    """Refuse a file whose tensors (``specs``) do not match a module's state dict (``expected``, on meta).

    Every expected name must be there with its shape, and a floating dtype where the module's is floating
    (any float width: `load` builds in the file's); no other tensor may be there.
    """
    problems = [f"missing {name} {tuple(t.shape)}" for name, t in expected.items() if name not in specs]
    problems += [f"unexpected {name}" for name in specs if name not in expected]
    for name, t in expected.items():
        if name not in specs:
            continue
        dtype, shape = specs[name]
        if shape != tuple(t.shape):
            problems.append(f"{name}: expected shape {tuple(t.shape)}, got {shape}")
        if t.is_floating_point() and torch_dtype(dtype) is None:
            problems.append(f"{name}: expected a floating-point dtype (F16, BF16, F32, F64), got {dtype}")
        elif not t.is_floating_point() and _OTHERS.get(dtype) != t.dtype:
            problems.append(f"{name}: expected dtype {t.dtype}, got {dtype}")
    if problems:
        more = f"; and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ValueError(f"{who}: the tensors do not fit the configuration: " + "; ".join(problems[:20]) + more)
