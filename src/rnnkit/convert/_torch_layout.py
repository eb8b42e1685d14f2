"""torch-layout state dicts: validation against a `LayerConfig`, inferring one, and safe loading from disk."""

from __future__ import annotations

import os
import pickle
import re
import shlex
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import GATES, LAYER_NORM_KEYS, PEEPHOLE_KEYS, LayerConfig, torch_key

__all__ = [
    "check_state_dict",
    "infer_config",
    "load_torch_state_dict",
    "as_tensor",
    "direction_params",
    "set_direction_params",
]

_KEY = re.compile(
    r"^(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr|weight_c[ifo]|(?:weight|bias)_ln_(?:gates|cell))_l(\d+)(_reverse)?$"
)


def as_tensor(value: Any, name: str) -> torch.Tensor:
    """A detached torch tensor from a tensor or an array (floating point), for the layout functions."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
    elif isinstance(value, np.ndarray) or np.isscalar(value):
        array = np.asarray(value)
        if array.dtype == object:
            raise TypeError(f"{name}: expected a numeric array, got an array of Python objects")
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    else:
        raise TypeError(f"{name}: expected a torch.Tensor or np.ndarray, got {type(value).__name__}")
    if not tensor.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {tensor.dtype}")
    return tensor


def check_state_dict(
    state_dict: Mapping[str, Any], config: LayerConfig, component: str = "state dict"
) -> dict[str, torch.Tensor]:
    """Validate ``state_dict`` against ``config``: every key present with its shape, nothing else.

    Returns the tensors (arrays converted) in ``torch.nn``'s key order. Errors name the key and
    both shapes: ``weight_hh_l1: expected shape (16, 4), got (16, 5)``.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"{component}: expected a mapping of names to tensors, got {type(state_dict).__name__}")
    expected = config.parameter_shapes()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if unexpected:
            parts.append(f"unexpected {unexpected}")
        raise ValueError(f"{component}: keys do not match a {_describe(config)}: " + "; ".join(parts))
    out = {}
    for key, shape in expected.items():
        tensor = as_tensor(state_dict[key], f"{component}[{key!r}]")
        if tuple(tensor.shape) != shape:
            raise ValueError(
                f"{component}: {key}: expected shape {shape} for a {_describe(config)}, got {tuple(tensor.shape)}"
            )
        out[key] = tensor
    return out


def _describe(config: LayerConfig) -> str:
    extras = [f"num_layers={config.num_layers}"]
    if config.bidirectional:
        extras.append("bidirectional")
    if config.proj_size:
        extras.append(f"proj_size={config.proj_size}")
    if config.peepholes:
        extras.append("peepholes")
    if config.layer_norm:
        extras.append("layer_norm")
    return f"{config.mode}({config.input_size}, {config.hidden_size}, {', '.join(extras)})"


def direction_params(state: Mapping[str, torch.Tensor], layer: int, reverse: bool) -> dict[str, torch.Tensor]:
    """The tensors of one layer and direction under their short names (``weight_ih``, ``bias_hh`` ...)."""
    suffix = f"_l{layer}{'_reverse' if reverse else ''}"
    return {key[: -len(suffix)]: value for key, value in state.items() if key.endswith(suffix)}


def set_direction_params(
    state: dict[str, torch.Tensor], params: Mapping[str, torch.Tensor], layer: int, reverse: bool
) -> None:
    order = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr", *PEEPHOLE_KEYS, *LAYER_NORM_KEYS)
    for name in order:
        if name in params:
            state[torch_key(name, layer, reverse)] = params[name]


