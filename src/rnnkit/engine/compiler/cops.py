"""The C a stage's aten ops become: the unit's prelude (vectorisable math) and one template per elementwise op.

Every elementwise op of ``program.STAGE_OPS`` and of the derivatives autograd produces for them is a function
``(args, kwargs, d) -> str`` of its arguments' C expressions (tensors already turned into element reads, scalars
into literals) and ``d`` (the dtype's ``T``/suffix). Booleans (comparisons, masks) are ``T`` values 0 and 1.

float: exp, tanh, sigmoid as the fused kernels' common.h (a branch-free Cephes exp, about 1 ulp, which GCC
vectorises under ``-O3 -march=native -fno-math-errno``); double: libm, as the fused kernels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["PRELUDE", "ELEMENTWISE", "Args", "Dtype", "literal"]

# The float exp/sigmoid/tanh of the fused kernels, one definition for both (csrc/rk_math.h, plain C).
_MATH_H = (Path(__file__).resolve().parents[1] / "csrc" / "rk_math.h").read_text(encoding="utf-8")

# libm's functions by their double names (float: the same with an ``f``), and the two-operand helpers.
_LIBM = {"log": "log", "log1p": "log1p", "expm1": "expm1", "sqrt": "sqrt", "abs": "fabs"}
_BINARY = {"pow": "{libm}(a, b)", "max": "a > b ? a : b", "min": "a < b ? a : b"}


def _helpers(T: str, sfx: str) -> str:
    f = "f" if T == "float" else ""
    lines = [f"static inline {T} rk_{name}_{sfx}({T} x) {{ return {libm}{f}(x); }}" for name, libm in _LIBM.items()]
    lines += [f"static inline {T} rk_{name}_{sfx}({T} a, {T} b) {{ return {body.format(libm='pow' + f)}; }}"
              for name, body in _BINARY.items()]  # fmt: skip
    return "\n".join(lines) + "\n"


PRELUDE = (
    _MATH_H.replace("#pragma once", "")
    + '\n#define RK_EXPORT __attribute__((visibility("default")))\n\n'
    + _helpers("float", "f")
    + "static inline double rk_exp_d(double x) { return exp(x); }\n"
    + "static inline double rk_sigmoid_d(double x) { return 1.0 / (1.0 + exp(-x)); }\n"
    + "static inline double rk_tanh_d(double x) { return tanh(x); }\n"
    + _helpers("double", "d")
)


class Dtype:
    """The C type of a unit (``float`` or ``double``) and its helpers' suffix."""

    def __init__(self, c_type: str) -> None:
        self.T = c_type
        self.sfx = "f" if c_type == "float" else "d"

    def fn(self, name: str, *args: str) -> str:
        return f"rk_{name}_{self.sfx}({', '.join(args)})"

    def lit(self, value: Any) -> str:
        return literal(value, self.T)


def literal(value: Any, c_type: str) -> str:
    """A Python scalar as a C expression of ``c_type``."""
    if isinstance(value, bool):
        return f"(({c_type}){int(value)})"
    v = float(value)
    if math.isnan(v):
        return f"(({c_type})NAN)"
    if math.isinf(v):
        return f"(({c_type}){'-' if v < 0 else ''}INFINITY)"
    return f"(({c_type}){v!r})"


def _b(cond: str, d: Dtype) -> str:
    """A C condition as a ``T`` 0/1."""
    return f"(({cond}) ? ({d.T})1 : ({d.T})0)"


def _alpha(kw: dict, d: Dtype, e: str) -> str:
    alpha = kw.get("alpha", 1)
    return e if alpha == 1 else f"({d.lit(alpha)} * {e})"


def _pow(a: str, e: Any, d: Dtype) -> str:
    e = float(e)
    table = {
        0.0: d.lit(1),
        1.0: a,
        2.0: f"({a} * {a})",
        3.0: f"({a} * {a} * {a})",
        0.5: d.fn("sqrt", a),
        -1.0: f"({d.lit(1)} / {a})",
        -2.0: f"({d.lit(1)} / ({a} * {a}))",
        -0.5: f"({d.lit(1)} / {d.fn('sqrt', a)})",
    }
    return table.get(e, d.fn("pow", a, d.lit(e)))


def _clamp(a: str, lo: Any, hi: Any, d: Dtype) -> str:
    if lo is not None:
        a = d.fn("max", a, lo if isinstance(lo, str) else d.lit(lo))
    if hi is not None:
        a = d.fn("min", a, hi if isinstance(hi, str) else d.lit(hi))
    return a


