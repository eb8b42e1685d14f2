"""Keras 3 recurrent layers' weights <-> the torch layout: the gate mathematics and the option checks.

Keras keeps ``kernel (I, G*H)``, ``recurrent_kernel (H, G*H)`` and ``bias``, columns in gate blocks:

Gate orders: ``rnnkit.gates`` (converted with its ``relayout``).

* ``LSTM``: Keras's blocks are torch's already: ``weight_ih = kernel.T``,
  ``weight_hh = recurrent_kernel.T``, ``bias_ih = bias``, ``bias_hh = 0``; back ``bias = bias_ih + bias_hh``.
* ``GRU``: Keras's blocks swap torch's first two. ``reset_after=True``
  (Keras's default, torch's math): ``bias (2, 3H)``, row 0 the input bias, row 1 the recurrent bias
  (``bias_ih``, ``bias_hh``). ``reset_after=False`` (TF1's math, rnnkit ``GRU(reset_after=False)``):
  ``bias (3H,)`` -> ``bias_ih``, ``bias_hh = 0``.
* ``SimpleRNN``: one block; ``activation`` ``"tanh"`` or ``"relu"`` is torch's ``nonlinearity``.
* ``Bidirectional(merge_mode="concat")``: the forward layer's weights, then the backward layer's
  (``go_backwards=True``, its outputs re-reversed): torch's direction and ``_reverse`` direction.

Example::

    >>> weights = [torch.ones(3, 16), torch.ones(4, 16), torch.ones(16)]     # kernel, recurrent_kernel, bias
    >>> layer = KerasRecurrentLayer("lstm", "LSTM", {"units": 4}, weights)
    >>> state, cfg = keras_layer_to_torch(layer)
    >>> tuple(state["weight_ih_l0"].shape), cfg.mode
    ((16, 3), 'LSTM')
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..gates import add_to_gate, gate_count, relayout
from ._torch_layout import as_tensor, check_state_dict, direction_params, set_direction_params
from .config import LayerConfig

__all__ = ["KerasRecurrentLayer", "keras_layer_to_torch", "keras_layers_to_torch", "torch_to_keras", "RECURRENT"]

RECURRENT = ("LSTM", "GRU", "SimpleRNN")
_MODE = {"LSTM": "LSTM", "GRU": "GRU", "SimpleRNN": "RNN"}
_CLASS = {v: k for k, v in _MODE.items()}


@dataclass
class KerasRecurrentLayer:
    """One Keras recurrent layer: its ``name``, ``class_name`` (``LSTM``, ``GRU``, ``SimpleRNN`` or
    ``Bidirectional``), its Keras ``config`` dict and its ``weights`` in Keras's order (``get_weights()``:
    kernel, recurrent kernel, bias; a ``Bidirectional``'s forward weights then its backward ones)."""

    name: str
    class_name: str
    config: dict[str, Any]
    weights: list[Any] = field(default_factory=list)


def _direction_configs(layer: KerasRecurrentLayer) -> list[tuple[str, dict[str, Any]]]:
    """``(class_name, config)`` of each direction, checked to be one torch layer's."""
    where = f"Keras layer {layer.name!r}"
    if layer.class_name != "Bidirectional":
        if layer.class_name not in RECURRENT:
            raise ValueError(
                f"{where} is a {layer.class_name}, not a recurrent layer (rnnkit reads LSTM, GRU, SimpleRNN and "
                "Bidirectional)"
            )
        if layer.config.get("go_backwards", False):
            raise ValueError(
                f"{where}: go_backwards=True returns the sequence reversed; no torch layer does that on its own "
                "(reverse the input and output around a forward layer instead)"
            )
        return [(layer.class_name, layer.config)]
    merge = layer.config.get("merge_mode", "concat")
    if merge != "concat":
        raise ValueError(
            f"{where}: merge_mode={merge!r}; a torch bidirectional layer concatenates its directions ('concat')"
        )
    inner = layer.config.get("layer") or {}
    backward = layer.config.get("backward_layer") or inner
    sides = []
    for side, spec, reverse in (("forward", inner, False), ("backward", backward, True)):
        class_name = spec.get("class_name")
        if class_name not in RECURRENT:
            raise ValueError(f"{where}: its {side} layer is a {class_name}, not LSTM, GRU or SimpleRNN")
        cfg = dict(spec.get("config") or {})
        if spec is inner and reverse:
            cfg["go_backwards"] = not cfg.get("go_backwards", False)
        if bool(cfg.get("go_backwards", False)) != reverse:
            raise ValueError(f"{where}: its {side} layer has go_backwards={cfg.get('go_backwards')}")
        sides.append((class_name, cfg))
    return sides


