"""The ONNX graph `export_onnx` builds: a small graph builder, one native operator per layer, and the ``Scan``
over rnnkit's step equations (``rnnkit.LSTM``'s docstring) for options no native operator computes.

Scan bodies split the gates in torch's block order (`rnnkit.gates`), as the initializers keep torch's layout.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..gates import gate_order
from ._onnx_io import onnx_module as _onnx
from ._onnx_layout import OnnxRecurrentOp
from .config import LayerConfig

__all__ = ["Graph", "Step", "value_info", "native_layer", "scan_direction", "zeros"]

_LN_EPS = 1e-12  # rnnkit's (TF contrib's) layer-norm epsilon


# -- a small graph builder -----------------------------------------------------------------------------------
class Graph:
    """Nodes of one ONNX graph; constants always go to the root graph (a Scan body reads them from outside)."""

    def __init__(self, root: Graph | None = None, prefix: str = ""):
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


def value_info(name: str, shape: Sequence[Any], elem_type: int | None = None) -> Any:
    onnx = _onnx()
    return onnx.helper.make_tensor_value_info(name, elem_type or onnx.TensorProto.FLOAT, list(shape))


# -- the native path -----------------------------------------------------------------------------------------
def native_layer(
    g: Graph, x: str, op: OnnxRecurrentOp, k: int, lens: str | None, states: dict[str, str | None], d: int
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
class Step:
    """The weights of one (layer, direction) as graph names, for building its Scan body."""

    def __init__(self, g: Graph, config: LayerConfig, params: dict[str, torch.Tensor], k: int, reverse: bool):
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
            self.ln_gates = {  # each gate's (gain, shift), from blocks in torch's gate order
                gate: tuple(
                    g.op("Slice", [self.names[f"{kind}_ln_gates"], g.ints([j * h]), g.ints([(j + 1) * h]), g.ints([0])])
                    for kind in ("weight", "bias")
                )
                for j, gate in enumerate(gate_order("LSTM", "torch"))
            }


def _split_gates(b: Graph, x: str, family: str, size: int) -> dict[str, str]:
    """The gate blocks of ``x`` ``[B, G*H]`` (torch's gate order, as the initializers keep it) by gate letter."""
    order = gate_order(family, "torch")
    return dict(zip(order, b.op("Split", [x, b.ints([size] * len(order))], len(order), axis=1), strict=True))


def _linear(b: Graph, x: str, weight_t: str, bias: str | None) -> str:
    y = b.op("MatMul", [x, weight_t])
    return b.op("Add", [y, bias]) if bias else y


def _lstm_body(b: Graph, s: Step, h: str, c: str, xw: str) -> tuple[str, str]:
    """rnnkit's LSTM step on ``xw = W_ih x + b_ih`` ``[B, 4H]`` and the state -> ``(h', c')``."""
    cfg, H = s.config, s.config.hidden_size
    gates = b.op("Add", [xw, _linear(b, h, s.w_hh_t, s.b_hh)])  # [B, 4H], torch's gate blocks
    pre = _split_gates(b, gates, "LSTM", H)
    if cfg.layer_norm:
        pre = {
            gate: b.op("LayerNormalization", [v, *s.ln_gates[gate]], axis=-1, epsilon=_LN_EPS)
            for gate, v in pre.items()
        }
    i, f, j, o = pre["i"], pre["f"], pre["g"], pre["o"]
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


def _gru_body(b: Graph, s: Step, h: str, xw: str) -> str:
    H = s.config.hidden_size
    x = _split_gates(b, xw, "GRU", H)
    if s.config.reset_after:  # torch: n = tanh(x_n + r * (W_hn h + b_hn))
        hw = _split_gates(b, _linear(b, h, s.w_hh_t, s.b_hh), "GRU", H)
        r = b.op("Sigmoid", [b.op("Add", [x["r"], hw["r"]])])
        z = b.op("Sigmoid", [b.op("Add", [x["z"], hw["z"]])])
        n = b.op("Tanh", [b.op("Add", [x["n"], b.op("Mul", [r, hw["n"]])])])
    else:  # TF: n = tanh(x_n + W_hn (r * h) + b_hn); torch's blocks r, z come first, the candidate's last
        h_r, h_z = b.op("Split", [_linear(b, h, s.w_hh_rz, s.b_hh_rz if s.b_hh else None), b.ints([H] * 2)], 2, axis=1)
        r = b.op("Sigmoid", [b.op("Add", [x["r"], h_r])])
        z = b.op("Sigmoid", [b.op("Add", [x["z"], h_z])])
        rh = _linear(b, b.op("Mul", [r, h]), s.w_hh_n, s.b_hh_n if s.b_hh else None)
        n = b.op("Tanh", [b.op("Add", [x["n"], rh])])
    # h' = z * h + (1 - z) * n
    return b.op("Add", [b.op("Mul", [z, h]), b.op("Mul", [b.op("Sub", [b.const(1.0), z]), n])])


def _rnn_body(b: Graph, s: Step, h: str, xw: str) -> str:
    pre = b.op("Add", [xw, _linear(b, h, s.w_hh_t, s.b_hh)])
    return b.op("Relu" if s.config.nonlinearity == "relu" else "Tanh", [pre])


def scan_direction(
    g: Graph, s: Step, x: str, k: int, reverse: bool, mask: str | None, lens64: str | None,
    initial: dict[str, str], zoneout: float,
) -> tuple[str, list[str]]:  # fmt: skip
    """One Scan over ``x`` ``[T, B, I]`` -> outputs ``[T, B, P]`` and final states ``[B, P]`` (and ``[B, H]``)."""
    onnx = _onnx()
    cfg = s.config
    xw = _linear(g, x, s.w_ih_t, s.b_ih)  # [T, B, G*H], every step's input projection at once
    if reverse and lens64:
        xw = g.op("ReverseSequence", [xw, lens64], batch_axis=1, time_axis=0)  # reversed within each length
    body = Graph(g.root, prefix=f"l{k}{'r' if reverse else ''}_")
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
    body_inputs = [value_info(old[n], [batch, sizes[n]]) for n in state_names]
    body_inputs.append(value_info(xw_t, [batch, cfg.gate_count * cfg.hidden_size]))
    if mask_t:
        body_inputs.append(value_info(mask_t, [batch, 1], onnx.TensorProto.BOOL))
    body_outputs = [value_info(finals[n], [batch, sizes[n]]) for n in state_names]
    body_outputs.append(value_info(y_t, [batch, cfg.output_size]))
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


def zeros(g: Graph, x: str, size: int) -> str:
    """Zeros ``[B, size]`` for the batch of ``x`` ``[T, B, I]``."""
    onnx = _onnx()
    batch = g.op("Gather", [g.op("Shape", [x]), g.ints([1])], axis=0)  # [1]
    shape = g.op("Concat", [batch, g.ints([size])], axis=0)
    return g.op("ConstantOfShape", [shape], value=onnx.helper.make_tensor("zero", onnx.TensorProto.FLOAT, [1], [0.0]))


