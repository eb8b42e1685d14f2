"""TF1 variable names of whole recurrent stacks: which cells a checkpoint holds, in which topology.

TF1 names a cell's variables by the scopes it was called in::

    rnn/basic_lstm_cell/kernel                                      dynamic_rnn(BasicLSTMCell)
    rnn/multi_rnn_cell/cell_1/gru_cell/gates/kernel                 dynamic_rnn(MultiRNNCell([...]))
    bidirectional_rnn/fw/lstm_cell/projection/kernel                bidirectional_dynamic_rnn(fw, bw)
    stack_bidirectional_rnn/cell_0/bidirectional_rnn/bw/basic_lstm_cell/bias
                                                                    contrib's stack_bidirectional_dynamic_rnn

`parse_tf_variables` finds the cells of one such stack (`TFRNNVariables`) and checks that every
variable is there with a shape consistent with the others; `rnnkit.convert._tf_stack` moves the
parsed stack to and from the torch layout.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = [
    "TFCellVariables",
    "TFRNNVariables",
    "parse_tf_variables",
    "CELL_SCOPES",
    "TF_DEFAULT_FORGET_BIAS",
    "AssumedForgetBiasWarning",
    "resolve_forget_bias",
]

# TF1's BasicLSTMCell, LSTMCell and LayerNormBasicLSTMCell add 1.0 to the forget gate unless told otherwise.
TF_DEFAULT_FORGET_BIAS = 1.0


class AssumedForgetBiasWarning(UserWarning):
    """A TF1 LSTM's ``forget_bias`` was not passed, so TF's default 1.0 was assumed (a checkpoint does not store it)."""


def resolve_forget_bias(
    forget_bias: float | None, cell_types: list[str], scope: str, component: str, stacklevel: int = 3
) -> float:
    """``forget_bias``, or TF's default with one `AssumedForgetBiasWarning` when it is ``None`` and the stack has
    LSTM cells (``cell_types``: their TF class names). A model trained with another forget bias computes other
    outputs from the same variables (ptb and DeepSpeech train with 0.0: their logits move by about 0.09)."""
    if forget_bias is not None:
        return float(forget_bias)
    lstms = sorted({t for t in cell_types if _MODE.get(t) == "LSTM"})
    if lstms:
        warnings.warn(
            f"{component}: forget_bias={TF_DEFAULT_FORGET_BIAS} assumed for the {', '.join(lstms)} at {scope!r} "
            "(TF's default; a TF1 checkpoint does not store it, and a model trained with another value, e.g. 0.0 "
            "as ptb and DeepSpeech are, computes different outputs). Pass forget_bias= (rnnkit convert: "
            "--forget-bias) with the value the TF code used",
            AssumedForgetBiasWarning,
            stacklevel=stacklevel,
        )
    return TF_DEFAULT_FORGET_BIAS


CELL_SCOPES = {
    "basic_lstm_cell": "BasicLSTMCell",
    "lstm_cell": "LSTMCell",
    "gru_cell": "GRUCell",
    "basic_rnn_cell": "BasicRNNCell",
    "layer_norm_basic_lstm_cell": "LayerNormBasicLSTMCell",
}
_SCOPE_OF = {v: k for k, v in CELL_SCOPES.items()}
_NORMS = tuple(f"{gate}/{p}" for gate in ("input", "transform", "forget", "output", "state") for p in ("gamma", "beta"))
_PARAMS = {
    "BasicLSTMCell": ("kernel", "bias"),
    "LSTMCell": ("kernel", "bias", "w_f_diag", "w_i_diag", "w_o_diag", "projection/kernel"),
    "GRUCell": ("gates/kernel", "gates/bias", "candidate/kernel", "candidate/bias"),
    "BasicRNNCell": ("kernel", "bias"),
    "LayerNormBasicLSTMCell": ("kernel", "bias", *_NORMS),
}
_MODE = {"BasicLSTMCell": "LSTM", "LSTMCell": "LSTM", "LayerNormBasicLSTMCell": "LSTM", "GRUCell": "GRU"}
_CELL_SEGMENT = re.compile(rf"({'|'.join(CELL_SCOPES)})(_\d+)?")
_TOPOLOGIES = ("unidirectional", "bidirectional", "stack_bidirectional")
_DEFAULT_SCOPE = {
    "unidirectional": "rnn",
    "bidirectional": "bidirectional_rnn",
    "stack_bidirectional": "stack_bidirectional_rnn",
}


@dataclass
class TFCellVariables:
    """One TF1 cell: its class name, its variables (names relative to its scope) and run-time options.

    ``scope_name`` is the cell's own scope segment (``basic_lstm_cell``, or ``basic_lstm_cell_1`` when
    TF uniquified it). The options are what a checkpoint does not store: ``forget_bias`` (LSTMs),
    ``cell_clip`` and ``proj_clip`` (``LSTMCell``), ``activation`` (``"tanh"`` or ``"relu"``).
    """

    cell_type: str
    variables: dict[str, torch.Tensor]
    scope_name: str = ""
    forget_bias: float = 1.0
    cell_clip: float | None = None
    proj_clip: float | None = None
    activation: str = "tanh"

    def __post_init__(self) -> None:
        if self.cell_type not in _PARAMS:
            raise ValueError(f"TFCellVariables: unknown cell type {self.cell_type!r}; known: {sorted(_PARAMS)}")
        self.scope_name = self.scope_name or _SCOPE_OF[self.cell_type]

    @property
    def mode(self) -> str:
        return _MODE.get(self.cell_type, "RNN")

    @property
    def num_units(self) -> int:
        v = self.variables
        if self.cell_type == "GRUCell":
            return int(v["gates/kernel"].shape[1]) // 2
        return int(v["kernel"].shape[1]) // (4 if self.mode == "LSTM" else 1)

    @property
    def num_proj(self) -> int | None:
        proj = self.variables.get("projection/kernel")
        return None if proj is None else int(proj.shape[1])

    @property
    def output_size(self) -> int:
        return self.num_proj or self.num_units

    @property
    def input_size(self) -> int:
        kernel = self.variables["gates/kernel" if self.cell_type == "GRUCell" else "kernel"]
        return int(kernel.shape[0]) - self.output_size

    @property
    def use_peepholes(self) -> bool:
        return "w_f_diag" in self.variables

    @property
    def layer_norm(self) -> bool:
        return "input/gamma" in self.variables

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every variable this cell must have, with its shape, from its kernel and options."""
        i, h, p = self.input_size, self.num_units, self.output_size
        if self.cell_type == "GRUCell":
            return {"gates/kernel": (i + h, 2 * h), "gates/bias": (2 * h,), "candidate/kernel": (i + h, h),
                    "candidate/bias": (h,)}  # fmt: skip
        if self.mode == "RNN":
            return {"kernel": (i + h, h), "bias": (h,)}
        shapes: dict[str, tuple[int, ...]] = {"kernel": (i + p, 4 * h)}
        if self.layer_norm:
            shapes.update({name: (h,) for name in _NORMS})
        else:
            shapes["bias"] = (4 * h,)
        if self.use_peepholes or any(n in self.variables for n in ("w_i_diag", "w_o_diag")):
            shapes.update({"w_f_diag": (h,), "w_i_diag": (h,), "w_o_diag": (h,)})
        if self.num_proj is not None:
            shapes["projection/kernel"] = (h, p)
        return shapes

    def check(self, scope: str) -> None:
        """Every expected variable present with its shape; errors name the full variable and both shapes."""
        main = "gates/kernel" if self.cell_type == "GRUCell" else "kernel"
        if main not in self.variables:
            raise ValueError(f"TF variables: missing {scope}/{main} of the {self.cell_type} at {scope!r}")
        kernel = self.variables[main]
        blocks = {"GRUCell": 2, "BasicRNNCell": 1}.get(self.cell_type, 4)
        if kernel.dim() != 2 or kernel.shape[1] % blocks or self.input_size <= 0:
            raise ValueError(
                f"TF variables: {scope}/{main} has shape {tuple(kernel.shape)}; a {self.cell_type} needs "
                f"(input_depth + {'num_proj' if self.num_proj else 'num_units'}, {blocks} * num_units)"
            )
        for name, shape in self.expected_shapes().items():
            if name not in self.variables:
                raise ValueError(
                    f"TF variables: missing variable {scope}/{name} (expected shape {shape}) of the "
                    f"{self.cell_type} at {scope!r}"
                )
            actual = tuple(self.variables[name].shape)
            if actual != shape:
                raise ValueError(
                    f"TF variables: {scope}/{name} has shape {actual}, expected {shape} for a {self.cell_type} "
                    f"with input depth {self.input_size} and {self.num_units} units"
                )