def _softplus(a: str, beta: Any, threshold: Any, d: Dtype) -> str:
    xb = f"({a} * {d.lit(beta)})"
    return f"({xb} > {d.lit(threshold)} ? {a} : {d.fn('log1p', d.fn('exp', xb))} / {d.lit(beta)})"


def _softplus_bwd(g: str, a: str, beta: Any, threshold: Any, d: Dtype) -> str:
    xb = f"({a} * {d.lit(beta)})"
    z = d.fn("exp", xb)
    return f"({xb} > {d.lit(threshold)} ? {g} : {g} * {z} / ({z} + {d.lit(1)}))"


def _elu(a: str, alpha: Any = 1.0, scale: Any = 1.0, input_scale: Any = 1.0, *, d: Dtype) -> str:
    neg = f"{d.lit(alpha)} * {d.fn('expm1', f'({a} * {d.lit(input_scale)})')}"
    return f"({d.lit(scale)} * ({a} > 0 ? {a} : {neg}))"


def _elu_bwd(g: str, alpha: Any, scale: Any, input_scale: Any, is_result: bool, x: str, d: Dtype) -> str:
    al, sc, isc = d.lit(alpha), d.lit(scale), d.lit(input_scale)
    if is_result:
        neg = f"{g} * {isc} * ({x} + {al} * {sc})"
    else:
        neg = f"{g} * {isc} * {al} * {sc} * {d.fn('exp', f'({x} * {isc})')}"
    return f"({x} <= 0 ? {neg} : {g} * {sc})"


class Args(list):
    """A template's arguments as C expressions (``None`` for an absent optional), with ``raw``: the node's own
    arguments (Python scalars where the op takes a number: exponents, betas, flags)."""

    def __init__(self, exprs: list, raw: list) -> None:
        super().__init__(exprs)
        self.raw = raw


Template = Callable[[Args, dict, Dtype], str]


def _cmp(op: str) -> Template:
    return lambda a, kw, d: _b(f"{a[0]} {op} {a[1]}", d)


