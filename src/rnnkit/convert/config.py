"""`LayerConfig`: what a torch-layout state dict needs beside its tensors to be one recurrent layer stack.

The torch layout is ``torch.nn.LSTM/GRU/RNN``'s (and ``rnnkit.LSTM/GRU/RNN``'s) state dict: for layer
``k`` and direction suffix ``s`` (``""`` or ``"_reverse"``)::

    weight_ih_l{k}{s}  (G*H, I_k)     I_0 = input_size, I_k = D * (proj_size or H) above
    weight_hh_l{k}{s}  (G*H, P)       P = proj_size or H
    bias_ih_l{k}{s}    (G*H,)         with bias=True
    bias_hh_l{k}{s}    (G*H,)
    weight_hr_l{k}{s}  (P, H)         LSTM with proj_size > 0
    weight_c{i,f,o}_l{k}{s} (H,)      rnnkit LSTM with peepholes=True (not in torch.nn)
    weight_ln_gates_l{k}{s}, bias_ln_gates_l{k}{s} (4H,), weight_ln_cell_l{k}{s}, bias_ln_cell_l{k}{s} (H,)
                                      rnnkit LSTM with layer_norm=True (TF's LayerNormBasicLSTMCell)

with ``G`` = 4 (LSTM), 3 (GRU) or 1 (RNN) row blocks in torch's gate order (``rnnkit.gates``) and ``D`` = 2 if
bidirectional else 1. Options beyond ``torch.nn`` (``forget_bias``, ``peepholes``, ``cell_clip``, ``layer_norm``,
GRU ``reset_after=False``) are rnnkit layer options; :meth:`LayerConfig.torch_nn_kwargs` refuses them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from ..gates import FAMILIES, PEEPHOLE_ORDERS, gate_count
from ..layers import GRU, LSTM, RNN

__all__ = [
    "LayerConfig",
    "GATES",
    "PEEPHOLE_KEYS",
    "LAYER_NORM_KEYS",
    "LAYERS",
    "TORCH_NN_LAYERS",
    "torch_key",
    "layer_description",
    "layer_from_state_dict",
]

GATES = {family: gate_count(family) for family in FAMILIES}
#: rnnkit's layer class of each mode, and the mode of each torch.nn layer class (the exact classes)
LAYERS: dict[str, type[torch.nn.Module]] = {"RNN": RNN, "LSTM": LSTM, "GRU": GRU}
TORCH_NN_LAYERS: dict[type[torch.nn.Module], str] = {torch.nn.RNN: "RNN", torch.nn.LSTM: "LSTM", torch.nn.GRU: "GRU"}
# rnnkit.LSTM's extra parameters, per layer and direction: the peephole diagonals of the input, forget and
# output gates, and (layer_norm=True) the gains and shifts of the gate norms (torch's gate blocks) and the cell norm.
PEEPHOLE_KEYS = tuple(f"weight_c{gate}" for gate in PEEPHOLE_ORDERS["torch"])
LAYER_NORM_KEYS = ("weight_ln_gates", "bias_ln_gates", "weight_ln_cell", "bias_ln_cell")


def torch_key(name: str, layer: int, reverse: bool) -> str:
    """``torch_key("weight_ih", 1, True) == "weight_ih_l1_reverse"``."""
    return f"{name}_l{layer}{'_reverse' if reverse else ''}"


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"LayerConfig: {name} must be a positive int, got {value!r}")
    return value


@dataclass(frozen=True)
class LayerConfig:
    """The configuration of a (multi-layer, maybe bidirectional) recurrent layer in torch's layout.

    ``mode`` is ``"LSTM"``, ``"GRU"`` or ``"RNN"``. The ``torch.nn`` fields (``input_size``,
    ``hidden_size``, ``num_layers``, ``bias``, ``bidirectional``, ``proj_size``, ``nonlinearity``)
    mean what they mean there. rnnkit's extra options:

    * ``forget_bias`` (LSTM): added to the forget gate's pre-activation at run time, TF's
      ``BasicLSTMCell`` semantics; 0 in ``torch.nn``.
    * ``peepholes`` (LSTM): TF ``LSTMCell(use_peepholes=True)`` diagonals (``weight_c{i,f,o}`` keys).
    * ``cell_clip`` (LSTM): the memory clipped to ``[-cell_clip, cell_clip]`` after each step.
    * ``layer_norm`` (LSTM): TF's ``LayerNormBasicLSTMCell`` step (``weight_ln_*``/``bias_ln_*`` keys), with
      ``proj_size`` followed by the projection ``h = W_hr h`` (no TF cell has that combination).
    * ``reset_after`` (GRU): ``True`` is torch's/cuDNN's ``n = tanh(W_in x + b_in + r*(W_hn h + b_hn))``;
      ``False`` is TF/Keras's ``n = tanh(W_in x + b_in + W_hn (r*h) + b_hn)``.

    Example::

        >>> cfg = LayerConfig("LSTM", input_size=3, hidden_size=4, num_layers=2, forget_bias=1.0)
        >>> cfg.torch_nn_compatible, cfg.parameter_shapes()["weight_ih_l1"]
        (False, (16, 4))
    """

    mode: str
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bias: bool = True
    bidirectional: bool = False
    proj_size: int = 0
    nonlinearity: str = "tanh"
    reset_after: bool = True
    forget_bias: float = 0.0
    peepholes: bool = False
    cell_clip: float | None = None
    layer_norm: bool = False

    def __post_init__(self) -> None:
        if self.mode not in GATES:
            raise ValueError(f"LayerConfig: mode must be one of {sorted(GATES)}, got {self.mode!r}")
        _positive_int(self.input_size, "input_size")
        _positive_int(self.hidden_size, "hidden_size")
        _positive_int(self.num_layers, "num_layers")
        if self.proj_size and (self.mode != "LSTM" or not 0 < self.proj_size < self.hidden_size):
            raise ValueError(
                f"LayerConfig: proj_size must be 0, or an LSTM's int in (0, hidden_size={self.hidden_size}); "
                f"got {self.proj_size!r} for {self.mode}"
            )
        if self.nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"LayerConfig: nonlinearity must be 'tanh' or 'relu', got {self.nonlinearity!r}")
        if self.mode != "RNN" and self.nonlinearity != "tanh":
            raise ValueError(f"LayerConfig: nonlinearity={self.nonlinearity!r} is for mode 'RNN', not {self.mode}")
        if self.mode != "GRU" and not self.reset_after:
            raise ValueError(f"LayerConfig: reset_after=False is a GRU option, not one of {self.mode}")
        if self.mode != "LSTM" and (
            self.forget_bias or self.peepholes or self.cell_clip is not None or self.layer_norm
        ):
            raise ValueError(
                f"LayerConfig: forget_bias, peepholes, cell_clip and layer_norm are LSTM options, not {self.mode}'s"
            )
        if self.layer_norm and (self.peepholes or self.cell_clip is not None):
            # The projection is fine: rnnkit.LSTM(layer_norm=True, proj_size=P) projects the normalised step's h.
            raise ValueError(
                "LayerConfig: layer_norm=True is TF's LayerNormBasicLSTMCell step, which has no peepholes or cell_clip"
            )
        if self.cell_clip is not None and not self.cell_clip >= 0:
            raise ValueError(f"LayerConfig: cell_clip must be a non-negative number or None, got {self.cell_clip!r}")

    # -- derived sizes -----------------------------------------------------------------------------
    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def gate_count(self) -> int:
        return GATES[self.mode]

    @property
    def output_size(self) -> int:
        """Features per direction of each layer's output (``proj_size`` or ``hidden_size``)."""
        return self.proj_size or self.hidden_size

    def layer_input_size(self, layer: int) -> int:
        return self.input_size if layer == 0 else self.num_directions * self.output_size

    def directions(self) -> tuple[bool, ...]:
        """The ``reverse`` flags of the directions: ``(False,)`` or ``(False, True)``."""
        return (False, True) if self.bidirectional else (False,)

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every key of the state dict and its shape, in ``torch.nn``'s order."""
        gh, h, p = self.gate_count * self.hidden_size, self.hidden_size, self.output_size
        shapes: dict[str, tuple[int, ...]] = {}
        for layer in range(self.num_layers):
            for reverse in self.directions():
                shapes[torch_key("weight_ih", layer, reverse)] = (gh, self.layer_input_size(layer))
                shapes[torch_key("weight_hh", layer, reverse)] = (gh, p)
                if self.bias:
                    shapes[torch_key("bias_ih", layer, reverse)] = (gh,)
                    shapes[torch_key("bias_hh", layer, reverse)] = (gh,)
                if self.proj_size:
                    shapes[torch_key("weight_hr", layer, reverse)] = (p, h)
                if self.peepholes:
                    for name in PEEPHOLE_KEYS:
                        shapes[torch_key(name, layer, reverse)] = (h,)
                if self.layer_norm:
                    for name in LAYER_NORM_KEYS:
                        shapes[torch_key(name, layer, reverse)] = (gh,) if name.endswith("gates") else (h,)
        return shapes

    # -- torch.nn and rnnkit constructors -----------------------------------------------------------
    def torch_nn_incompatibilities(self) -> list[str]:
        """Why ``torch.nn`` cannot run this configuration exactly (empty when it can)."""
        reasons = []
        if self.forget_bias:
            reasons.append(
                f"forget_bias={self.forget_bias} (torch.nn has none; fold it into the forget-gate bias: "
                "convert with target='torch.nn')"
            )
        if self.peepholes:
            reasons.append("peepholes (torch.nn.LSTM has no peephole connections)")
        if self.cell_clip is not None:
            reasons.append(f"cell_clip={self.cell_clip} (torch.nn.LSTM never clips its cell state)")
        if self.layer_norm:
            reasons.append("layer_norm (torch.nn.LSTM has no layer normalisation)")
        if not self.reset_after:
            reasons.append(
                "reset_after=False: TF/Keras's GRU applies the reset gate before the recurrent matrix "
                "multiply, torch.nn.GRU after it; no weights make one equal the other"
            )
        return reasons

    @property
    def torch_nn_compatible(self) -> bool:
        return not self.torch_nn_incompatibilities()

    def _shared_kwargs(self) -> dict[str, Any]:
        """The constructor arguments ``torch.nn``'s layers and rnnkit's share."""
        return {
            "input_size": self.input_size,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "bias": self.bias,
            "bidirectional": self.bidirectional,
        }

    def torch_nn_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``torch.nn.LSTM/GRU/RNN``; ``ValueError`` naming any option it lacks."""
        reasons = self.torch_nn_incompatibilities()
        if reasons:
            raise ValueError(f"LayerConfig: not expressible as torch.nn.{self.mode}: " + "; ".join(reasons))
        kwargs = self._shared_kwargs()
        if self.mode == "LSTM":
            kwargs["proj_size"] = self.proj_size
        if self.mode == "RNN":
            kwargs["nonlinearity"] = self.nonlinearity
        return kwargs

    def torch_nn_module(self, **kwargs: Any) -> torch.nn.RNNBase:
        """A new ``torch.nn.LSTM/GRU/RNN`` of this configuration (``kwargs``: ``batch_first``, ``dtype`` ...)."""
        return getattr(torch.nn, self.mode)(**self.torch_nn_kwargs(), **kwargs)

    def layer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``rnnkit.LSTM/GRU/RNN`` (torch.nn's plus rnnkit's options of this mode)."""
        kwargs = self._shared_kwargs()
        if self.mode == "LSTM":
            kwargs.update(
                proj_size=self.proj_size,
                forget_bias=self.forget_bias,
                peepholes=self.peepholes,
                cell_clip=self.cell_clip,
                layer_norm=self.layer_norm,
            )
        elif self.mode == "GRU":
            kwargs["reset_after"] = self.reset_after
        else:
            kwargs["nonlinearity"] = self.nonlinearity
        return kwargs

    # -- serialisation ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"LayerConfig: unknown fields {unknown}; known: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_module(cls, module: torch.nn.Module) -> LayerConfig:
        """The configuration of a ``torch.nn.LSTM/GRU/RNN`` (or an ``rnnkit`` layer with the same attributes)."""
        mode = getattr(module, "mode", None)
        mode = {"RNN_TANH": "RNN", "RNN_RELU": "RNN"}.get(mode, mode)
        if mode not in GATES:
            raise TypeError(f"LayerConfig.from_module: expected an LSTM, GRU or RNN layer, got {type(module).__name__}")
        nonlinearity = getattr(module, "nonlinearity", "tanh") if mode == "RNN" else "tanh"
        return cls(
            mode=mode,
            input_size=module.input_size,
            hidden_size=module.hidden_size,
            num_layers=module.num_layers,
            bias=module.bias,
            bidirectional=module.bidirectional,
            proj_size=getattr(module, "proj_size", 0) or 0,
            nonlinearity=nonlinearity,
            reset_after=getattr(module, "reset_after", True),
            forget_bias=getattr(module, "forget_bias", 0.0) if mode == "LSTM" else 0.0,
            peepholes=getattr(module, "peepholes", False) if mode == "LSTM" else False,
            cell_clip=getattr(module, "cell_clip", None) if mode == "LSTM" else None,
            layer_norm=getattr(module, "layer_norm", False) if mode == "LSTM" else False,
        )


