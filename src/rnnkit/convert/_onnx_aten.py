"""aten graphs (a compiled cell's ``prepare`` and ``Stage`` graphs) as ONNX nodes, op by op.

`emit_graph` walks an fx graph of aten ops over row values ``(rows, features)`` and writes the ONNX nodes computing
it into a `Graph`. Every translation is exact in real arithmetic (torch's ``var`` is the mean of the squared
deviations times ``n / (n - correction)``; ``softplus`` keeps torch's ``threshold`` and ``beta``; ``hardsigmoid`` is
ONNX's ``HardSigmoid`` with ``alpha = 1/6``, ``beta = 1/2``). An op outside ``OPS`` raises ``NotImplementedError``
naming the op and where it was met: never a silently different graph.

Values of the cell's row parameters are ``(width,)`` initializers that broadcast against ``(rows, width)``; the
emitter tracks such *narrow* values and expands them to the rows only where an op does not broadcast (``Concat``,
``Split``, ``Slice``, reductions, the step's outputs).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.fx import GraphModule, Node

from ._onnx_graph import Graph
from ._onnx_io import onnx_module as _onnx

__all__ = ["OPS", "Emitter", "emit_graph", "record"]

_INT64_MAX = 2**63 - 1


def record(gm: GraphModule, *args: Any) -> dict[Node, Any]:
    """Run ``gm`` on ``args`` and keep every node's value (shapes for the translation, constants to fold)."""
    values: dict[Node, Any] = {}

    class _Recorder(torch.fx.Interpreter):
        def run_node(self, n: Node) -> Any:
            values[n] = super().run_node(n)
            return values[n]

    with torch.no_grad():
        _Recorder(gm).run(*args)
    return values


def _np_dtype(t: torch.Tensor) -> Any:
    if t.dtype == torch.bool:
        return np.bool_
    return np.int64 if not t.dtype.is_floating_point else np.float32


class Emitter:
    """Translation state: ``env`` (node -> ONNX name, list of names, or a torch constant not yet written),
    ``narrow`` (names of ``(width,)`` row parameters and values made only from them), ``rows`` (a value with the
    step's rows, to expand narrow values against), ``values`` (each node's recorded value, for shapes)."""

    def __init__(self, g: Graph, where: str, opset: int, values: dict[Node, Any], rows: str | None = None):
        self.g, self.where, self.opset, self.values, self.rows = g, where, opset, values, rows
        self.env: dict[Node, Any] = {}
        self.narrow: set[str] = set()
        self._rows_shape: str | None = None
        self.made_full = False

    def op(self, op_type: str, inputs: list[str], outputs: int = 1, **attrs: Any) -> Any:
        return self.g.op(op_type, inputs, outputs, **attrs)

    def t(self, a: Any) -> str:
        """An argument as an ONNX name: a node's value, or a Python number as a float32 scalar."""
        if isinstance(a, Node):
            value = self.env[a]
            if isinstance(value, torch.Tensor):  # a folded constant, written on first use
                value = self.env[a] = self.g.const(value, dtype=_np_dtype(value))
            return value
        if isinstance(a, (bool, int, float)):
            return self.g.const(float(a))
        raise NotImplementedError(f"export_onnx: {self.where}: cannot pass {a!r} to an ONNX operator")

    def full(self, name: str) -> str:
        """``name`` broadcast to the step's rows, if it is a narrow ``(width,)`` value."""
        self.made_full = True  # the op being translated makes rows of whatever it reads
        if name not in self.narrow:
            return name
        if self._rows_shape is None:
            batch = self.op("Slice", [self.op("Shape", [self.rows]), self.g.ints([0]), self.g.ints([1])])
            self._rows_shape = self.op("Concat", [batch, self.g.ints([1])], axis=0)  # [n, 1]
        return self.op("Expand", [name, self._rows_shape])

    def width(self, a: Node, dim: int) -> int:
        return int(self.values[a].shape[dim])

    def reduce(self, op_type: str, x: str, axes: list[int], keepdim: bool) -> str:
        """``op_type`` over ``axes``: axes as an input from opset 18 (ReduceSum: 13), as an attribute before."""
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.op(op_type, [x, self.g.ints(axes)], keepdims=int(keepdim))
        return self.op(op_type, [x], axes=axes, keepdims=int(keepdim))


Handler = Callable[[Emitter, Node, tuple, dict], Any]


def _elementwise(op_type: str, **attrs: Any) -> Handler:
    def emit(e: Emitter, n: Node, args: tuple, kwargs: dict) -> str:
        return e.op(op_type, [e.t(a) for a in args], **attrs)

    return emit


def _scaled(e: Emitter, b: Any, alpha: Any) -> str:
    return e.t(b) if alpha == 1 else e.op("Mul", [e.t(b), e.t(alpha)])


