"""torch layout <-> the initializers of ONNX's native ``LSTM``/``GRU``/``RNN`` operators, one op per layer.

ONNX (opset 7+, ``layout=0``) keeps per op, with ``D`` = 1 (``direction="forward"``) or 2
(``"bidirectional"``, forward first):

* ``LSTM``: ``W [D, 4H, I]``, ``R [D, 4H, H]`` rows in ONNX's gate order (``rnnkit.gates``);
  ``B [D, 8H]`` = ``[Wb, Rb]``;
  ``P [D, 3H]`` peepholes in order **i, o, f** (i and f peep at ``c_{t-1}``, o at ``c_t``, as TF).
* ``GRU``: ``W [D, 3H, I]``, ``R [D, 3H, H]`` rows in ONNX's order, ``B [D, 6H]``; torch's swap
  the first two blocks. ``linear_before_reset=1`` is torch's reset-after math, ``0`` TF/Keras's
  reset-before math (rnnkit ``GRU(reset_after=False)``).
* ``RNN``: ``W [D, H, I]``, ``R [D, H, H]``, ``B [D, 2H]``; ``activations`` ``["Tanh"]`` or ``["Relu"]``
  per direction.

``B`` is omitted when the layer has no bias (ONNX's default is zeros). An rnnkit ``forget_bias``
is folded into ``Wb``'s f block (ONNX has no such attribute). Not expressible with these ops, so
refused here: projections (``proj_size``; ONNX's LSTM has none) and ``cell_clip`` (ONNX's ``clip``
clips the gate pre-activations, not the cell state), ``layer_norm``. Multi-layer stacks are a list of ops; layer
``k+1`` reads layer ``k``'s ``Y [T, D, B, H]`` transposed to ``[T, B, D*H]``.

Example::

    >>> ops = torch_to_onnx(torch.nn.LSTM(3, 4, num_layers=2).state_dict(), LayerConfig("LSTM", 3, 4, 2))
    >>> [(op.op_type, tuple(op.initializers["W"].shape)) for op in ops]
    [('LSTM', (1, 16, 3)), ('LSTM', (1, 16, 4))]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..gates import PEEPHOLE_ORDERS, add_to_gate, gate_block, relayout
from ._torch_layout import as_tensor, check_state_dict, direction_params, set_direction_params
from .config import GATES, LayerConfig

__all__ = ["OnnxRecurrentOp", "torch_to_onnx", "onnx_to_torch", "native_refusals"]

_PEEPHOLES = tuple(f"weight_c{gate}" for gate in PEEPHOLE_ORDERS["onnx"])  # the torch-layout names, in P's order


@dataclass
class OnnxRecurrentOp:
    """One ONNX ``LSTM``/``GRU``/``RNN`` node: ``op_type``, its ``attributes`` (``hidden_size``,
    ``direction``, ``linear_before_reset``, ``activations``) and ``initializers`` (``W``, ``R``,
    optionally ``B`` and ``P``) as torch tensors."""

    op_type: str
    attributes: dict[str, Any]
    initializers: dict[str, torch.Tensor] = field(default_factory=dict)


def native_refusals(config: LayerConfig) -> list[str]:
    """The options of ``config`` that no native ONNX recurrent operator computes, each with the reason."""
    refused = []
    if config.proj_size:
        refused.append(f"proj_size={config.proj_size} (ONNX's LSTM has no projection)")
    if config.cell_clip is not None:
        refused.append(
            f"cell_clip={config.cell_clip} (ONNX's clip attribute clips gate pre-activations, not the cell state)"
        )
    if config.layer_norm:
        refused.append("layer_norm (ONNX's recurrent operators have no normalisation)")
    return refused


def torch_to_onnx(state_dict: Mapping[str, Any], config: LayerConfig) -> list[OnnxRecurrentOp]:
    """A torch-layout stack -> one `OnnxRecurrentOp` per layer (see the module docstring for the layout)."""
    state = check_state_dict(state_dict, config, "torch_to_onnx")
    refused = native_refusals(config)
    if refused:
        raise ValueError(f"torch_to_onnx: no native ONNX {config.mode} computes " + "; ".join(refused))
    mode, h = config.mode, config.hidden_size

    def to_onnx(x: torch.Tensor) -> torch.Tensor:
        return relayout(x, mode, "torch", "onnx")

    attributes: dict[str, Any] = {
        "hidden_size": h,
        "direction": "bidirectional" if config.bidirectional else "forward",
    }
    if mode == "GRU":
        attributes["linear_before_reset"] = int(config.reset_after)
    if mode == "RNN":
        attributes["activations"] = [config.nonlinearity.capitalize()] * config.num_directions
    ops = []
    for k in range(config.num_layers):
        w, r, b, p = [], [], [], []
        for reverse in config.directions():
            params = direction_params(state, k, reverse)
            w.append(to_onnx(params["weight_ih"]))
            r.append(to_onnx(params["weight_hh"]))
            if config.bias:
                b_ih = params["bias_ih"]
                if mode == "LSTM":
                    b_ih = add_to_gate(b_ih, config.forget_bias, "LSTM", "torch", "f")
                b.append(torch.cat([to_onnx(b_ih), to_onnx(params["bias_hh"])]))
            if config.peepholes:
                p.append(torch.cat([params[name] for name in _PEEPHOLES]))
        initializers = {"W": torch.stack(w), "R": torch.stack(r)}
        if config.bias:
            initializers["B"] = torch.stack(b)
        elif mode == "LSTM" and config.forget_bias:
            initializers["B"] = torch.zeros(config.num_directions, 8 * h, dtype=w[0].dtype)
            initializers["B"][:, gate_block(4 * h, "LSTM", "onnx", "f")] = config.forget_bias  # ONNX's f block of Wb
        if config.peepholes:
            initializers["P"] = torch.stack(p)
        ops.append(OnnxRecurrentOp(mode, dict(attributes), initializers))
    return ops


def onnx_to_torch(ops: Sequence[OnnxRecurrentOp]) -> tuple[dict[str, torch.Tensor], LayerConfig]:
    """ONNX recurrent ops (one per layer, each reading the previous one's output) -> torch layout + config.

    ``P`` becomes rnnkit's ``peepholes=True``; ``linear_before_reset=0`` rnnkit's
    ``GRU(reset_after=False)``; ``activations`` other than the defaults, ``clip`` and
    ``input_forget`` are refused, since no torch-layout layer computes them.
    """
    if not ops:
        raise ValueError("onnx_to_torch: no ops")
    state: dict[str, torch.Tensor] = {}
    config: LayerConfig | None = None
    for k, op in enumerate(ops):
        layer_config, layer_state = _op_to_torch(op, k)
        if config is None:
            config = layer_config
        else:
            expected_input = config.num_directions * config.hidden_size
            if layer_config != LayerConfig(**{**config.to_dict(), "input_size": expected_input}):
                raise ValueError(
                    f"onnx_to_torch: op {k} ({op.op_type}, hidden {layer_config.hidden_size}, input "
                    f"{layer_config.input_size}) does not continue the stack (expected {config.mode}, hidden "
                    f"{config.hidden_size}, input {expected_input}, same options)"
                )
        for reverse in layer_config.directions():
            set_direction_params(state, direction_params(layer_state, 0, reverse), k, reverse)
    assert config is not None
    config = LayerConfig(**{**config.to_dict(), "num_layers": len(ops)})
    return check_state_dict(state, config, "onnx_to_torch"), config


def _op_to_torch(op: OnnxRecurrentOp, index: int) -> tuple[LayerConfig, dict[str, torch.Tensor]]:
    where = f"onnx_to_torch: op {index} ({op.op_type})"
    mode = op.op_type
    if mode not in GATES:
        raise ValueError(f"{where}: not an LSTM, GRU or RNN op")
    attrs = dict(op.attributes)
    for unsupported in ("clip", "input_forget"):
        if attrs.get(unsupported):
            raise ValueError(f"{where}: attribute {unsupported}={attrs[unsupported]} has no torch-layout equivalent")
    direction = attrs.get("direction", "forward")
    if direction not in ("forward", "bidirectional"):
        raise ValueError(f"{where}: direction={direction!r}; a torch layer runs 'forward' or 'bidirectional'")
    d = 2 if direction == "bidirectional" else 1
    defaults = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}[mode]
    activations = list(attrs.get("activations") or defaults * d)
    nonlinearity = "tanh"
    if mode == "RNN" and activations in (["Relu"] * d,):
        nonlinearity = "relu"
    elif activations != defaults * d:
        raise ValueError(f"{where}: activations={activations}; torch-layout layers use {defaults} per direction")
    w = as_tensor(op.initializers.get("W"), f"{where} W") if "W" in op.initializers else None
    r = as_tensor(op.initializers.get("R"), f"{where} R") if "R" in op.initializers else None
    if w is None or r is None:
        raise ValueError(f"{where}: missing initializer {'W' if w is None else 'R'}")
    g = GATES[mode]
    if w.dim() != 3 or w.shape[0] != d or w.shape[1] % g:
        raise ValueError(f"{where}: W has shape {tuple(w.shape)}, expected [{d}, {g}*hidden_size, input_size]")
    h = w.shape[1] // g
    if attrs.get("hidden_size", h) != h:
        raise ValueError(f"{where}: hidden_size={attrs['hidden_size']} but W has {w.shape[1]} rows ({g} gates)")
    if tuple(r.shape) != (d, g * h, h):
        raise ValueError(f"{where}: R has shape {tuple(r.shape)}, expected {(d, g * h, h)}")
    b = op.initializers.get("B")
    if b is not None:
        b = as_tensor(b, f"{where} B")
        if tuple(b.shape) != (d, 2 * g * h):
            raise ValueError(f"{where}: B has shape {tuple(b.shape)}, expected {(d, 2 * g * h)}")
    p = op.initializers.get("P")
    if p is not None:
        if mode != "LSTM":
            raise ValueError(f"{where}: P (peepholes) exists only for LSTM")
        p = as_tensor(p, f"{where} P")
        if tuple(p.shape) != (d, 3 * h):
            raise ValueError(f"{where}: P has shape {tuple(p.shape)}, expected {(d, 3 * h)}")

    def to_torch(x: torch.Tensor) -> torch.Tensor:
        return relayout(x, mode, "onnx", "torch")

    state: dict[str, torch.Tensor] = {}
    for k in range(d):
        params = {"weight_ih": to_torch(w[k]), "weight_hh": to_torch(r[k])}
        if b is not None:
            params["bias_ih"] = to_torch(b[k, : g * h])
            params["bias_hh"] = to_torch(b[k, g * h :])
        if p is not None:
            params.update(zip(_PEEPHOLES, p[k].clone().chunk(3), strict=True))
        set_direction_params(state, params, 0, k == 1)
    config = LayerConfig(
        mode=mode,
        input_size=int(w.shape[2]),
        hidden_size=h,
        bias=b is not None,
        bidirectional=d == 2,
        nonlinearity=nonlinearity,
        reset_after=bool(attrs.get("linear_before_reset", 0)) if mode == "GRU" else True,
        peepholes=p is not None,
    )
    return config, state
