"""Read Keras 3 model files (``.keras`` archives, ``.weights.h5``) with ``h5py``, no Keras needed.

A ``.keras`` file is a zip of ``config.json`` (the model's ``get_config()``: ``{"class_name":
"Sequential"|"Functional", "config": {"layers": [...]}}``), ``metadata.json`` and
``model.weights.h5``. In the HDF5 file a top-level layer's weights sit under
``layers/<snake_case(class)>[_k]/`` (``k`` counting earlier layers of the same class), a recurrent
layer's in ``cell/vars/0, 1, 2`` (kernel, recurrent kernel, bias), a ``Bidirectional``'s in
``forward_layer/cell/vars/...`` and ``backward_layer/cell/vars/...``; each ``vars`` group carries the
layer's name as an attribute, which is how layers are matched to the config here.

A bare ``.weights.h5`` has no config: the layer kinds then come from the group names and the
sizes and GRU variant from the shapes (activations are assumed to be Keras's defaults); pass
``config=`` (a ``.keras`` file, a ``config.json`` or its dict) to read them exactly.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._keras_checks import attr, check_model_config, child, has, holds_datasets, keys, read_array
from ._keras_layout import RECURRENT, KerasRecurrentLayer, keras_layers_to_torch
from .config import LayerConfig
from .guards import MAX_JSON_BYTES, MAX_ZIP_RATIO, loads_json, open_zip, read_bounded, regular_file, zip_member

__all__ = ["read_keras", "keras_to_torch"]

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# Layers without weights that are the identity at inference: a stack may contain them.
_PASS_THROUGH = {"InputLayer", "Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "AlphaDropout"}


def _h5py():
    try:
        import h5py
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("reading Keras files needs h5py: pip install h5py") from err
    return h5py


def _snake(name: str) -> str:
    """Keras's ``to_snake_case`` (the HDF5 group names of layers)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _sniff(data: bytes, source: str) -> str:
    if data.startswith(_HDF5_MAGIC):
        return "hdf5"
    if data.startswith(b"PK\x03\x04"):
        return "zip"
    if len(data) > 1 and data[0] == 0x80 and 2 <= data[1] <= 5:  # PROTO opcode of pickle protocols 2-5
        raise ValueError(
            f"{source} is a Python pickle, not Keras weights: rnnkit never unpickles files (unpickling runs "
            "arbitrary code). Save Keras models with model.save('m.keras') or model.save_weights('m.weights.h5')"
        )
    raise ValueError(f"{source} is neither an HDF5 file nor a .keras zip archive (first bytes {data[:8]!r})")


def _open_h5(data: bytes | Path, source: str) -> Any:
    """``h5py.File`` over ``data`` (the bytes of an archive's weights, or a path), damage -> ``ValueError``."""
    try:
        return _h5py().File(io.BytesIO(data) if isinstance(data, bytes) else data, "r")
    except (OSError, RuntimeError, KeyError, ValueError) as err:
        raise ValueError(f"read_keras: {source} is a damaged or truncated HDF5 file ({err})") from None


def _open_source(path: str | os.PathLike) -> tuple[Any, dict[str, Any] | None, str]:
    """``(h5py.File, config or None, source name)`` for a ``.keras`` or an HDF5 weights file.

    Only the first bytes are read to tell the kind; an archive's entries are read through the zip guards
    (declared sizes and compression ratio checked before inflating, bounded reads), its config as guarded JSON.
    """
    path = regular_file(path, "read_keras")
    source = str(path)
    with path.open("rb") as f:
        head = f.read(16)
    if _sniff(head, source) == "hdf5":
        return _open_h5(path, source), None, source
    who = f"read_keras: {source}"
    archive = open_zip(path, who)
    with archive:
        names = archive.namelist()
        if any(n.endswith("data.pkl") for n in names):
            raise ValueError(
                f"read_keras: {source} is a torch.save archive (a pickle inside a zip), not a Keras model; load "
                "torch state dicts with rnnkit.convert.load_torch_state_dict (weights_only)"
            )
        if "config.json" not in names or "model.weights.h5" not in names:
            raise ValueError(
                f"read_keras: {source} is a zip archive without config.json and model.weights.h5, so not a Keras 3 "
                f".keras file (it holds {names[:6]})"
            )
        config = loads_json(zip_member(archive, "config.json", MAX_JSON_BYTES, who), who, "its config.json")
        # The weights hold at most the archive's bytes times the accepted compression ratio.
        weights = zip_member(archive, "model.weights.h5", MAX_ZIP_RATIO * path.stat().st_size + (1 << 20), who)
    if not weights.startswith(_HDF5_MAGIC):
        _sniff(weights, f"{source}:model.weights.h5")
    return _open_h5(weights, f"{source}:model.weights.h5"), config, source


