"""ONNX export of ``rnnkit.RNN/LSTM/GRU`` to the native ``RNN``/``LSTM``/``GRU`` operators (or a ``Scan``), and back.

The exported graph computes the layer's inference (eval-mode) function, ``float32``, with dynamic batch and time::

    inputs   input          (seq_len, batch, input_size)      ((batch, seq_len, input_size) with batch_first)
             h_0            (num_layers * D, batch, P)         initial_states=True (the default)
             c_0            (num_layers * D, batch, H)         LSTM, initial_states=True
             sequence_lens  (batch,) int32                     sequence_lens=True: rnnkit's lengths=
    outputs  output         (seq_len, batch, D * P)            ((batch, seq_len, D * P) with batch_first)
             h_n            (num_layers * D, batch, P)
             c_n            (num_layers * D, batch, H)         LSTM

(``D`` = 2 if bidirectional else 1, ``H = hidden_size``, ``P = proj_size or H``; state rows ``k * D + d`` as
torch.) Feeding ``h_n``/``c_n`` back as ``h_0``/``c_0`` streams a long sequence chunk by chunk in a stateless
runtime such as onnxruntime.

**Native operators** (``implementation="native"``, and ``"auto"`` whenever possible): one ONNX op per layer,
``layout=0`` (onnxruntime rejects ``layout=1``; ``batch_first`` transposes around the ops), initializers from
`torch_to_onnx` (ONNX gate orders: LSTM i, o, f, c, GRU z, r, h; ``B = [Wb, Rb]``; peepholes ``P`` in order
i, o, f; ``forget_bias`` folded into ``Wb``'s f block), ``direction="bidirectional"`` for two directions, GRU
``linear_before_reset`` = ``reset_after`` (1: torch's math, 0: TF's), RNN ``activations`` ``Tanh``/``Relu``.
Layer ``k + 1`` reads layer ``k``'s ``Y [T, D, B, H]`` transposed and reshaped to ``[T, B, D * H]``.

**Scan** (``implementation="scan"``, and ``"auto"`` for options no native op computes: ``proj_size``,
``cell_clip``, ``layer_norm``, ``zoneout``): one ONNX ``Scan`` per (layer, direction) over rnnkit's step
equations (docstring of ``rnnkit.LSTM``), the input projection ``W_ih x + b_ih`` computed for all steps
before it; the backward direction reverses each sequence within its length (``ReverseSequence``); with
``sequence_lens`` the state stops at each sequence's last step and the outputs past it are zeros. ONNX's
``clip`` attribute is never used: it clips gate pre-activations, not TF's cell state. Zoneout exports as
its eval-mode expectation ``h' = new + zoneout * (old - new)``. Initializers keep torch's parameter names.

The layer's configuration travels in the model's ``metadata_props`` (``rnnkit.config``), so `load_onnx`
rebuilds an rnnkit layer from an exported file (native ops: forget bias folded; Scan: bit-exact weights).

Example::

    >>> lstm = rnnkit.LSTM(10, 20, num_layers=2, batch_first=True, forget_bias=1.0, peepholes=True).eval()
    >>> export_onnx(lstm, "lstm.onnx", sequence_lens=True)
    >>> session = onnxruntime.InferenceSession("lstm.onnx")
    >>> out, h_n, c_n = session.run(None, {"input": x, "h_0": h0, "c_0": c0, "sequence_lens": lens})
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ._onnx_io import load_model as _load_model
from ._onnx_io import onnx_module as _onnx
from ._onnx_layout import OnnxRecurrentOp, onnx_to_torch, torch_to_onnx
from ._torch_layout import check_state_dict, direction_params
from .config import LAYERS, TORCH_NN_LAYERS, LayerConfig, layer_description, layer_from_state_dict

__all__ = ["export_onnx", "read_onnx", "load_onnx", "scan_only_options", "DEFAULT_OPSET"]

DEFAULT_OPSET = 17  # LayerNormalization (Scan export of layer_norm) needs 17; onnxruntime 1.32 runs 14-23+
_MIN_OPSET = 14
_LN_EPS = 1e-12  # rnnkit's (TF contrib's) layer-norm epsilon


def scan_only_options(layer: torch.nn.Module) -> list[str]:
    """The layer's options that no native ONNX recurrent operator computes (empty: native ops export it)."""
    config = LayerConfig.from_module(layer)
    options = []
    if config.proj_size:
        options.append(f"proj_size={config.proj_size} (ONNX's LSTM has no projection)")
    if config.cell_clip is not None:
        options.append(
            f"cell_clip={config.cell_clip} (ONNX's clip attribute clips gate pre-activations, not the cell state)"
        )
    if config.layer_norm:
        options.append("layer_norm (ONNX's recurrent operators have no normalisation)")
    zoneout = float(getattr(layer, "zoneout", 0.0))
    if zoneout:
        options.append(f"zoneout={zoneout} (no native operator blends the previous state in)")
    return options