ELEMENTWISE: dict[str, Template] = {
    "add.Tensor": lambda a, kw, d: f"({a[0]} + {_alpha(kw, d, a[1])})",
    "add.Scalar": lambda a, kw, d: f"({a[0]} + {_alpha(kw, d, a[1])})",
    "sub.Tensor": lambda a, kw, d: f"({a[0]} - {_alpha(kw, d, a[1])})",
    "sub.Scalar": lambda a, kw, d: f"({a[0]} - {_alpha(kw, d, a[1])})",
    "rsub.Scalar": lambda a, kw, d: f"({a[1]} - {_alpha(kw, d, a[0])})",
    "rsub.Tensor": lambda a, kw, d: f"({a[1]} - {_alpha(kw, d, a[0])})",
    "mul.Tensor": lambda a, kw, d: f"({a[0]} * {a[1]})",
    "mul.Scalar": lambda a, kw, d: f"({a[0]} * {a[1]})",
    "div.Tensor": lambda a, kw, d: f"({a[0]} / {a[1]})",
    "div.Scalar": lambda a, kw, d: f"({a[0]} / {a[1]})",
    "neg.default": lambda a, kw, d: f"(-{a[0]})",
    "reciprocal.default": lambda a, kw, d: f"({d.lit(1)} / {a[0]})",
    "pow.Tensor_Scalar": lambda a, kw, d: _pow(a[0], a.raw[1], d),
    "sqrt.default": lambda a, kw, d: d.fn("sqrt", a[0]),
    "rsqrt.default": lambda a, kw, d: f"({d.lit(1)} / {d.fn('sqrt', a[0])})",
    "exp.default": lambda a, kw, d: d.fn("exp", a[0]),
    "log.default": lambda a, kw, d: d.fn("log", a[0]),
    "abs.default": lambda a, kw, d: d.fn("abs", a[0]),
    "sign.default": lambda a, kw, d: f"({_b(f'{a[0]} > 0', d)} - {_b(f'{a[0]} < 0', d)})",
    "sgn.default": lambda a, kw, d: f"({_b(f'{a[0]} > 0', d)} - {_b(f'{a[0]} < 0', d)})",
    "sigmoid.default": lambda a, kw, d: d.fn("sigmoid", a[0]),
    "tanh.default": lambda a, kw, d: d.fn("tanh", a[0]),
    "relu.default": lambda a, kw, d: f"({a[0]} > 0 ? {a[0]} : {d.lit(0)})",
    "hardsigmoid.default": lambda a, kw, d: f"({_clamp(f'({a[0]} + {d.lit(3)})', 0, 6, d)} / {d.lit(6)})",
    "hardtanh.default": lambda a, kw, d: _clamp(a[0], *(a[1:] + ["-1.0", "1.0"][len(a) - 1 :]), d),
    "softplus.default": lambda a, kw, d: _softplus(a[0], *(list(a.raw[1:]) + [1, 20][len(a) - 1 :]), d),
    "elu.default": lambda a, kw, d: _elu(a[0], *a.raw[1:], d=d),
    "leaky_relu.default": lambda a, kw, d: f"({a[0]} > 0 ? {a[0]} : {a[0]} * {a[1] if len(a) > 1 else d.lit(0.01)})",
    "clamp.default": lambda a, kw, d: _clamp(a[0], a[1] if len(a) > 1 else None, a[2] if len(a) > 2 else None, d),
    "clamp_min.default": lambda a, kw, d: _clamp(a[0], a[1], None, d),
    "clamp_max.default": lambda a, kw, d: _clamp(a[0], None, a[1], d),
    "maximum.default": lambda a, kw, d: d.fn("max", a[0], a[1]),
    "minimum.default": lambda a, kw, d: d.fn("min", a[0], a[1]),
    "where.self": lambda a, kw, d: f"({a[0]} != 0 ? {a[1]} : {a[2]})",
    "masked_fill.Scalar": lambda a, kw, d: f"({a[1]} != 0 ? {a[2]} : {a[0]})",
    "masked_fill_.Scalar": lambda a, kw, d: f"({a[1]} != 0 ? {a[2]} : {a[0]})",
    "masked_fill.Tensor": lambda a, kw, d: f"({a[1]} != 0 ? {a[2]} : {a[0]})",
    "masked_fill_.Tensor": lambda a, kw, d: f"({a[1]} != 0 ? {a[2]} : {a[0]})",
    "logical_not.default": lambda a, kw, d: _b(f"{a[0]} == 0", d),
    "logical_and.default": lambda a, kw, d: _b(f"{a[0]} != 0 && {a[1]} != 0", d),
    "logical_and_.default": lambda a, kw, d: _b(f"{a[0]} != 0 && {a[1]} != 0", d),
    "logical_or.default": lambda a, kw, d: _b(f"{a[0]} != 0 || {a[1]} != 0", d),
    "logical_or_.default": lambda a, kw, d: _b(f"{a[0]} != 0 || {a[1]} != 0", d),
    # the derivatives autograd writes for the ops above
    "tanh_backward.default": lambda a, kw, d: f"({a[0]} * ({d.lit(1)} - {a[1]} * {a[1]}))",
    "sigmoid_backward.default": lambda a, kw, d: f"({a[0]} * (({d.lit(1)} - {a[1]}) * {a[1]}))",
    "threshold_backward.default": lambda a, kw, d: f"({a[1]} <= {a[2]} ? {d.lit(0)} : {a[0]})",
    # torch's kernel multiplies by a float 1/6 in every dtype
    "hardsigmoid_backward.default": lambda a, kw, d: (
        f"({a[1]} > {d.lit(-3)} && {a[1]} < {d.lit(3)} ? {a[0]} * ({d.T})(1.0f / 6.0f) : {d.lit(0)})"
    ),
    "hardtanh_backward.default": lambda a, kw, d: f"({a[1]} <= {a[2]} || {a[1]} >= {a[3]} ? {d.lit(0)} : {a[0]})",
    "softplus_backward.default": lambda a, kw, d: _softplus_bwd(a[0], a[1], a.raw[2], a.raw[3], d),
    "elu_backward.default": lambda a, kw, d: _elu_bwd(a[0], *a.raw[1:5], a[5], d=d),
    "leaky_relu_backward.default": lambda a, kw, d: f"({a[1]} > 0 ? {a[0]} : {a[0]} * {a[2]})",
}
for _op, _c in (("gt", ">"), ("lt", "<"), ("ge", ">="), ("le", "<="), ("eq", "=="), ("ne", "!=")):
    ELEMENTWISE[f"{_op}.Scalar"] = _cmp(_c)
    ELEMENTWISE[f"{_op}.Tensor"] = _cmp(_c)
