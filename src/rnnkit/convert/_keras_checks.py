"""Guarded access to a Keras weights file (HDF5) and checks of a Keras model config, for `read_keras`.

``h5py`` answers a damaged file with raw ``KeyError``/``OSError``/``RuntimeError`` at whatever access meets
the damage, and reads a dataset by allocating its declared shape first. Every access here goes through a
helper that turns those into a ``ValueError`` naming the file and the object, and `read_array` checks a
dataset's declared size against the bytes the file stores for it before reading:

* without filters (Keras writes plain contiguous datasets) the storage must hold the whole array and lie
  within the file;
* with filters (compression) the array may be at most `MAX_ZIP_RATIO` times its stored bytes.

`check_model_config` checks the structure and types of a model config (``config.json``) before the layout
code trusts it: objects where objects belong, ``units`` a positive integer of at most ``2**24``, booleans.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .guards import MAX_ZIP_RATIO

__all__ = ["child", "has", "keys", "attr", "read_array", "holds_datasets", "check_model_config"]

_H5_ERRORS = (KeyError, OSError, RuntimeError, ValueError, TypeError)  # what h5py raises on damaged files
MAX_UNITS = 1 << 24
_BOOLS = ("use_bias", "reset_after", "go_backwards", "return_sequences", "return_state", "stateful", "unroll")


def _damaged(where: str, what: str, err: BaseException) -> ValueError:
    detail = err.args[0] if isinstance(err, KeyError) and err.args else err
    return ValueError(f"{where}: damaged HDF5 file: cannot read {what} ({detail})")


def child(group: Any, key: str, where: str) -> Any:
    """``group[key]``; ``ValueError`` naming the object when it is missing or damaged."""
    try:
        return group[key]
    except _H5_ERRORS as err:
        raise _damaged(where, f"{group.name.rstrip('/')}/{key}", err) from None


def has(group: Any, key: str, where: str) -> bool:
    try:
        return key in group
    except _H5_ERRORS as err:
        raise _damaged(where, f"the links of {group.name}", err) from None


def keys(group: Any, where: str) -> list[str]:
    try:
        return list(group.keys())
    except _H5_ERRORS as err:
        raise _damaged(where, f"the links of {group.name}", err) from None


def attr(obj: Any, name: str, where: str) -> Any:
    try:
        return obj.attrs.get(name)
    except _H5_ERRORS as err:
        raise _damaged(where, f"attribute {name!r} of {obj.name}", err) from None


def holds_datasets(group: Any, where: str) -> bool:
    """Whether any dataset lies under ``group`` (at any depth)."""
    import h5py

    found = []

    def visit(name: str, obj: Any) -> Any:
        if isinstance(obj, h5py.Dataset):
            found.append(name)
            return True  # stop the walk
        return None

    try:
        group.visititems(visit)
    except _H5_ERRORS as err:
        raise _damaged(where, f"the objects under {group.name}", err) from None
    return bool(found)


def read_array(obj: Any, where: str) -> np.ndarray:
    """A floating-point dataset's data, its declared size checked against its storage before reading."""
    import h5py

    if not isinstance(obj, h5py.Dataset):
        raise ValueError(f"{where}: {obj.name} is a {type(obj).__name__}, expected a dataset of weights")
    try:
        dtype, shape = obj.dtype, obj.shape
        storage = obj.id.get_storage_size()
        filtered = obj.id.get_create_plist().get_nfilters() > 0
        file_size = obj.file.id.get_filesize()
    except _H5_ERRORS as err:
        raise _damaged(where, f"the header of dataset {obj.name}", err) from None
    if dtype.kind != "f":
        raise ValueError(f"{where}: dataset {obj.name} holds {dtype}, expected floating-point weights")
    if shape is None:
        raise ValueError(f"{where}: dataset {obj.name} has no shape (an empty dataspace), expected weights")
    nbytes = math.prod(shape) * dtype.itemsize
    stored = f"declares shape {shape} ({nbytes:,} bytes) but stores {storage:,} bytes"
    if storage > file_size:
        raise ValueError(f"{where}: dataset {obj.name} {stored}, more than the file's {file_size:,}")
    if not filtered and nbytes > storage:
        raise ValueError(f"{where}: dataset {obj.name} {stored}: truncated or damaged")
    if filtered and nbytes > MAX_ZIP_RATIO * max(storage, 1):
        raise ValueError(f"{where}: dataset {obj.name} {stored} compressed (at most {MAX_ZIP_RATIO}x accepted)")
    try:
        return np.asarray(obj[()])
    except _H5_ERRORS as err:
        raise _damaged(where, f"dataset {obj.name}", err) from None


def _check_layer(spec: Any, where: str, nested: bool) -> None:
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where}: expected a layer object, got {type(spec).__name__}")
    class_name = spec.get("class_name")
    if not isinstance(class_name, str):
        raise ValueError(f"{where}: 'class_name' must be a string, got {class_name!r:.80}")
    if spec.get("name") is not None and not isinstance(spec["name"], str):
        raise ValueError(f"{where} ({class_name}): 'name' must be a string, got {spec['name']!r:.80}")
    cfg = spec.get("config")
    if cfg is None:
        return
    if not isinstance(cfg, Mapping):
        raise ValueError(f"{where} ({class_name}): 'config' must be an object, got {type(cfg).__name__}")
    where = f"{where} ({class_name} {cfg.get('name')!r:.80})"
    if cfg.get("name") is not None and not isinstance(cfg["name"], str):
        raise ValueError(f"{where}: 'name' must be a string")
    if "units" in cfg:
        units = cfg["units"]
        if isinstance(units, bool) or not isinstance(units, int) or not 1 <= units <= MAX_UNITS:
            raise ValueError(f"{where}: units = {units!r:.80}: expected an integer in [1, {MAX_UNITS}]")
    for key in _BOOLS:
        if key in cfg and not isinstance(cfg[key], bool):
            raise ValueError(f"{where}: {key} = {cfg[key]!r:.80}: expected true or false")
    for key in ("activation", "recurrent_activation", "merge_mode"):
        if cfg.get(key) is not None and not isinstance(cfg[key], str):
            raise ValueError(f"{where}: {key} = {cfg[key]!r:.80}: expected a name (a string)")
    if class_name == "Bidirectional" and not nested:
        for key in ("layer", "backward_layer"):
            if cfg.get(key) is not None:
                _check_layer(cfg[key], f"{where} {key}", nested=True)


def check_model_config(config: Any, who: str) -> list[Any]:
    """The layer list of a Keras model config, its structure and the recurrent options' types checked.

    ``who`` names the file in the ``ValueError``.
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"{who}: the config is a {type(config).__name__}, expected an object (a model's config)")
    inner = config.get("config", config)
    layers = inner.get("layers") if isinstance(inner, Mapping) else None
    if not isinstance(layers, list):
        raise ValueError(f"{who}: the config has no layer list (class {config.get('class_name')!r:.80})")
    for k, spec in enumerate(layers):
        _check_layer(spec, f"{who}: config layer {k}", nested=False)
    return layers