def _add(e: Emitter, n: Node, a: tuple, k: dict) -> str:
    return e.op("Add", [e.t(a[0]), _scaled(e, a[1], k.get("alpha", 1))])


def _sub(e: Emitter, n: Node, a: tuple, k: dict) -> str:
    return e.op("Sub", [e.t(a[0]), _scaled(e, a[1], k.get("alpha", 1))])


def _rsub(e: Emitter, n: Node, a: tuple, k: dict) -> str:  # other - alpha * self
    return e.op("Sub", [e.t(a[1]), _scaled(e, a[0], k.get("alpha", 1))])


def _div(e: Emitter, n: Node, a: tuple, k: dict) -> str:
    if k.get("rounding_mode") is not None:
        raise NotImplementedError(f"export_onnx: {e.where}: div with rounding_mode={k['rounding_mode']!r}")
    return e.op("Div", [e.t(a[0]), e.t(a[1])])


def _rsqrt(e: Emitter, n: Node, a: tuple, k: dict) -> str:
    return e.op("Reciprocal", [e.op("Sqrt", [e.t(a[0])])])


def _ne(e: Emitter, n: Node, a: tuple, k: dict) -> str:
    return e.op("Not", [e.op("Equal", [e.t(a[0]), e.t(a[1])])])


def _clip(lo: Any, hi: Any) -> Callable[[Emitter, Any], str]:
    def emit(e: Emitter, x: Any) -> str:
        return e.op("Clip", [e.t(x), "" if lo is None else e.t(lo), "" if hi is None else e.t(hi)])

    return emit


def _clamp(e: Emitter, n: Node, a: tuple, k: dict) -> str:
    lo = a[1] if len(a) > 1 else k.get("min")
    hi = a[2] if len(a) > 2 else k.get("max")
    return _clip(lo, hi)(e, a[0])


def _hardtanh(e: Emitter, n: Node, a: tuple, k: dict) -> str:
    return _clip(a[1] if len(a) > 1 else -1.0, a[2] if len(a) > 2 else 1.0)(e, a[0])


def _softplus(e: Emitter, n: Node, a: tuple, k: dict) -> str:
    """torch: ``x`` where ``beta * x > threshold``, else ``log(1 + exp(beta * x)) / beta``."""
    beta = a[1] if len(a) > 1 else k.get("beta", 1)
    threshold = a[2] if len(a) > 2 else k.get("threshold", 20)
    x = e.t(a[0])
    bx = x if beta == 1 else e.op("Mul", [x, e.t(beta)])
    soft = e.op("Softplus", [bx])
    soft = soft if beta == 1 else e.op("Div", [soft, e.t(beta)])
    return e.op("Where", [e.op("Greater", [bx, e.t(threshold)]), x, soft])


def _elu(e: Emitter, n: Node, a: tuple, k: dict) -> str:
    alpha, scale, input_scale = (
        list(a[1:]) + [k.get("alpha", 1), k.get("scale", 1), k.get("input_scale", 1)][len(a) - 1 :]
    )[:3]
    x = e.t(a[0])
    if scale == 1 and input_scale == 1:
        return e.op("Elu", [x], alpha=float(alpha))
    negative = e.op("Sub", [e.op("Exp", [e.op("Mul", [x, e.t(input_scale)])]), e.t(1.0)])
    negative = e.op("Mul", [negative, e.t(float(alpha) * float(scale))])
    return e.op("Where", [e.op("Greater", [x, e.t(0.0)]), e.op("Mul", [x, e.t(scale)]), negative])


def _leaky_relu(e: Emitter, n: Node, a: tuple, k: dict) -> str:
    return e.op("LeakyRelu", [e.t(a[0])], alpha=float(a[1] if len(a) > 1 else k.get("negative_slope", 0.01)))


def _dims(dims: Any) -> list[int]:
    return [-1] if dims is None else ([dims] if isinstance(dims, int) else list(dims))


def _reduction(op_type: str) -> Handler:
    def emit(e: Emitter, n: Node, a: tuple, k: dict) -> str:
        dims = _dims(a[1] if len(a) > 1 else k.get("dim"))
        keepdim = a[2] if len(a) > 2 else k.get("keepdim", False)
        return e.reduce(op_type, e.full(e.t(a[0])), dims, keepdim)

    return emit