def _load_config(config: Any) -> dict[str, Any]:
    if isinstance(config, Mapping):
        return dict(config)
    path = regular_file(config, "read_keras: config")
    who = f"read_keras: {str(path)!r}"
    if path.suffix == ".keras":
        with open_zip(path, who) as archive:
            if "config.json" not in archive.namelist():
                raise ValueError(f"{who} is a zip archive without config.json, so not a Keras 3 .keras file")
            return loads_json(zip_member(archive, "config.json", MAX_JSON_BYTES, who), who, "its config.json")
    return loads_json(read_bounded(path, MAX_JSON_BYTES, who, "a config.json"), who, "the config")


def _vars(group: Any, where: str) -> list[np.ndarray]:
    if not has(group, "vars", where):
        raise ValueError(f"{where}: missing weights group 'vars' (the file holds no weights for this layer)")
    store = child(group, "vars", where)
    names = keys(store, where)
    if sorted(names) != sorted(str(k) for k in range(len(names))):
        raise ValueError(f"{where}: weights named {sorted(names)[:8]}, expected 0..{len(names) - 1}")
    return [read_array(child(store, str(k), where), where) for k in range(len(names))]


def _layer_weights(group: Any, class_name: str, where: str) -> list[np.ndarray]:
    if class_name == "Bidirectional":
        weights = []
        for side in ("forward_layer", "backward_layer"):
            if not has(group, side, where):
                raise ValueError(f"{where}: missing weights group {side!r}")
            side_group = child(group, side, where)
            weights += _vars(_cell(side_group, f"{where} {side}"), f"{where} {side}/cell")
        return weights
    return _vars(_cell(group, where), f"{where} cell")


def _cell(group: Any, where: str) -> Any:
    if not has(group, "cell", where):
        raise ValueError(f"{where}: missing weights group 'cell' (is this a recurrent layer's weights?)")
    return child(group, "cell", where)


def _groups_by_name(layers_group: Any, where: str) -> dict[str, str]:
    """``{layer name: group key}`` from the ``name`` attributes Keras 3 writes on each ``vars`` group."""
    out = {}
    for key in keys(layers_group, where):
        layer = child(layers_group, key, where)
        vars_group = child(layer, "vars", where) if has(layer, "vars", where) else None
        name = attr(vars_group, "name", where) if vars_group is not None else None
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        if name:
            out[str(name)] = key
    return out


def _model_layers(config: dict[str, Any], source: str) -> list[dict[str, Any]]:
    return check_model_config(config, f"read_keras: {source}")