# -- rnnkit layers -----------------------------------------------------------------------------------------------
def layer_description(module: torch.nn.Module) -> dict[str, Any]:
    """``{"class": ..., "args": ...}``: the constructor call of an ``rnnkit.RNN/LSTM/GRU`` computing ``module``
    (an rnnkit layer, or a ``torch.nn.RNN/LSTM/GRU`` as the rnnkit layer of its configuration), as JSON.

    rnnkit's save format (`rnnkit.saving`) and `export_onnx`'s metadata hold this description.

    Example::

        >>> layer_description(torch.nn.GRU(3, 4))["args"]["hidden_size"]
        4
    """
    name = TORCH_NN_LAYERS.get(type(module)) or type(module).__name__
    args = LayerConfig.from_module(module).layer_kwargs()
    args.update(batch_first=bool(module.batch_first), dropout=float(module.dropout))
    args.update(
        recurrent_dropout=float(getattr(module, "recurrent_dropout", 0.0)),
        zoneout=float(getattr(module, "zoneout", 0.0)),
    )
    return {"class": name, "args": args}


def layer_from_state_dict(state_dict: Any, config: LayerConfig, **options: Any) -> torch.nn.Module:
    """A new ``rnnkit.RNN/LSTM/GRU`` of ``config`` holding ``state_dict``, in eval mode.

    ``options``: the layer's other arguments (``batch_first``, ``dropout``, ``zoneout`` ...). The initial
    weights it draws (then overwritten) leave the caller's random stream untouched.

    Example::

        >>> lstm = torch.nn.LSTM(3, 4)
        >>> layer = layer_from_state_dict(lstm.state_dict(), LayerConfig.from_module(lstm), batch_first=True)
        >>> type(layer).__name__, layer.batch_first, layer.training
        ('LSTM', True, False)
    """
    with torch.random.fork_rng(devices=[]):
        layer = LAYERS[config.mode](**config.layer_kwargs(), **options)
    layer.load_state_dict(state_dict)
    return layer.eval()