def _var_mean(e: Emitter, n: Node, a: tuple, k: dict) -> list[str]:
    """``[var, mean]``: the mean of the squared deviations, times ``n / (n - correction)`` (torch's default 1)."""
    x = e.full(e.t(a[0]))
    dims = _dims(a[1] if len(a) > 1 else k.get("dim"))
    correction = k.get("correction")
    correction = 1 if correction is None else correction
    keepdim = k.get("keepdim", False)
    mean = e.reduce("ReduceMean", x, dims, True)
    deviation = e.op("Sub", [x, mean])
    var = e.reduce("ReduceMean", e.op("Mul", [deviation, deviation]), dims, keepdim)
    count = int(np.prod([e.width(a[0], d) for d in dims]))
    if correction:
        var = e.op("Mul", [var, e.t(count / (count - correction))])
    return [var, mean if keepdim else e.reduce("ReduceMean", x, dims, False)]


def _var(e: Emitter, n: Node, a: tuple, k: dict) -> str:
    return _var_mean(e, n, a, k)[0]


def _slice(e: Emitter, n: Node, a: tuple, k: dict) -> str:
    dim, start, end, step = (list(a[1:]) + [0, None, None, 1][len(a) - 1 :])[:4]
    start, end = start or 0, _INT64_MAX if end is None else min(end, _INT64_MAX)
    ints = e.g.ints
    return e.op("Slice", [e.full(e.t(a[0])), ints([start]), ints([end]), ints([dim]), ints([step])])