# -- a small graph builder -----------------------------------------------------------------------------------
class _Graph:
    """Nodes of one ONNX graph; constants always go to the root graph (a Scan body reads them from outside)."""

    def __init__(self, root: _Graph | None = None, prefix: str = ""):
        self.root = root or self
        self.prefix = prefix
        self.nodes: list[Any] = []
        if root is None:
            self.initializers: list[Any] = []
            self._count = itertools.count()

    def fresh(self, hint: str) -> str:
        return f"{self.prefix}{hint}_{next(self.root._count)}"

    def const(self, value: Any, name: str | None = None, dtype: Any = np.float32) -> str:
        onnx = _onnx()
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        name = name or self.fresh("const")
        self.root.initializers.append(onnx.numpy_helper.from_array(np.array(array, dtype=dtype, order="C"), name))
        return name

    def ints(self, values: Sequence[int] | int) -> str:
        return self.const(values, dtype=np.int64)

    def op(self, op_type: str, inputs: Sequence[str], outputs: int = 1, **attrs: Any) -> Any:
        onnx = _onnx()
        names = [self.fresh(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(onnx.helper.make_node(op_type, list(inputs), names, **attrs))
        return names[0] if outputs == 1 else names


def _value_info(name: str, shape: Sequence[Any], elem_type: int | None = None) -> Any:
    onnx = _onnx()
    return onnx.helper.make_tensor_value_info(name, elem_type or onnx.TensorProto.FLOAT, list(shape))


# -- the native path -----------------------------------------------------------------------------------------
def _native_layer(
    g: _Graph, x: str, op: OnnxRecurrentOp, k: int, lens: str | None, states: dict[str, str | None], d: int
) -> tuple[str, list[str]]:
    """One native op over ``x`` ``[T, B, I]`` -> its output ``[T, B, D*H]`` and final states ``[D, B, H]``."""
    names = {n: g.const(v.to(torch.float32), f"{n}_l{k}") for n, v in op.initializers.items()}

    def initial(key: str) -> str:
        whole = states.get(key)
        if whole is None:
            return ""
        return g.op("Slice", [whole, g.ints([k * d]), g.ints([(k + 1) * d]), g.ints([0])])  # [D, B, H]

    inputs = [x, names["W"], names["R"], names.get("B", ""), lens or "", initial("h_0")]
    if op.op_type == "LSTM":
        inputs += [initial("c_0"), names.get("P", "")]
    while inputs[-1] == "":
        inputs.pop()
    outputs = 3 if op.op_type == "LSTM" else 2
    results = g.op(op.op_type, inputs, outputs, **op.attributes)
    y = g.op("Transpose", [results[0]], perm=[0, 2, 1, 3])  # [T, B, D, H]
    y = g.op("Reshape", [y, g.ints([0, 0, -1])])  # [T, B, D*H]
    return y, list(results[1:])


# -- the Scan path -------------------------------------------------------------------------------------------
class _Step:
    """The weights of one (layer, direction) as graph names, for building its Scan body."""

    def __init__(self, g: _Graph, config: LayerConfig, params: dict[str, torch.Tensor], k: int, reverse: bool):
        suffix = f"_l{k}{'_reverse' if reverse else ''}"
        self.config = config
        self.names = {role: g.const(t.to(torch.float32), f"{role}{suffix}") for role, t in params.items()}
        # Transposes of the constant weights: onnxruntime folds them when it loads the model.
        self.w_ih_t = g.op("Transpose", [self.names["weight_ih"]], perm=[1, 0])  # [I, G*H]
        self.w_hh_t = g.op("Transpose", [self.names["weight_hh"]], perm=[1, 0])  # [P, G*H]
        self.w_hr_t = g.op("Transpose", [self.names["weight_hr"]], perm=[1, 0]) if "weight_hr" in params else None
        self.b_ih = self.names.get("bias_ih")
        self.b_hh = self.names.get("bias_hh")
        h = config.hidden_size
        if config.mode == "GRU" and not config.reset_after:  # the candidate's recurrent matmul reads r * h
            self.w_hh_rz = g.op("Slice", [self.w_hh_t, g.ints([0]), g.ints([2 * h]), g.ints([1])])
            self.w_hh_n = g.op("Slice", [self.w_hh_t, g.ints([2 * h]), g.ints([3 * h]), g.ints([1])])
            if self.b_hh:
                self.b_hh_rz = g.op("Slice", [self.b_hh, g.ints([0]), g.ints([2 * h]), g.ints([0])])
                self.b_hh_n = g.op("Slice", [self.b_hh, g.ints([2 * h]), g.ints([3 * h]), g.ints([0])])
        if config.layer_norm:
            self.ln_gates = [
                (g.op("Slice", [self.names["weight_ln_gates"], g.ints([j * h]), g.ints([(j + 1) * h]), g.ints([0])]),
                 g.op("Slice", [self.names["bias_ln_gates"], g.ints([j * h]), g.ints([(j + 1) * h]), g.ints([0])]))
                for j in range(4)
            ]  # fmt: skip


def _linear(b: _Graph, x: str, weight_t: str, bias: str | None) -> str:
    y = b.op("MatMul", [x, weight_t])
    return b.op("Add", [y, bias]) if bias else y


def _lstm_body(b: _Graph, s: _Step, h: str, c: str, xw: str) -> tuple[str, str]:
    """rnnkit's LSTM step on ``xw = W_ih x + b_ih`` ``[B, 4H]`` and the state -> ``(h', c')``."""
    cfg, H = s.config, s.config.hidden_size
    gates = b.op("Add", [xw, _linear(b, h, s.w_hh_t, s.b_hh)])  # [B, 4H], blocks i, f, g, o
    i, f, j, o = b.op("Split", [gates, b.ints([H] * 4)], 4, axis=1)
    if cfg.layer_norm:
        i, f, j, o = (
            b.op("LayerNormalization", [v, *s.ln_gates[n]], axis=-1, epsilon=_LN_EPS)
            for n, v in enumerate((i, f, j, o))
        )
    if cfg.peepholes:
        i = b.op("Add", [i, b.op("Mul", [s.names["weight_ci"], c])])
        f = b.op("Add", [f, b.op("Mul", [s.names["weight_cf"], c])])
    if cfg.forget_bias:
        f = b.op("Add", [f, b.const(cfg.forget_bias)])
    new_c = b.op(
        "Add", [b.op("Mul", [c, b.op("Sigmoid", [f])]), b.op("Mul", [b.op("Sigmoid", [i]), b.op("Tanh", [j])])]
    )
    if cfg.layer_norm:
        cell_norm = [s.names["weight_ln_cell"], s.names["bias_ln_cell"]]
        new_c = b.op("LayerNormalization", [new_c, *cell_norm], axis=-1, epsilon=_LN_EPS)
    if cfg.cell_clip is not None:
        new_c = b.op("Clip", [new_c, b.const(-cfg.cell_clip), b.const(cfg.cell_clip)])
    if cfg.peepholes:
        o = b.op("Add", [o, b.op("Mul", [s.names["weight_co"], new_c])])
    new_h = b.op("Mul", [b.op("Sigmoid", [o]), b.op("Tanh", [new_c])])
    if s.w_hr_t:
        new_h = b.op("MatMul", [new_h, s.w_hr_t])  # [B, P]
    return new_h, new_c


def _gru_body(b: _Graph, s: _Step, h: str, xw: str) -> str:
    H = s.config.hidden_size
    x_r, x_z, x_n = b.op("Split", [xw, b.ints([H] * 3)], 3, axis=1)  # blocks r, z, n
    if s.config.reset_after:  # torch: n = tanh(x_n + r * (W_hn h + b_hn))
        h_r, h_z, h_n = b.op("Split", [_linear(b, h, s.w_hh_t, s.b_hh), b.ints([H] * 3)], 3, axis=1)
        r = b.op("Sigmoid", [b.op("Add", [x_r, h_r])])
        z = b.op("Sigmoid", [b.op("Add", [x_z, h_z])])
        n = b.op("Tanh", [b.op("Add", [x_n, b.op("Mul", [r, h_n])])])
    else:  # TF: n = tanh(x_n + W_hn (r * h) + b_hn)
        h_r, h_z = b.op("Split", [_linear(b, h, s.w_hh_rz, s.b_hh_rz if s.b_hh else None), b.ints([H] * 2)], 2, axis=1)
        r = b.op("Sigmoid", [b.op("Add", [x_r, h_r])])
        z = b.op("Sigmoid", [b.op("Add", [x_z, h_z])])
        rh = _linear(b, b.op("Mul", [r, h]), s.w_hh_n, s.b_hh_n if s.b_hh else None)
        n = b.op("Tanh", [b.op("Add", [x_n, rh])])
    # h' = z * h + (1 - z) * n
    return b.op("Add", [b.op("Mul", [z, h]), b.op("Mul", [b.op("Sub", [b.const(1.0), z]), n])])


def _rnn_body(b: _Graph, s: _Step, h: str, xw: str) -> str:
    pre = b.op("Add", [xw, _linear(b, h, s.w_hh_t, s.b_hh)])
    return b.op("Relu" if s.config.nonlinearity == "relu" else "Tanh", [pre])


def _scan_direction(
    g: _Graph, s: _Step, x: str, k: int, reverse: bool, mask: str | None, lens64: str | None,
    initial: dict[str, str], zoneout: float,
) -> tuple[str, list[str]]:  # fmt: skip
    """One Scan over ``x`` ``[T, B, I]`` -> outputs ``[T, B, P]`` and final states ``[B, P]`` (and ``[B, H]``)."""
    onnx = _onnx()
    cfg = s.config
    xw = _linear(g, x, s.w_ih_t, s.b_ih)  # [T, B, G*H], every step's input projection at once
    if reverse and lens64:
        xw = g.op("ReverseSequence", [xw, lens64], batch_axis=1, time_axis=0)  # reversed within each length
    body = _Graph(g.root, prefix=f"l{k}{'r' if reverse else ''}_")
    state_names = ["h", "c"] if cfg.mode == "LSTM" else ["h"]
    sizes = {"h": cfg.output_size, "c": cfg.hidden_size}
    old = {n: body.fresh(f"{n}_in") for n in state_names}
    xw_t = body.fresh("xw_t")
    mask_t = body.fresh("mask_t") if mask else None
    if cfg.mode == "LSTM":
        new = dict(zip(("h", "c"), _lstm_body(body, s, old["h"], old["c"], xw_t), strict=True))
    elif cfg.mode == "GRU":
        new = {"h": _gru_body(body, s, old["h"], xw_t)}
    else:
        new = {"h": _rnn_body(body, s, old["h"], xw_t)}
    if zoneout:  # eval-mode zoneout: torch.lerp(new, old, p) = new + p * (old - new)
        new = {
            n: body.op("Add", [v, body.op("Mul", [body.const(zoneout), body.op("Sub", [old[n], v])])])
            for n, v in new.items()
        }
    out = new["h"]
    if mask_t:  # past a sequence's end: keep the state, output zeros
        new = {n: body.op("Where", [mask_t, v, old[n]]) for n, v in new.items()}
        out = body.op("Where", [mask_t, out, body.const(0.0)])
    finals = {n: body.op("Identity", [v]) for n, v in new.items()}
    y_t = body.op("Identity", [out])
    batch = "batch"
    body_inputs = [_value_info(old[n], [batch, sizes[n]]) for n in state_names]
    body_inputs.append(_value_info(xw_t, [batch, cfg.gate_count * cfg.hidden_size]))
    if mask_t:
        body_inputs.append(_value_info(mask_t, [batch, 1], onnx.TensorProto.BOOL))
    body_outputs = [_value_info(finals[n], [batch, sizes[n]]) for n in state_names]
    body_outputs.append(_value_info(y_t, [batch, cfg.output_size]))
    graph = onnx.helper.make_graph(body.nodes, f"step_l{k}{'_reverse' if reverse else ''}", body_inputs, body_outputs)
    scan_inputs = [xw] + ([mask] if mask else [])
    in_directions = [1 if reverse and not lens64 else 0] * len(scan_inputs)
    results = g.op(
        "Scan",
        [initial[n] for n in state_names] + scan_inputs,
        len(state_names) + 1,
        body=graph,
        num_scan_inputs=len(scan_inputs),
        scan_input_directions=in_directions,
        scan_output_directions=[1 if reverse and not lens64 else 0],
    )
    y = results[-1]  # [T, B, P]
    if reverse and lens64:
        y = g.op("ReverseSequence", [y, lens64], batch_axis=1, time_axis=0)
    return y, results[:-1]


def _zeros(g: _Graph, x: str, size: int) -> str:
    """Zeros ``[B, size]`` for the batch of ``x`` ``[T, B, I]``."""
    onnx = _onnx()
    batch = g.op("Gather", [g.op("Shape", [x]), g.ints([1])], axis=0)  # [1]
    shape = g.op("Concat", [batch, g.ints([size])], axis=0)
    return g.op("ConstantOfShape", [shape], value=onnx.helper.make_tensor("zero", onnx.TensorProto.FLOAT, [1], [0.0]))


# -- the whole graph -----------------------------------------------------------------------------------------
def export_onnx(
    layer: torch.nn.Module,
    path: str | os.PathLike | None = None,
    *,
    sequence_lens: bool = False,
    initial_states: bool = True,
    implementation: str = "auto",
    opset: int = DEFAULT_OPSET,
) -> Any:
    """Export ``layer`` (``rnnkit.RNN/LSTM/GRU`` or ``torch.nn.RNN/LSTM/GRU``) to ONNX; returns the ``ModelProto``.

    ``path``: where to write it (``None``: only return it). ``sequence_lens``: add the ``sequence_lens``
    input (``int32 (batch,)``, rnnkit's ``lengths=``). ``initial_states``: add ``h_0`` (and ``c_0``) inputs
    (``False``: zeros). ``implementation``: ``"native"`` (ONNX ``LSTM``/``GRU``/``RNN`` ops; options they
    cannot compute raise ``ValueError`` naming them), ``"scan"`` (a ``Scan`` over rnnkit's step, for every
    option) or ``"auto"`` (native when possible). ``opset``: 14 or newer (17 by default; ``layer_norm``
    needs 17). Graph inputs, outputs and semantics: see the module docstring. The export is the inference
    function (dropout and recurrent dropout off, zoneout at its expectation), computed in float32.

    Example::

        >>> model = export_onnx(rnnkit.GRU(3, 8, reset_after=False), "gru.onnx", sequence_lens=True)
        >>> [i.name for i in model.graph.input]
        ['input', 'h_0', 'sequence_lens']
    """
    onnx = _onnx()
    if implementation not in ("auto", "native", "scan"):
        raise ValueError(f"export_onnx: implementation must be 'auto', 'native' or 'scan', got {implementation!r}")
    if (
        isinstance(opset, bool)
        or not isinstance(opset, int)
        or not _MIN_OPSET <= opset <= onnx.defs.onnx_opset_version()
    ):
        raise ValueError(
            f"export_onnx: opset must be an int in [{_MIN_OPSET}, {onnx.defs.onnx_opset_version()}], got {opset!r}"
        )
    if type(layer) not in LAYERS.values() and type(layer) not in TORCH_NN_LAYERS:
        raise TypeError(
            f"export_onnx: expected an rnnkit.RNN/LSTM/GRU or torch.nn.RNN/LSTM/GRU layer, got {type(layer).__name__}"
        )
    layer_config = layer_description(layer)
    config = LayerConfig.from_module(layer)
    zoneout = float(getattr(layer, "zoneout", 0.0))
    blockers = scan_only_options(layer)
    if implementation == "native" and blockers:
        raise ValueError(
            f"export_onnx: no native ONNX {config.mode} operator computes " + "; ".join(blockers)
            + ". Export with implementation='scan' (or 'auto'), which runs rnnkit's step in an ONNX Scan"
        )  # fmt: skip
    use_scan = implementation == "scan" or (implementation == "auto" and bool(blockers))
    if use_scan and config.layer_norm and opset < 17:
        raise ValueError(f"export_onnx: layer_norm needs ONNX's LayerNormalization, opset 17 or newer; got {opset}")
    state = check_state_dict(layer.state_dict(), config, "export_onnx")
    batch_first = bool(layer.batch_first)
    d, p, h = config.num_directions, config.output_size, config.hidden_size
    stacked = config.num_layers * d

    g = _Graph()
    time_batch = ["batch", "seq_len"] if batch_first else ["seq_len", "batch"]
    inputs = [_value_info("input", [*time_batch, config.input_size])]
    x = g.op("Transpose", ["input"], perm=[1, 0, 2]) if batch_first else "input"  # [T, B, I]
    states: dict[str, str | None] = {"h_0": None, "c_0": None}
    if initial_states:
        states["h_0"] = "h_0"
        inputs.append(_value_info("h_0", [stacked, "batch", p]))
        if config.mode == "LSTM":
            states["c_0"] = "c_0"
            inputs.append(_value_info("c_0", [stacked, "batch", h]))
    lens = lens64 = mask = None
    if sequence_lens:
        lens = "sequence_lens"
        inputs.append(_value_info(lens, ["batch"], onnx.TensorProto.INT32))
        if use_scan:
            lens64 = g.op("Cast", [lens], to=onnx.TensorProto.INT64)
            steps = g.op("Gather", [g.op("Shape", [x]), g.ints(0)], axis=0)  # scalar T
            t = g.op("Range", [g.ints(0), steps, g.ints(1)])  # [T]
            valid = g.op("Less", [g.op("Unsqueeze", [t, g.ints([1])]), g.op("Unsqueeze", [lens64, g.ints([0])])])
            mask = g.op("Unsqueeze", [valid, g.ints([2])])  # [T, B, 1] bool: step t of sequence b is real

    finals: dict[str, list[str]] = {"h": [], "c": []}
    if use_scan:
        for k in range(config.num_layers):
            outputs = []
            for reverse in config.directions():
                step = _Step(g, config, direction_params(state, k, reverse), k, reverse)
                initial = {}
                for name, size in (("h", p), ("c", h)):
                    whole = states.get(f"{name}_0")
                    if whole is not None:
                        initial[name] = g.op("Gather", [whole, g.ints(k * d + int(reverse))], axis=0)  # [B, size]
                    else:
                        initial[name] = _zeros(g, x, size)
                y, final = _scan_direction(g, step, x, k, reverse, mask, lens64, initial, zoneout)
                outputs.append(y)
                for name, value in zip(("h", "c"), final, strict=False):
                    finals[name].append(g.op("Unsqueeze", [value, g.ints([0])]))  # [1, B, size]
            x = outputs[0] if d == 1 else g.op("Concat", outputs, axis=2)  # [T, B, D*P]
    else:
        for k, op in enumerate(torch_to_onnx(state, config)):
            x, final = _native_layer(g, x, op, k, lens, states, d)
            for name, value in zip(("h", "c"), final, strict=False):
                finals[name].append(value)  # [D, B, size]

    out = g.op("Transpose", [x], perm=[1, 0, 2]) if batch_first else x
    g.nodes.append(onnx.helper.make_node("Identity", [out], ["output"]))
    outputs = [_value_info("output", [*time_batch, d * p])]
    for name, size in (("h", p), ("c", h)):
        if finals[name]:
            parts = finals[name]
            whole = parts[0] if len(parts) == 1 else g.op("Concat", parts, axis=0)
            g.nodes.append(onnx.helper.make_node("Identity", [whole], [f"{name}_n"]))
            outputs.append(_value_info(f"{name}_n", [stacked, "batch", size]))

    graph = onnx.helper.make_graph(g.nodes, f"rnnkit_{config.mode.lower()}", inputs, outputs, g.initializers)
    opsets = [onnx.helper.make_opsetid("", opset)]
    model = onnx.helper.make_model(graph, opset_imports=opsets, producer_name="rnnkit")
    model.ir_version = onnx.helper.find_min_ir_version_for(opsets)
    export = {"implementation": "scan" if use_scan else "native", "forget_bias_folded": not use_scan}
    export["layer_config"] = config.to_dict()
    onnx.helper.set_model_props(
        model, {"rnnkit.config": json.dumps(layer_config, sort_keys=True), "rnnkit.export": json.dumps(export)}
    )
    onnx.checker.check_model(model)
    if path is not None:
        onnx.save(model, os.fspath(path))
    return model


# -- reading back --------------------------------------------------------------------------------------------
_NATIVE = ("LSTM", "GRU", "RNN")


def read_onnx(source: Any) -> tuple[dict[str, torch.Tensor], LayerConfig]:
    """An ONNX model's recurrent stack -> the torch layout ``(state_dict, LayerConfig)``.

    ``source``: a path or an ``onnx.ModelProto``. Native ``LSTM``/``GRU``/``RNN`` nodes (any producer's; one per
    layer, in graph order, weights as initializers) go through `onnx_to_torch` (a folded forget bias stays
    folded); a model `export_onnx` wrote with ``Scan`` gives back its torch-named weights and full config.

    Example::

        >>> state, cfg = read_onnx("lstm.onnx")
    """
    onnx = _onnx()
    model = _load_model(source)
    props = {p.key: p.value for p in model.metadata_props}
    initializers = {t.name: t for t in model.graph.initializer}
    export = json.loads(props.get("rnnkit.export", "{}"))
    if export.get("implementation") == "scan":
        config = LayerConfig.from_dict(export["layer_config"])
        missing = [k for k in config.parameter_shapes() if k not in initializers]
        if missing:
            raise ValueError(f"read_onnx: the rnnkit Scan export lacks the initializers {missing}")
        state = {
            k: torch.from_numpy(onnx.numpy_helper.to_array(initializers[k]).copy()) for k in config.parameter_shapes()
        }
        return check_state_dict(state, config, "read_onnx"), config
    nodes = [n for n in model.graph.node if n.op_type in _NATIVE]
    if not nodes:
        found = sorted({n.op_type for n in model.graph.node})
        raise ValueError(f"read_onnx: the model has no LSTM, GRU or RNN operator (operators: {found})")
    ops = []
    for k, node in enumerate(nodes):
        attributes = {}
        for attribute in node.attribute:
            value = onnx.helper.get_attribute_value(attribute)
            if isinstance(value, bytes):
                value = value.decode()
            elif isinstance(value, list):
                value = [v.decode() if isinstance(v, bytes) else v for v in value]
            attributes[attribute.name] = value
        if attributes.get("layout", 0):
            raise ValueError(f"read_onnx: node {k} ({node.op_type}) has layout=1; rnnkit reads layout=0 operators")
        weights = {}
        positions = {"W": 1, "R": 2, "B": 3, "P": 7}
        for role, position in positions.items():
            if position < len(node.input) and node.input[position]:
                name = node.input[position]
                if name not in initializers:
                    raise ValueError(
                        f"read_onnx: node {k} ({node.op_type}) reads its {role} from {name!r}, which is computed, "
                        "not an initializer; rnnkit reads constant weights"
                    )
                weights[role] = torch.from_numpy(onnx.numpy_helper.to_array(initializers[name]).copy())
        ops.append(OnnxRecurrentOp(node.op_type, attributes, weights))
    return onnx_to_torch(ops)


def load_onnx(source: Any) -> torch.nn.Module:
    """An ``rnnkit.RNN/LSTM/GRU`` (eval mode) from an ONNX model: weights by `read_onnx`, and the layer's other
    options (``batch_first``, ``zoneout`` ...) from the metadata `export_onnx` writes (defaults otherwise).

    Example::

        >>> layer = load_onnx("lstm.onnx")
    """
    model = _load_model(source)
    state, config = read_onnx(model)
    props = {p.key: p.value for p in model.metadata_props}
    args = dict(json.loads(props["rnnkit.config"]).get("args", {})) if "rnnkit.config" in props else {}
    args = {k: v for k, v in args.items() if k in ("batch_first", "dropout", "recurrent_dropout", "zoneout")}
    return layer_from_state_dict(state, config, **args)
