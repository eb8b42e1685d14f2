"""TF1 variable names of whole recurrent stacks, and whole stacks <-> the torch layout.

TF1 names a cell's variables by the scopes it was called in::

    rnn/basic_lstm_cell/kernel                                      dynamic_rnn(BasicLSTMCell)
    rnn/multi_rnn_cell/cell_1/gru_cell/gates/kernel                 dynamic_rnn(MultiRNNCell([...]))
    bidirectional_rnn/fw/lstm_cell/projection/kernel                bidirectional_dynamic_rnn(fw, bw)
    stack_bidirectional_rnn/cell_0/bidirectional_rnn/bw/basic_lstm_cell/bias
                                                                    contrib's stack_bidirectional_dynamic_rnn

`parse_tf_variables` finds the cells of one such stack (`TFRNNVariables`), checks that every
variable is there with a shape consistent with the others, and `tf_to_torch` / `torch_to_tf` move
whole stacks between those names and a torch-layout state dict plus `LayerConfig`.

Topologies: ``"unidirectional"`` (``dynamic_rnn``; a ``MultiRNNCell`` of L layers is torch's
``num_layers=L``), ``"stack_bidirectional"`` (layer k+1 reads both directions of layer k: torch's
``bidirectional=True, num_layers=L``) and ``"bidirectional"`` (``bidirectional_dynamic_rnn``: with
one layer per direction the same as torch's one bidirectional layer; over two ``MultiRNNCell``s two
independent deep stacks, which no torch layer computes, so that converts only to rnnkit cells).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ._config import LayerConfig
from ._tf_layout import (
    tf_gru_to_torch,
    tf_ln_lstm_to_torch,
    tf_lstm_to_torch,
    tf_rnn_to_torch,
    torch_gru_to_tf,
    torch_ln_lstm_to_tf,
    torch_lstm_to_tf,
    torch_rnn_to_tf,
)
from ._torch_layout import check_state_dict, direction_params, set_direction_params

__all__ = [
    "TFCellVariables",
    "TFRNNVariables",
    "parse_tf_variables",
    "tf_to_torch",
    "torch_to_tf",
    "layout_to_torch",
    "layout_from_torch",
    "CELL_SCOPES",
]

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

        >>> layout = parse_tf_variables(read_tf_checkpoint("ckpt"))
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
def _uniform(values: list[Any], what: str) -> Any:
    if len(set(values)) != 1:
        raise ValueError(f"tf_to_torch: the cells differ in {what} ({values}); one torch layer needs one value")
    return values[0]


def layout_to_torch(
    layout: TFRNNVariables, *, target: str = "rnnkit", fold_forget_bias: bool | None = None
) -> tuple[dict[str, torch.Tensor], LayerConfig]:
    """A parsed TF stack (cells carry their run-time options) -> ``(state_dict, LayerConfig)``.

    ``target="torch.nn"`` must run in ``torch.nn.LSTM/GRU/RNN``: the forget bias is folded into the
    forget-gate bias, and peepholes, clipping, TF's GRU and layer norm are refused with the reason.
    ``target="rnnkit"`` may use ``rnnkit.LSTM/GRU/RNN``'s options; the forget bias is carried as the
    ``forget_bias`` option (bit-exact) unless ``fold_forget_bias=True``.
    """
    if target not in ("rnnkit", "torch.nn"):
        raise ValueError(f"tf_to_torch: target must be 'rnnkit' or 'torch.nn', got {target!r}")
    fold = target == "torch.nn" if fold_forget_bias is None else bool(fold_forget_bias)
    if target == "torch.nn" and not fold:
        raise ValueError("tf_to_torch: target='torch.nn' has no forget_bias option; the forget bias must be folded")
    if layout.topology == "bidirectional" and len(layout.fw) > 1:
        raise ValueError(
            f"tf_to_torch: {layout.scope!r} is bidirectional_dynamic_rnn over two {len(layout.fw)}-layer "
            "MultiRNNCells: "
            "two independent deep stacks joined only at the end. A torch bidirectional layer feeds both directions "
            "of layer k into layer k+1 (stack_bidirectional_dynamic_rnn), a different network; load it into "
            "rnnkit cells instead (rnnkit.convert.load_tf_checkpoint)"
        )
    cells = layout.fw + layout.bw
    mode = _uniform([c.mode for c in cells], "kind (LSTM, GRU, RNN)")
    hidden = _uniform([c.num_units for c in cells], "num_units")
    proj = _uniform([c.num_proj for c in cells], "num_proj")
    peepholes = _uniform([c.use_peepholes for c in cells], "use_peepholes")
    activation = _uniform([c.activation for c in cells], "activation")
    layer_norm = _uniform([c.layer_norm for c in cells], "layer_norm")
    reasons = []
    if mode != "RNN" and activation != "tanh":
        reasons.append(f"activation {activation!r}: torch-layout {mode}s use tanh")
    proj_clip = _uniform([c.proj_clip for c in cells], "proj_clip")
    if proj_clip is not None:
        reasons.append(f"proj_clip={proj_clip}: no torch-layout LSTM clips its projection")
    cell_clip = _uniform([c.cell_clip for c in cells], "cell_clip") if mode == "LSTM" else None
    if target == "torch.nn":
        if layer_norm:
            reasons.append("LayerNormBasicLSTMCell: torch.nn.LSTM has no layer norm; use target='rnnkit'")
        if peepholes:
            reasons.append("peepholes (w_*_diag): torch.nn.LSTM has none; use target='rnnkit'")
        if cell_clip is not None:
            reasons.append(f"cell_clip={cell_clip}: torch.nn.LSTM never clips its cell; use target='rnnkit'")
        if mode == "GRU":
            reasons.append(
                "TF's GRUCell applies the reset gate before the recurrent matmul (r * h), torch.nn.GRU after it "
                "(r * (W_hn h + b_hn)); no weights make them equal. Use target='rnnkit' (GRU(reset_after=False))"
            )
    if reasons:
        raise ValueError(f"tf_to_torch: {layout.scope!r} cannot be converted exactly: " + "; ".join(reasons))
    forget_bias = _uniform([c.forget_bias for c in cells], "forget_bias") if mode == "LSTM" else 0.0
    config = LayerConfig(
        mode=mode,
        input_size=layout.fw[0].input_size,
        hidden_size=hidden,
        num_layers=len(layout.fw),
        bias=not layer_norm,
        layer_norm=layer_norm,
        bidirectional=layout.topology != "unidirectional",
        proj_size=proj or 0,
        nonlinearity=activation if mode == "RNN" else "tanh",
        reset_after=mode != "GRU",
        forget_bias=0.0 if fold else forget_bias,
        peepholes=peepholes,
        cell_clip=cell_clip,
    )
    state: dict[str, torch.Tensor] = {}
    for k in range(config.num_layers):
        for reverse in config.directions():
            cell = (layout.bw if reverse else layout.fw)[k]
            if layer_norm:
                params = tf_ln_lstm_to_torch(cell.variables, forget_bias=forget_bias if fold else 0.0)
            elif mode == "LSTM":
                params = tf_lstm_to_torch(cell.variables, forget_bias=forget_bias if fold else 0.0)
            elif mode == "GRU":
                params = tf_gru_to_torch(cell.variables)
            else:
                params = tf_rnn_to_torch(cell.variables)
            set_direction_params(state, params, k, reverse)
    check_state_dict(state, config, "tf_to_torch")
    return state, config


def tf_to_torch(
    variables: Mapping[str, Any],
    scope: str | None = None,
    *,
    target: str = "rnnkit",
    forget_bias: float = 1.0,
    fold_forget_bias: bool | None = None,
    cell_clip: float | None = None,
    proj_clip: float | None = None,
    activation: str = "tanh",
) -> tuple[dict[str, torch.Tensor], LayerConfig]:
    """TF1 cell variables (name -> array) -> a torch-layout state dict and its `LayerConfig`.

    A checkpoint does not store the cells' run-time options; pass what the TF code used:
    ``forget_bias`` (TF's default 1.0 for ``BasicLSTMCell`` and ``LSTMCell``), ``cell_clip``,
    ``proj_clip``, ``activation`` (``"relu"`` for a ``BasicRNNCell(activation=tf.nn.relu)``).
    ``target``: ``"torch.nn"`` (loads into ``torch.nn.LSTM/GRU/RNN``; forget bias folded into the
    forget-gate bias, exact up to one float rounding of that sum; peepholes, clipping and TF's GRU
    refused with the reason) or ``"rnnkit"`` (``rnnkit.LSTM/GRU/RNN``: forget bias carried as an
    option, peepholes, ``cell_clip`` and ``GRU(reset_after=False)`` allowed; bit-exact).

    Example::

        >>> state, cfg = tf_to_torch(read_tf_checkpoint("ckpt"), target="torch.nn")
        >>> lstm = cfg.torch_nn_module(batch_first=True); lstm.load_state_dict(state)
    """
    layout = parse_tf_variables(variables, scope)
    for cell in layout.fw + layout.bw:
        cell.forget_bias, cell.cell_clip, cell.activation = forget_bias, cell_clip, activation
        cell.proj_clip = proj_clip if cell.num_proj is not None else None
    return layout_to_torch(layout, target=target, fold_forget_bias=fold_forget_bias)


def layout_from_torch(
    state_dict: Mapping[str, Any],
    config: LayerConfig,
    *,
    forget_bias: float | None = 1.0,
    scope: str | None = None,
    topology: str | None = None,
    multi_rnn_cell: bool | None = None,
    cell_type: str | None = None,
) -> TFRNNVariables:
    """A torch-layout stack -> TF1 cells (`TFRNNVariables`) whose variables compute the same function.

    ``forget_bias``: the forget bias the TF cells will add at run time (TF's default 1.0; ``None``
    keeps ``config.forget_bias``, which needs no arithmetic); ``config.forget_bias - forget_bias`` is
    added to the forget block. ``topology``: by default ``"unidirectional"``, or for bidirectional
    configs ``"bidirectional"`` with one layer and ``"stack_bidirectional"`` with more.
    ``multi_rnn_cell`` (unidirectional/bidirectional): wrap the layers in a ``MultiRNNCell``
    (default: when there is more than one layer). ``cell_type``: ``"BasicLSTMCell"`` or
    ``"LSTMCell"`` (default: ``LSTMCell`` only when peepholes or a projection need it).
    """
    state = check_state_dict(state_dict, config, "torch_to_tf")
    if config.mode == "GRU" and config.reset_after:
        raise ValueError(
            "torch_to_tf: a torch GRU (reset_after=True: r * (W_hn h + b_hn)) has no TF GRUCell equivalent "
            "(TF applies r before the matmul: W_hn (r * h)); no weights make them equal"
        )
    if topology is None:
        topology = "unidirectional"
        if config.bidirectional:
            topology = "bidirectional" if config.num_layers == 1 else "stack_bidirectional"
    if topology not in _TOPOLOGIES:
        raise ValueError(f"torch_to_tf: topology must be one of {_TOPOLOGIES}, got {topology!r}")
    if (topology == "unidirectional") == config.bidirectional:
        raise ValueError(f"torch_to_tf: topology {topology!r} does not fit bidirectional={config.bidirectional}")
    if topology == "bidirectional" and config.num_layers > 1:
        raise ValueError(
            "torch_to_tf: a multi-layer bidirectional torch layer feeds both directions into the next layer: "
            "that is topology 'stack_bidirectional', not 'bidirectional' (two independent MultiRNNCell stacks)"
        )
    multi = config.num_layers > 1 if multi_rnn_cell is None else bool(multi_rnn_cell)
    if not multi and config.num_layers > 1 and topology != "stack_bidirectional":
        raise ValueError(f"torch_to_tf: {config.num_layers} layers need multi_rnn_cell=True")
    if config.layer_norm:
        if cell_type not in (None, "LayerNormBasicLSTMCell"):
            raise ValueError(f"torch_to_tf: a layer_norm LSTM becomes a LayerNormBasicLSTMCell, not {cell_type!r}")
        cell_type = "LayerNormBasicLSTMCell"
    elif config.mode == "LSTM":
        needs_full = config.peepholes or config.proj_size or config.cell_clip is not None
        cell_type = cell_type or ("LSTMCell" if needs_full else "BasicLSTMCell")
        if cell_type not in ("BasicLSTMCell", "LSTMCell") or (needs_full and cell_type != "LSTMCell"):
            raise ValueError(f"torch_to_tf: an LSTM with these options needs cell_type='LSTMCell', got {cell_type!r}")
    else:
        expected = "GRUCell" if config.mode == "GRU" else "BasicRNNCell"
        if cell_type not in (None, expected):
            raise ValueError(f"torch_to_tf: a {config.mode} becomes a {expected}, not {cell_type!r}")
        cell_type = expected
    shift = 0.0
    if config.mode == "LSTM" and forget_bias is not None:
        shift = float(forget_bias) - config.forget_bias
    cell_forget_bias = config.forget_bias if forget_bias is None else float(forget_bias)
    fw: list[TFCellVariables] = []
    bw: list[TFCellVariables] = []
    for k in range(config.num_layers):
        for reverse in config.directions():
            params = direction_params(state, k, reverse)
            if config.layer_norm:
                variables = torch_ln_lstm_to_tf(params, forget_bias=shift)
            elif config.mode == "LSTM":
                variables = torch_lstm_to_tf(params, forget_bias=shift)
            elif config.mode == "GRU":
                variables = torch_gru_to_tf(params)
            else:
                variables = torch_rnn_to_tf(params)
            cell = TFCellVariables(
                cell_type,
                variables,
                forget_bias=cell_forget_bias if config.mode == "LSTM" else 1.0,
                cell_clip=config.cell_clip,
                activation=config.nonlinearity,
            )
            (bw if reverse else fw).append(cell)
    scope = _DEFAULT_SCOPE[topology] if scope is None else scope.strip("/")
    return TFRNNVariables(topology, scope, fw, bw, multi_rnn_cell=multi and topology != "stack_bidirectional")


def torch_to_tf(
    state_dict: Mapping[str, Any],
    config: LayerConfig,
    *,
    forget_bias: float | None = 1.0,
    scope: str | None = None,
    topology: str | None = None,
    multi_rnn_cell: bool | None = None,
    cell_type: str | None = None,
) -> dict[str, torch.Tensor]:
    """A torch-layout state dict -> TF1 variables by full name (see `layout_from_torch` for the options).

    Example::

        >>> lstm = torch.nn.LSTM(3, 4, num_layers=2)
        >>> tf_vars = torch_to_tf(lstm.state_dict(), LayerConfig.from_module(lstm))   # for BasicLSTMCell(4)
        >>> sorted(tf_vars)[0]
        'rnn/multi_rnn_cell/cell_0/basic_lstm_cell/bias'
    """
    layout = layout_from_torch(
        state_dict,
        config,
        forget_bias=forget_bias,
        scope=scope,
        topology=topology,
        multi_rnn_cell=multi_rnn_cell,
        cell_type=cell_type,
    )
    return layout.variables()