def _split(e: Emitter, n: Node, a: tuple, k: dict) -> list[str]:
    dim = a[2] if len(a) > 2 else k.get("dim", 0)
    if n.target is torch.ops.aten.split_with_sizes.default:
        sizes = list(a[1])
    else:
        width, size = e.width(a[0], dim), a[1]
        sizes = [size] * (width // size) + ([width % size] if width % size else [])
    return e.op("Split", [e.full(e.t(a[0])), e.g.ints(sizes)], len(sizes), axis=dim)


def _cat(e: Emitter, n: Node, a: tuple, k: dict) -> str:
    dim = a[1] if len(a) > 1 else k.get("dim", 0)
    return e.op("Concat", [e.full(e.t(v)) for v in a[0]], axis=dim)


def _sizes(e: Emitter, sizes: Any) -> str:
    if any(isinstance(s, Node) for s in sizes):  # a symbolic row count (sym_size): an int64 [1] value
        return e.op("Concat", [e.t(s) if isinstance(s, Node) else e.g.ints([s]) for s in sizes], axis=0)
    return e.g.ints(list(sizes))


def _reshape(e: Emitter, n: Node, a: tuple, k: dict) -> str:
    return e.op("Reshape", [e.full(e.t(a[0])), _sizes(e, a[1])])


def _expand(e: Emitter, n: Node, a: tuple, k: dict) -> str:  # -1 keeps a size: broadcasting from 1 does the same
    sizes = [1 if isinstance(s, int) and s == -1 else s for s in a[1]]
    return e.op("Expand", [e.t(a[0]), _sizes(e, sizes)])


def _same(e: Emitter, n: Node, a: tuple, k: dict) -> str:
    return e.t(a[0])


def _filled(e: Emitter, n: Node, fill: float) -> str:
    value = e.values[n]
    const = e.g.const(fill, dtype=_np_dtype(value))
    return e.op("Expand", [const, e.op("Shape", [e.full(e.t(n.args[0]))])])


def _to_copy(e: Emitter, n: Node, a: tuple, k: dict) -> str:
    types = _onnx().TensorProto
    to = {np.bool_: types.BOOL, np.int64: types.INT64}.get(_np_dtype(e.values[n]), types.FLOAT)
    return e.op("Cast", [e.t(a[0])], to=to)


def _mm(e: Emitter, n: Node, a: tuple, k: dict) -> str:
    return e.op("MatMul", [e.full(e.t(a[0])), e.t(a[1])])


def _sym_size(e: Emitter, n: Node, a: tuple, k: dict) -> str:
    return e.op("Slice", [e.op("Shape", [e.t(a[0])]), e.g.ints([a[1]]), e.g.ints([a[1] + 1])])


aten = torch.ops.aten
_UNARY = {
    "neg": "Neg", "reciprocal": "Reciprocal", "sqrt": "Sqrt", "exp": "Exp", "log": "Log", "abs": "Abs",
    "sign": "Sign", "sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu", "logical_not": "Not",
    # pointwise work on the inputs alone runs outside the loop, where the compiler takes any pointwise op
    "sin": "Sin", "cos": "Cos", "tan": "Tan", "asin": "Asin", "acos": "Acos", "atan": "Atan", "sinh": "Sinh",
    "cosh": "Cosh", "asinh": "Asinh", "acosh": "Acosh", "atanh": "Atanh", "erf": "Erf", "floor": "Floor",
    "ceil": "Ceil", "round": "Round",
}  # fmt: skip
_COMPARE = {"gt": "Greater", "lt": "Less", "ge": "GreaterOrEqual", "le": "LessOrEqual", "eq": "Equal"}

#: aten op -> its ONNX translation (``handler(emitter, node, args, kwargs)`` -> a name or a list of names).
OPS: dict[Any, Handler] = {
    **{getattr(aten, op).default: _elementwise(onnx_op) for op, onnx_op in _UNARY.items()},
    **{getattr(aten, op).Scalar: _elementwise(onnx_op) for op, onnx_op in _COMPARE.items()},
    **{getattr(aten, op).Tensor: _elementwise(onnx_op) for op, onnx_op in _COMPARE.items()},
    aten.ne.Scalar: _ne, aten.ne.Tensor: _ne,
    aten.add.Tensor: _add, aten.add.Scalar: _add, aten.sub.Tensor: _sub, aten.sub.Scalar: _sub,
    aten.rsub.Scalar: _rsub, aten.rsub.Tensor: _rsub,
    aten.mul.Tensor: _elementwise("Mul"), aten.mul.Scalar: _elementwise("Mul"),
    aten.div.Tensor: _div, aten.div.Scalar: _div, aten.pow.Tensor_Scalar: _elementwise("Pow"),
    aten.rsqrt.default: _rsqrt,
    aten.hardsigmoid.default: lambda e, n, a, k: e.op("HardSigmoid", [e.t(a[0])], alpha=1.0 / 6.0, beta=0.5),
    aten.hardtanh.default: _hardtanh, aten.softplus.default: _softplus, aten.elu.default: _elu,
    aten.leaky_relu.default: _leaky_relu, aten.clamp.default: _clamp,
    aten.clamp_min.default: lambda e, n, a, k: _clip(a[1], None)(e, a[0]),
    aten.clamp_max.default: lambda e, n, a, k: _clip(None, a[1])(e, a[0]),
    aten.maximum.default: _elementwise("Max"), aten.minimum.default: _elementwise("Min"),
    aten.where.self: _elementwise("Where"),
    aten.sum.dim_IntList: _reduction("ReduceSum"), aten.mean.dim: _reduction("ReduceMean"),
    aten.amax.default: _reduction("ReduceMax"), aten.amin.default: _reduction("ReduceMin"),
    aten.var.correction: _var, aten.var_mean.correction: _var_mean,
    aten.slice.Tensor: _slice, aten.split.Tensor: _split, aten.split_with_sizes.default: _split,
    aten.cat.default: _cat, aten.expand.default: _expand,
    aten.view.default: _reshape, aten._unsafe_view.default: _reshape, aten.reshape.default: _reshape,
    aten.clone.default: _same, aten.alias.default: _same, aten.detach.default: _same,
    aten.full_like.default: lambda e, n, a, k: _filled(e, n, a[1]),
    aten.zeros_like.default: lambda e, n, a, k: _filled(e, n, 0),
    aten.ones_like.default: lambda e, n, a, k: _filled(e, n, 1),
    aten._to_copy.default: _to_copy, aten.mm.default: _mm, aten.sym_size.int: _sym_size,
    operator.getitem: lambda e, n, a, k: e.env[a[0]][a[1]],
}  # fmt: skip


def emit_graph(e: Emitter, gm: GraphModule, feeds: list[Any], folded: set[Node] = frozenset()) -> list[Any]:
    """Translate ``gm`` with its placeholders bound to ``feeds`` (ONNX names or torch constants) -> its outputs.

    ``folded``: nodes whose recorded value is written as a constant instead of being translated (``prepare``'s work
    on the weights alone).
    """
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    e.env.update(zip(placeholders, feeds, strict=True))
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            continue
        if n.op == "output":
            return [e.env[a] if isinstance(a, Node) else a for a in n.args[0]]
        if n in folded or n.op == "get_attr":
            value = e.values[n]
            e.env[n] = value.detach() if isinstance(value, torch.Tensor) else value  # (a list from split: getitem)
            continue
        handler = OPS.get(n.target)
        if n.op != "call_function" or handler is None:
            raise NotImplementedError(
                f"export_onnx: {e.where}: {n.target} has no ONNX translation (export_onnx translates the compiled "
                "step's op set, rnnkit.engine.compiler.program.STAGE_OPS, and common pointwise ops on the inputs)"
            )
        e.made_full = False
        result = handler(e, n, n.args, dict(n.kwargs))
        e.env[n] = result
        names = [v for v in (e.env[a] for a in n.all_input_nodes) if isinstance(v, str)]
        # an op broadcasting only narrow values (and scalars) makes a narrow value
        if isinstance(result, str) and not e.made_full and names and all(v in e.narrow for v in names):
            e.narrow.add(result)
    raise ValueError(f"export_onnx: {e.where}: the graph has no output")