def _config_for(class_name: str, cfg: dict[str, Any], where: str) -> dict[str, Any]:
    """The torch-layout options a Keras layer config implies; ``ValueError`` for what torch lacks."""
    mode = _MODE[class_name]
    activation = cfg.get("activation", "tanh")
    allowed = ("tanh", "relu") if mode == "RNN" else ("tanh",)
    if activation not in allowed:
        raise ValueError(f"{where}: activation={activation!r}; a torch-layout {mode} supports {allowed}")
    if mode != "RNN" and cfg.get("recurrent_activation", "sigmoid") != "sigmoid":
        raise ValueError(
            f"{where}: recurrent_activation={cfg.get('recurrent_activation')!r}; torch-layout gates use 'sigmoid'"
        )
    if cfg.get("units") is None:
        raise ValueError(f"{where}: its config has no 'units'")
    return {
        "mode": mode,
        "hidden_size": int(cfg["units"]),
        "bias": bool(cfg.get("use_bias", True)),
        "nonlinearity": activation if mode == "RNN" else "tanh",
        "reset_after": bool(cfg.get("reset_after", True)) if mode == "GRU" else True,
    }


def _weight(weights: list[Any], index: int, shape: tuple[int, ...], what: str, where: str) -> torch.Tensor:
    if index >= len(weights):
        raise ValueError(f"{where}: missing weight {what} (expected shape {shape}); the layer has {len(weights)}")
    tensor = as_tensor(weights[index], f"{where} {what}")
    if tuple(tensor.shape) != shape:
        raise ValueError(f"{where}: weight {what} has shape {tuple(tensor.shape)}, expected {shape}")
    return tensor


def _direction_to_torch(
    options: dict[str, Any], weights: list[Any], input_size: int, where: str
) -> dict[str, torch.Tensor]:
    mode, h = options["mode"], options["hidden_size"]
    g = gate_count(mode)
    kernel = _weight(weights, 0, (input_size, g * h), "kernel", where)
    recurrent = _weight(weights, 1, (h, g * h), "recurrent_kernel", where)

    def to_torch(x: torch.Tensor) -> torch.Tensor:
        return relayout(x, mode, "keras", "torch").contiguous()

    out = {"weight_ih": to_torch(kernel.T), "weight_hh": to_torch(recurrent.T)}
    if options["bias"]:
        two_rows = mode == "GRU" and options["reset_after"]
        bias = _weight(weights, 2, (2, g * h) if two_rows else (g * h,), "bias", where)
        if two_rows:
            out["bias_ih"], out["bias_hh"] = to_torch(bias[0]), to_torch(bias[1])
        else:
            out["bias_ih"] = to_torch(bias)
            out["bias_hh"] = torch.zeros_like(out["bias_ih"])
    if len(weights) > 2 + options["bias"]:
        raise ValueError(f"{where}: {len(weights)} weights, expected {2 + options['bias']}")
    return out


def _input_size(layer: KerasRecurrentLayer) -> int:
    if not layer.weights:
        raise ValueError(f"Keras layer {layer.name!r}: has no weights")
    kernel = layer.weights[0]
    if len(kernel.shape) != 2:
        raise ValueError(f"Keras layer {layer.name!r}: kernel of shape {tuple(kernel.shape)} is not 2-D")
    return int(kernel.shape[0])