@dataclass
class TFRNNVariables:
    """The cells of one TF1 recurrent stack, in order: ``fw[k]`` is layer ``k`` (``bw`` for backward cells).

    ``multi_rnn_cell``: the layers of each direction sit in a ``MultiRNNCell`` (``.../multi_rnn_cell/cell_k/``).
    """

    topology: str
    scope: str
    fw: list[TFCellVariables]
    bw: list[TFCellVariables] = field(default_factory=list)
    multi_rnn_cell: bool = False

    def cell_scopes(self) -> list[tuple[str, TFCellVariables]]:
        """``(full scope, cell)`` for every cell, fw before bw within each layer."""
        out = []
        if self.topology == "stack_bidirectional":
            for k, (fw, bw) in enumerate(zip(self.fw, self.bw, strict=True)):
                base = f"{self.scope}/cell_{k}/bidirectional_rnn"
                out += [(f"{base}/fw/{fw.scope_name}", fw), (f"{base}/bw/{bw.scope_name}", bw)]
            return out
        sides = [("", self.fw)] if self.topology == "unidirectional" else [("/fw", self.fw), ("/bw", self.bw)]
        for side, cells in sides:
            for k, cell in enumerate(cells):
                layer = f"/multi_rnn_cell/cell_{k}" if self.multi_rnn_cell else ""
                out.append((f"{self.scope}{side}{layer}/{cell.scope_name}", cell))
        return out

    def variables(self) -> dict[str, torch.Tensor]:
        """The TF variable dict: full names -> tensors."""
        return {f"{scope}/{k}": v for scope, cell in self.cell_scopes() for k, v in cell.variables.items()}

    def check(self) -> None:
        """Each cell complete and consistent, and each layer's input depth the output depth below it."""
        for scope, cell in self.cell_scopes():
            cell.check(scope)
        scopes = dict((id(c), s) for s, c in self.cell_scopes())
        if self.bw and self.bw[0].input_size != self.fw[0].input_size:
            raise ValueError(
                f"TF variables: the forward and backward cells under {self.scope!r} read inputs of different "
                f"depths ({self.fw[0].input_size} and {self.bw[0].input_size})"
            )
        for chain in [self.fw] if self.topology == "unidirectional" else [self.fw, self.bw]:
            for k in range(1, len(chain)):
                below = chain[k - 1].output_size
                if self.topology == "stack_bidirectional":
                    below = self.fw[k - 1].output_size + self.bw[k - 1].output_size
                cell = chain[k]
                if cell.input_size != below:
                    main = "gates/kernel" if cell.cell_type == "GRUCell" else "kernel"
                    shape = tuple(cell.variables[main].shape)
                    raise ValueError(
                        f"TF variables: {scopes[id(cell)]}/{main} has shape {shape}, expected "
                        f"({below + cell.output_size}, {shape[1]}): layer {k - 1} below it outputs {below} features"
                    )