def read_keras(path: str | os.PathLike, *, config: Any = None, layer_names: Sequence[str] | None = None):
    """The recurrent layers of a Keras 3 model file, as `KerasRecurrentLayer`s in model order.

    ``path``: a ``.keras`` archive or a ``.weights.h5`` file. ``config``: the model config for a bare
    weights file (a ``.keras`` path, a ``config.json`` path or the dict). ``layer_names``: read only
    these layers (others, e.g. a ``Dense`` head, are skipped); without it every layer with weights
    must be ``LSTM``, ``GRU``, ``SimpleRNN`` or ``Bidirectional``, and any other raises
    ``ValueError`` naming it. Weightless identity layers (``InputLayer``, ``Dropout``) are skipped.

    Example::

        [(l.name, l.class_name) for l in read_keras("model.keras")]   # [('lstm', 'LSTM'), ('lstm_1', 'LSTM')]
    """
    h5, archive_config, source = _open_source(path)
    with h5:
        if config is not None:
            archive_config = _load_config(config)
        if not has(h5, "layers", f"read_keras: {source}"):
            raise ValueError(
                f"read_keras: {source} has no 'layers' group: not a Keras 3 weights file (Keras 2 '.h5' files "
                "keep 'model_weights'; re-save with Keras 3)"
            )
        layers_group = child(h5, "layers", f"read_keras: {source}")
        if archive_config is None:
            layers = _infer_layers(layers_group, source)
        else:
            layers = _configured_layers(layers_group, archive_config, source, layer_names)
    if layer_names is not None:
        missing = sorted(set(layer_names) - {layer.name for layer in layers})
        if missing:
            raise ValueError(f"read_keras: {source} has no recurrent layers named {missing}")
        layers = [layer for layer in layers if layer.name in set(layer_names)]
    if not layers:
        raise ValueError(f"read_keras: {source} holds no recurrent layers")
    return layers


def _configured_layers(layers_group, config, source, layer_names) -> list[KerasRecurrentLayer]:
    by_name = _groups_by_name(layers_group, f"read_keras: {source}")
    counts: dict[str, int] = {}
    out = []
    for spec in _model_layers(config, source):
        class_name = spec.get("class_name")
        cfg = spec.get("config") or {}
        name = cfg.get("name") or spec.get("name")
        base = _snake(str(class_name))
        key = f"{base}_{counts[base]}" if base in counts else base
        counts[base] = counts.get(base, 0) + 1
        key = by_name.get(name, key)
        group = child(layers_group, key, f"read_keras: {source}") if has(layers_group, key, source) else None
        where = f"{source}: layer {name!r} ({class_name})"
        wanted = layer_names is None or name in layer_names
        if class_name in (*RECURRENT, "Bidirectional"):
            if not wanted:
                continue
            if group is None:
                raise ValueError(f"{where}: missing weights (no group layers/{key} in the weights file)")
            out.append(KerasRecurrentLayer(name, class_name, cfg, _layer_weights(group, class_name, where)))
        elif wanted and class_name == "RNN":
            raise ValueError(
                f"{where}: generic keras.layers.RNN(cell) layers are not read yet; rnnkit converts the LSTM, GRU, "
                "SimpleRNN and Bidirectional layers"
            )
        elif wanted and (class_name not in _PASS_THROUGH or (group is not None and holds_datasets(group, where))):
            raise ValueError(
                f"{where} is not a recurrent layer; rnnkit converts LSTM, GRU, SimpleRNN and Bidirectional "
                "layers (pass layer_names= to pick the recurrent layers of a larger model)"
            )
    return out


def _infer_layers(layers_group, source) -> list[KerasRecurrentLayer]:
    """Layers of a bare weights file: kinds from the group names, sizes from the shapes."""
    kinds = {"lstm": "LSTM", "gru": "GRU", "simple_rnn": "SimpleRNN", "bidirectional": "Bidirectional"}
    found = []
    where = f"read_keras: {source}"
    for key in keys(layers_group, where):
        match = re.fullmatch(r"(.*?)(?:_(\d+))?", key)
        base, index = match.group(1), int(match.group(2) or 0)
        if base in kinds:
            found.append((base, index, key))
        elif holds_datasets(child(layers_group, key, where), where):
            raise ValueError(
                f"read_keras: {source}: layer group {key!r} holds weights but is not a recurrent layer; rnnkit "
                "converts LSTM, GRU, SimpleRNN and Bidirectional layers"
            )
    if len({base for base, _, _ in found}) > 1:
        raise ValueError(
            f"read_keras: {source} holds several kinds of recurrent layers ({sorted({k for _, _, k in found})}) "
            "and no config to order them; pass config= (the .keras file or its config.json)"
        )
    out = []
    for base, _, key in sorted(found, key=lambda t: t[1]):
        class_name = kinds[base]
        group = child(layers_group, key, where)
        name = attr(child(group, "vars", where), "name", where) if has(group, "vars", where) else None
        name = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name or key)
        weights = _layer_weights(group, class_name, f"{source}: layer {name!r}")
        out.append(KerasRecurrentLayer(name, class_name, _inferred_config(class_name, weights, source, name), weights))
    return out