def infer_config(
    state_dict: Mapping[str, Any],
    mode: str | None = None,
    *,
    nonlinearity: str = "tanh",
    reset_after: bool = True,
    forget_bias: float = 0.0,
    cell_clip: float | None = None,
) -> LayerConfig:
    """The `LayerConfig` that a torch-layout state dict's keys and shapes imply, then validated.

    ``mode`` (``"LSTM"``, ``"GRU"``, ``"RNN"``) is inferred from the gate count
    ``weight_ih_l0.shape[0] / hidden_size`` when omitted. What shapes cannot tell (``nonlinearity``
    of an RNN, ``reset_after`` of a GRU, ``forget_bias``, ``cell_clip``) comes from the arguments.

    Example::

        >>> infer_config(torch.nn.GRU(3, 4, num_layers=2).state_dict()).mode
        'GRU'
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"infer_config: expected a mapping of names to tensors, got {type(state_dict).__name__}")
    parsed = {}
    for key in state_dict:
        match = _KEY.match(key)
        if not match:
            raise ValueError(
                f"infer_config: {key!r} is not a key of a torch-layout recurrent layer "
                "(weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0, weight_hr_l0, ... with '_reverse')"
            )
        parsed[key] = (match.group(1), int(match.group(2)), bool(match.group(3)))
    if "weight_ih_l0" not in state_dict or "weight_hh_l0" not in state_dict:
        raise ValueError("infer_config: the state dict has no weight_ih_l0 / weight_hh_l0")
    w_ih = as_tensor(state_dict["weight_ih_l0"], "weight_ih_l0")
    proj = state_dict.get("weight_hr_l0")
    if w_ih.dim() != 2:
        raise ValueError(f"infer_config: weight_ih_l0 must be 2-D (gates*hidden, input), got {tuple(w_ih.shape)}")
    if proj is not None:
        proj_size, hidden = (int(d) for d in as_tensor(proj, "weight_hr_l0").shape)
    else:
        proj_size, hidden = 0, int(as_tensor(state_dict["weight_hh_l0"], "weight_hh_l0").shape[-1])
    if mode is None:
        gates = w_ih.shape[0] // hidden if hidden and w_ih.shape[0] % hidden == 0 else 0
        by_gates = {g: m for m, g in GATES.items()}
        if gates not in by_gates:
            raise ValueError(
                f"infer_config: weight_ih_l0 has {w_ih.shape[0]} rows for hidden size {hidden}: "
                "not 4x (LSTM), 3x (GRU) or 1x (RNN); pass mode="
            )
        mode = by_gates[gates]
    config = LayerConfig(
        mode=mode,
        input_size=int(w_ih.shape[1]),
        hidden_size=hidden,
        num_layers=1 + max(layer for _, layer, _ in parsed.values()),
        bias="bias_ih_l0" in state_dict,
        bidirectional=any(reverse for _, _, reverse in parsed.values()),
        proj_size=proj_size,
        nonlinearity=nonlinearity if mode == "RNN" else "tanh",
        reset_after=reset_after if mode == "GRU" else True,
        forget_bias=forget_bias if mode == "LSTM" else 0.0,
        peepholes=any(name in PEEPHOLE_KEYS for name, _, _ in parsed.values()),
        cell_clip=cell_clip if mode == "LSTM" else None,
        layer_norm=any(name in LAYER_NORM_KEYS for name, _, _ in parsed.values()),
    )
    check_state_dict(state_dict, config, "infer_config")
    return config


# torch.save's files: a zip archive, or (before torch 1.6) a pickle stream opening with this magic number.
_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"


def _pickle_hint(path: Path) -> str:
    return (
        f"{str(path)!r} holds pickled Python objects, not just tensors; rnnkit loads weights with "
        "torch.load(weights_only=True) and never unpickles arbitrary objects (they can run code). "
        "Re-save the weights alone: torch.save(model.state_dict(), path)"
    )


def _refusal(err: Exception) -> str:
    """What torch's weights-only unpickler refused, in one clean line (its message has escape codes and advice
    to allowlist classes, which rnnkit does not take)."""
    from .guards import one_line

    text = one_line(str(err))
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found:
        return f"it needs the Python object {found.group(1).rstrip('.')}, which weights_only loading refuses"
    found = re.search(r"WeightsUnpickler error: (.*?)(?: Please use | Check the documentation |$)", text)
    return found.group(1).strip() if found else text or "truncated"


def _nested_hint(obj: Mapping) -> str:
    """How to pick a state dict nested in a checkpoint dict (the entries that map names to tensors)."""
    inner = [
        str(k) for k, v in obj.items()
        if isinstance(v, Mapping) and v and all(isinstance(t, torch.Tensor) for t in v.values())
    ]  # fmt: skip
    if len(inner) == 1:
        name = inner[0]
        cli = f"rnnkit convert: --key {shlex.quote(name)}"
        return f"the state dict seems to be under {name!r}: pass key={name!r} ({cli})"
    return "pass key= (rnnkit convert: --key NAME) to pick the state dict inside a checkpoint" + (
        f"; entries holding tensors: {inner}" if inner else ""
    )


def load_torch_state_dict(path: str | os.PathLike, key: str | None = None) -> dict[str, torch.Tensor]:
    """Load a ``torch.save``-d state dict with ``torch.load(weights_only=True)``: tensors only, never code.

    ``key`` picks a nested entry of a training checkpoint (``{"model": state_dict, "epoch": 3}``),
    ``"model.rnn"`` descending twice; the result must map names to tensors. A file holding other
    Python objects (a pickled ``nn.Module``, a custom class) raises ``ValueError`` saying so.

    Example::

        >>> torch.save(torch.nn.LSTM(3, 4).state_dict(), "lstm.pt")
        >>> sorted(load_torch_state_dict("lstm.pt"))[:2]
        ['bias_hh_l0', 'bias_ih_l0']
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_torch_state_dict: no file {str(path)!r}")
    with path.open("rb") as f:
        head = f.read(len(_LEGACY_MAGIC))
    if not head.startswith(b"PK\x03\x04") and head != _LEGACY_MAGIC:
        if head[:1] == b"\x80":
            raise ValueError(f"load_torch_state_dict: {_pickle_hint(path)} (a plain pickle, not a torch.save file)")
        raise ValueError(f"load_torch_state_dict: {str(path)!r} is not a torch.save file (first bytes {head!r})")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"load_torch_state_dict: {_pickle_hint(path)} ({_refusal(err)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(
            f"load_torch_state_dict: {str(path)!r} is not a readable torch.save file ({type(err).__name__}: "
            f"{_refusal(err)})"
        ) from None
    for part in key.split(".") if key else []:
        if not isinstance(obj, Mapping) or part not in obj:
            found = sorted(obj) if isinstance(obj, Mapping) else type(obj).__name__
            raise KeyError(f"load_torch_state_dict: {str(path)!r} has no entry {part!r} (found {found})")
        obj = obj[part]
    if not isinstance(obj, Mapping):
        raise ValueError(f"load_torch_state_dict: {str(path)!r} holds a {type(obj).__name__}, not a state dict")
    not_tensors = {k: type(v).__name__ for k, v in obj.items() if not isinstance(v, torch.Tensor)}
    if not_tensors:
        raise ValueError(
            f"load_torch_state_dict: {str(path)!r} is not a flat state dict; entries that are not tensors: "
            f"{not_tensors}; {_nested_hint(obj)}"
        )
    return dict(obj)