def _as_torch(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach()
    return torch.from_numpy(np.ascontiguousarray(value))


def _position(pre: list[str]) -> tuple[str, str | None, int | None, int, bool]:
    """``(root scope, direction, stack layer, layer, in MultiRNNCell)`` from the scopes above a cell."""
    layer, multi, direction, stack_layer = 0, False, None, None
    if len(pre) >= 2 and pre[-2] == "multi_rnn_cell" and re.fullmatch(r"cell_\d+", pre[-1]):
        layer, multi, pre = int(pre[-1][5:]), True, pre[:-2]
    if pre and pre[-1] in ("fw", "bw"):
        direction, pre = pre[-1], pre[:-1]
        if len(pre) >= 3 and pre[-1] == "bidirectional_rnn" and re.fullmatch(r"cell_\d+", pre[-2]):
            stack_layer, pre = int(pre[-2][5:]), pre[:-2]
    return "/".join(pre), direction, stack_layer, layer, multi


def _ordered(cells: dict[int, TFCellVariables], what: str) -> list[TFCellVariables]:
    if sorted(cells) != list(range(len(cells))):
        raise ValueError(f"TF variables: {what} has layers {sorted(cells)}; expected 0..{len(cells) - 1}")
    return [cells[k] for k in range(len(cells))]


def parse_tf_variables(variables: Mapping[str, Any], scope: str | None = None) -> TFRNNVariables:
    """Find the TF1 recurrent stack in ``variables`` (a name -> array dict, e.g. `read_tf_checkpoint`'s).

    ``scope`` is the stack's outer scope (``"rnn"``, ``"bidirectional_rnn"``, ``"encoder"`` ...); it
    may be omitted when the variables hold one stack. Variables outside it (optimizer slots such as
    ``kernel/Adam``, ``global_step``, other layers) are ignored. Raises ``ValueError`` naming the
    variable and both shapes when one is missing or inconsistent.

    Example::

        >>> from rnnkit.convert import LayerConfig, torch_to_tf
        >>> tf_vars = torch_to_tf(torch.nn.LSTM(3, 4, num_layers=2).state_dict(), LayerConfig("LSTM", 3, 4, 2))
        >>> layout = parse_tf_variables(tf_vars)    # or read_tf_checkpoint("ckpt")
        >>> layout.topology, [c.cell_type for c in layout.fw]
        ('unidirectional', ['BasicLSTMCell', 'BasicLSTMCell'])
    """
    if not isinstance(variables, Mapping):
        raise TypeError(f"parse_tf_variables: expected a mapping of names to arrays, got {type(variables).__name__}")
    cells: dict[str, tuple[str, str, dict[str, Any], set[str]]] = {}
    for name in variables:
        parts = name.split("/")
        for idx in range(len(parts) - 2, -1, -1):
            match = _CELL_SEGMENT.fullmatch(parts[idx])
            if match:
                path = "/".join(parts[: idx + 1])
                cell_type = CELL_SCOPES[match.group(1)]
                entry = cells.setdefault(path, (cell_type, parts[idx], {}, set()))
                rel = "/".join(parts[idx + 1 :])
                entry[3].add(rel)
                if rel in _PARAMS[cell_type]:
                    entry[2][rel] = variables[name]
                break
    keras_like = [p for p, (_, _, _, names) in cells.items() if "recurrent_kernel" in names]
    if keras_like:
        raise ValueError(
            f"TF variables: {keras_like[0]!r} holds a 'recurrent_kernel': these are Keras layer weights, not TF1 "
            "cell variables; read them with rnnkit.convert.read_keras / keras_to_torch"
        )
    groups: dict[str, list[tuple[str, str | None, int | None, int, bool, TFCellVariables]]] = {}
    for path, (cell_type, segment, found, _) in cells.items():
        if not found:
            continue
        root, direction, stack_layer, layer, multi = _position(path.split("/")[:-1])
        cell = TFCellVariables(cell_type, {k: _as_torch(v) for k, v in found.items()}, scope_name=segment)
        groups.setdefault(root, []).append((path, direction, stack_layer, layer, multi, cell))
    if scope is not None:
        scope = scope.strip("/")
        if scope not in groups:
            raise ValueError(f"TF variables: no recurrent cells under scope {scope!r}; stacks found: {sorted(groups)}")
        root = scope
    elif len(groups) == 1:
        root = next(iter(groups))
    elif not groups:
        sample = sorted(variables)[:8]
        raise ValueError(
            "TF variables: no TF1 RNN cell variables found (looked for .../basic_lstm_cell/kernel, .../lstm_cell/"
            f".., .../gru_cell/gates/kernel, .../basic_rnn_cell/kernel); names start with {sample}"
        )
    else:
        raise ValueError(f"TF variables: several recurrent stacks, at scopes {sorted(groups)}; pass scope=")
    layout = _assemble(root, groups[root])
    layout.check()
    return layout


def _assemble(root: str, entries: list) -> TFRNNVariables:
    directions = {d for _, d, _, _, _, _ in entries}
    stacked = {s is not None for _, _, s, _, _, _ in entries}
    if len(stacked) > 1 or (None in directions and len(directions) > 1):
        raise ValueError(f"TF variables: the cells under {root!r} mix topologies: {sorted(p for p, *_ in entries)}")
    multi = {m for *_, m, _ in entries}
    if directions == {None}:
        cells = {layer: cell for _, _, _, layer, _, cell in entries}
        if len(cells) != len(entries):
            raise ValueError(f"TF variables: two cells claim one layer under {root!r}: {[p for p, *_ in entries]}")
        return TFRNNVariables("unidirectional", root, _ordered(cells, root), multi_rnn_cell=multi == {True})
    if stacked == {True}:
        nested = [p for p, _, _, _, m, _ in entries if m]
        if nested:
            raise ValueError(f"TF variables: {nested[0]!r}: a MultiRNNCell inside a stacked bidirectional layer")
        fw = {s: c for _, d, s, _, _, c in entries if d == "fw"}
        bw = {s: c for _, d, s, _, _, c in entries if d == "bw"}
        layout = TFRNNVariables("stack_bidirectional", root, _ordered(fw, f"{root} (fw)"), _ordered(bw, f"{root} (bw)"))
        if len(layout.fw) != len(layout.bw):
            raise ValueError(f"TF variables: {root!r} has {len(fw)} forward and {len(bw)} backward layers")
        return layout
    fw = {layer: c for _, d, _, layer, _, c in entries if d == "fw"}
    bw = {layer: c for _, d, _, layer, _, c in entries if d == "bw"}
    if not fw or not bw:
        raise ValueError(f"TF variables: {root!r} has cells for one direction only ({sorted(directions)})")
    return TFRNNVariables(
        "bidirectional", root, _ordered(fw, f"{root}/fw"), _ordered(bw, f"{root}/bw"), multi_rnn_cell=multi == {True}
    )


# -- whole stacks <-> torch layout ----------------------------------------------------------------------