def _inferred_config(class_name: str, weights: list[np.ndarray], source: str, name: str) -> dict[str, Any]:
    where = f"read_keras: {source}: layer {name!r}"
    if class_name == "Bidirectional":
        half = len(weights) // 2
        inner = _inner_class(weights[:half], where)
        forward = _inferred_config(inner, weights[:half], source, name)
        backward = {**_inferred_config(inner, weights[half:], source, name), "go_backwards": True}
        return {
            "name": name,
            "merge_mode": "concat",
            "layer": {"class_name": inner, "config": forward},
            "backward_layer": {"class_name": inner, "config": backward},
        }
    if len(weights) < 2:
        raise ValueError(f"{where}: {len(weights)} weights; a recurrent layer has a kernel and a recurrent kernel")
    if weights[1].ndim != 2:
        raise ValueError(f"{where}: its recurrent kernel has shape {weights[1].shape}, expected (units, gates * units)")
    units = int(weights[1].shape[0])
    cfg: dict[str, Any] = {"name": name, "units": units, "use_bias": len(weights) > 2, "return_sequences": True}
    if class_name == "GRU":
        if len(weights) < 3:
            raise ValueError(f"{where}: a GRU without bias; whether it resets after the matmul needs config=")
        cfg["reset_after"] = weights[2].ndim == 2
    return cfg


def _inner_class(weights: list[np.ndarray], where: str) -> str:
    if len(weights) < 2 or weights[1].ndim != 2 or weights[1].shape[0] == 0:
        raise ValueError(f"{where}: cannot tell the wrapped layer's kind from its weights; pass config=")
    gates = weights[1].shape[1] // weights[1].shape[0]
    if gates not in (4, 3, 1):
        raise ValueError(f"{where}: recurrent kernel {weights[1].shape} is not 4x, 3x or 1x square; pass config=")
    return {4: "LSTM", 3: "GRU", 1: "SimpleRNN"}[gates]


def keras_to_torch(
    source: str | os.PathLike | Sequence[KerasRecurrentLayer],
    *,
    target: str = "rnnkit",
    config: Any = None,
    layer_names: Sequence[str] | None = None,
) -> tuple[dict[str, torch.Tensor], LayerConfig]:
    """A Keras 3 file (or `read_keras`'s layers) -> one torch-layout stack ``(state_dict, LayerConfig)``.

    Stacked layers (``return_sequences=True`` feeding the next) of one kind, size and option set
    become ``num_layers`` of one torch layer; ``Bidirectional`` gives ``bidirectional=True``.
    ``target="torch.nn"`` refuses a ``reset_after=False`` GRU (TF's math, which torch.nn.GRU does
    not compute); ``target="rnnkit"`` maps it to rnnkit ``GRU(reset_after=False)``.

    Example::

        >>> from rnnkit.convert import cells_to_torch, torch_to_keras
        >>> layers = torch_to_keras(*cells_to_torch(rnnkit.BasicLSTMCell(4, input_size=3)))  # or "lstm.keras"
        >>> state, cfg = keras_to_torch(layers, target="torch.nn")
        >>> lstm = cfg.torch_nn_module(batch_first=True); lstm.load_state_dict(state)
        <All keys matched successfully>
    """
    if isinstance(source, (str, os.PathLike)):
        layers = read_keras(source, config=config, layer_names=layer_names)
    else:
        layers = list(source)
    return keras_layers_to_torch(layers, target=target)