def keras_layer_to_torch(
    layer: KerasRecurrentLayer, *, target: str = "rnnkit", input_size: int | None = None
) -> tuple[dict[str, torch.Tensor], LayerConfig]:
    """One Keras ``LSTM``/``GRU``/``SimpleRNN``/``Bidirectional`` -> a one-layer torch-layout state dict + config.

    ``target="torch.nn"`` refuses what ``torch.nn`` cannot run (a ``reset_after=False`` GRU);
    ``target="rnnkit"`` allows it (rnnkit ``GRU(reset_after=False)``). Missing weights or wrong
    shapes raise ``ValueError`` naming the layer, the weight and both shapes.
    """
    where = f"Keras layer {layer.name!r}"
    sides = _direction_configs(layer)
    options = [_config_for(c, cfg, where) for c, cfg in sides]
    if len(options) == 2 and options[0] != options[1]:
        raise ValueError(f"{where}: the forward and backward layers differ ({options[0]} vs {options[1]})")
    input_size = _input_size(layer) if input_size is None else input_size
    per_direction = (len(layer.weights) // len(sides)) if sides else 0
    if len(layer.weights) != per_direction * len(sides):
        raise ValueError(f"{where}: {len(layer.weights)} weights do not split into {len(sides)} directions")
    state: dict[str, torch.Tensor] = {}
    for k, _ in enumerate(sides):
        chunk = layer.weights[k * per_direction : (k + 1) * per_direction]
        side_where = where + (f" ({'forward' if k == 0 else 'backward'})" if len(sides) == 2 else "")
        set_direction_params(state, _direction_to_torch(options[0], chunk, input_size, side_where), 0, k == 1)
    config = LayerConfig(input_size=input_size, num_layers=1, bidirectional=len(sides) == 2, **options[0])
    if target == "torch.nn":
        reasons = config.torch_nn_incompatibilities()
        if reasons:
            raise ValueError(f"{where}: cannot be a torch.nn.{config.mode}: " + "; ".join(reasons))
    elif target != "rnnkit":
        raise ValueError(f"keras_layer_to_torch: target must be 'rnnkit' or 'torch.nn', got {target!r}")
    return state, config


def keras_layers_to_torch(
    layers: list[KerasRecurrentLayer], *, target: str = "rnnkit"
) -> tuple[dict[str, torch.Tensor], LayerConfig]:
    """Stacked Keras recurrent layers (each feeding the next) -> one multi-layer torch-layout stack.

    Every layer must have the same kind, size, direction count and options, and every layer but the
    last must return sequences; otherwise ``ValueError`` says which layer differs.
    """
    if not layers:
        raise ValueError("keras_layers_to_torch: no layers")
    state: dict[str, torch.Tensor] = {}
    first: LayerConfig | None = None
    for k, layer in enumerate(layers):
        layer_state, config = keras_layer_to_torch(layer, target=target)
        if first is None:
            first = config
        else:
            expected_input = first.num_directions * first.hidden_size
            same = replace(config, input_size=first.input_size) == first
            if not same or config.input_size != expected_input:
                raise ValueError(
                    f"keras_layers_to_torch: layer {layer.name!r} ({config.mode}, {config.hidden_size} units, "
                    f"input {config.input_size}) does not continue a stack of {first.mode}, {first.hidden_size} "
                    f"units (expected input {expected_input}); one torch layer needs identical stacked layers"
                )
        if k < len(layers) - 1 and not _returns_sequences(layer):
            raise ValueError(
                f"keras_layers_to_torch: layer {layer.name!r} has return_sequences=False, so the next layer "
                "reads one vector, not a sequence; it cannot be stacked"
            )
        for reverse in first.directions():
            set_direction_params(state, direction_params(layer_state, 0, reverse), k, reverse)
    assert first is not None
    config = replace(first, num_layers=len(layers))
    return check_state_dict(state, config, "keras_layers_to_torch"), config


def _returns_sequences(layer: KerasRecurrentLayer) -> bool:
    if layer.class_name == "Bidirectional":
        inner = (layer.config.get("layer") or {}).get("config") or {}
        return bool(inner.get("return_sequences", False))
    return bool(layer.config.get("return_sequences", False))


def torch_to_keras(
    state_dict: dict[str, Any], config: LayerConfig, *, name_prefix: str | None = None
) -> list[KerasRecurrentLayer]:
    """A torch-layout stack -> one Keras layer per torch layer (``Bidirectional`` for two directions).

    Configs hold the fields that matter to the weights (``units``, ``activation``,
    ``recurrent_activation``, ``use_bias``, ``reset_after``, ``return_sequences=True``). An LSTM's
    ``forget_bias`` is folded into the forget-gate bias (Keras has no run-time forget bias);
    projections, peepholes, ``cell_clip`` and ``layer_norm`` are refused (Keras has none).
    """
    state = check_state_dict(state_dict, config, "torch_to_keras")
    options = {
        f"proj_size={config.proj_size}": config.proj_size,
        "peepholes": config.peepholes,
        f"cell_clip={config.cell_clip}": config.cell_clip is not None,
        "layer_norm": config.layer_norm,
    }
    refused = [option for option, present in options.items() if present]
    if refused:
        raise ValueError(f"torch_to_keras: Keras's {config.mode} has no " + ", ".join(refused))
    class_name = _CLASS[config.mode]
    prefix = name_prefix or {"LSTM": "lstm", "GRU": "gru", "RNN": "simple_rnn"}[config.mode]
    layers = []
    for k in range(config.num_layers):
        cfg: dict[str, Any] = {
            "name": f"{prefix}_{k}" if config.num_layers > 1 else prefix,
            "units": config.hidden_size,
            "activation": config.nonlinearity,
            "use_bias": config.bias,
            "return_sequences": True,
            "go_backwards": False,
        }
        if config.mode != "RNN":
            cfg["recurrent_activation"] = "sigmoid"
        if config.mode == "GRU":
            cfg["reset_after"] = config.reset_after
        weights: list[torch.Tensor] = []
        for reverse in config.directions():
            weights += _direction_to_keras(config, direction_params(state, k, reverse))
        if config.bidirectional:
            backward = {**cfg, "name": f"backward_{cfg['name']}", "go_backwards": True}
            forward = {**cfg, "name": f"forward_{cfg['name']}"}
            layers.append(
                KerasRecurrentLayer(
                    f"bidirectional_{cfg['name']}",
                    "Bidirectional",
                    {
                        "name": f"bidirectional_{cfg['name']}",
                        "merge_mode": "concat",
                        "layer": {"class_name": class_name, "config": forward},
                        "backward_layer": {"class_name": class_name, "config": backward},
                    },
                    weights,
                )
            )
        else:
            layers.append(KerasRecurrentLayer(cfg["name"], class_name, cfg, weights))
    return layers


def _direction_to_keras(config: LayerConfig, params: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    mode = config.mode

    def to_keras(x: torch.Tensor) -> torch.Tensor:
        return relayout(x, mode, "torch", "keras")

    weights = [to_keras(params["weight_ih"]).T.contiguous(), to_keras(params["weight_hh"]).T.contiguous()]
    if config.bias:
        if mode == "GRU" and config.reset_after:
            weights.append(torch.stack([to_keras(params["bias_ih"]), to_keras(params["bias_hh"])]))
        else:
            bias = params["bias_ih"] + params["bias_hh"]
            if mode == "LSTM":
                bias = add_to_gate(bias, config.forget_bias, "LSTM", "torch", "f")
            weights.append(to_keras(bias))
    elif config.mode == "LSTM" and config.forget_bias:
        raise ValueError("torch_to_keras: forget_bias needs a bias to fold into, but bias=False")
    return weights
