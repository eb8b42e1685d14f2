"""The machinery that writes one aten graph over rows ``(n, width)`` as C loops over the feature axis, fused.

``codegen.emit_function(name, graph, inputs, outputs, dtype)`` writes with it::

    void name(int64_t b0, int64_t b1, T* const* p, const int64_t* ld)

which, for every row ``b`` in ``[b0, b1)``, reads placeholder ``k`` at ``p[i] + b * ld[i]`` (``i = inputs[k]``) and
writes (``=``) or accumulates (``+=``) graph output ``k`` at every ``p[i] + b * ld[i]`` of ``outputs[k]``.

How a row is computed: nodes in graph order; an elementwise node is a local of a loop over its width, and
consecutive nodes of one width share that loop (the compiler vectorises it: ``#pragma omp simd``); a value read
later from another loop, or at a column offset (a slice of it), is also stored in a per-row array, on demand. A
value read once (through slices reading disjoint columns, e.g. an LSTM's gate pre-activations read by ``chunk``)
is computed where it is read, with no array at all. Feature-axis reductions (``sum``, ``mean``, ``var``,
``amax``) accumulate in the loop that makes their input when they can, into per-row scalars. An output built
as a sum or concatenation of pieces (the gradients autograd writes: ``cat``, ``slice_backward``, ``add``) is
written piece by piece at its columns, so no zero-padded temporary is made.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.fx import Node

from .cops import ELEMENTWISE, Args, Dtype

__all__ = ["CodegenError", "Emitter", "Expr", "Lazy", "Loc", "Mem", "View", "op_name", "width_of", "feature_dim"]

IDENTITY = {
    "alias.default", "detach.default", "clone.default", "_to_copy.default", "view.default", "_unsafe_view.default",
    "expand.default", "unsqueeze.default", "squeeze.dim", "squeeze.default", "lift_fresh_copy.default",
    "reshape.default", "contiguous.default",
}  # fmt: skip
CONSTANTS = {
    "full_like.default": 1,
    "zeros_like.default": 0.0,
    "ones_like.default": 1.0,
    "scalar_tensor.default": 0,
    "full.default": 1,
    "zeros.default": 0.0,
    "ones.default": 1.0,
    "new_zeros.default": 0.0,
    "new_ones.default": 1.0,
    "new_full.default": 2,
}  # fmt: skip  (a number: the constant itself when a float, else the argument holding it)
REDUCTIONS = {"sum.dim_IntList", "mean.dim", "var.correction", "var_mean.correction", "amax.default", "amin.default"}


class CodegenError(ValueError):
    """A stage graph the code generator cannot write as C (an op or a shape outside its set)."""


class _Conflict(Exception):
    """A value is not available where it is read (in the loop being built): close that loop and retry."""


def op_name(node: Node) -> str:
    """``aten.add.Tensor`` -> ``add.Tensor``; ``getitem`` for ``operator.getitem``."""
    if node.target is operator.getitem:
        return "getitem"
    name = str(node.target)
    return name[5:] if name.startswith("aten.") else name


def width_of(node: Node) -> int:
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        raise CodegenError(f"node {node.name} ({node.target}): no tensor metadata (trace the graph with make_fx)")
    if val.dim() > 2:
        raise CodegenError(f"node {node.name} ({node.target}): a {val.dim()}-D value; stages hold (rows, width)")
    return int(val.shape[1]) if val.dim() == 2 else 1


def feature_dim(node: Node, dims: Any) -> None:
    src = node.args[0]
    rank = src.meta["val"].dim() if isinstance(src, Node) else 2
    dims = [dims] if isinstance(dims, int) else list(dims or [])
    if rank != 2 or len(dims) != 1 or dims[0] % 2 != 1:
        raise CodegenError(f"{op_name(node)} over dims {dims} of a {rank}-D value: only the feature axis (-1)")


def _at(off: int, idx: str) -> str:
    if off == 0:
        return idx
    return str(off) if idx == "0" else f"{off} + {idx}"


class Loop:
    def __init__(self, width: int) -> None:
        self.width, self.body, self.red, self.open = width, [], [], True

    def render(self) -> str:
        red = "".join(f" reduction({k}:{a})" for k, a in self.red)
        body = "\n".join("      " + line for line in self.body)
        return f"    #pragma omp simd{red}\n    for (int64_t j = 0; j < {self.width}; ++j) {{\n{body}\n    }}"


class Val:
    width = 1

    def at(self, em: Emitter, idx: str, off: int = 0) -> str:
        raise NotImplementedError


class Expr(Val):  # a constant or a per-row scalar (``loop``: the loop still accumulating it)
    def __init__(self, text: str, loop: Loop | None = None) -> None:
        self.text, self.loop = text, loop

    def at(self, em: Emitter, idx: str, off: int = 0) -> str:
        if self.loop is not None and self.loop.open:
            raise _Conflict
        return self.text


class Mem(Val):  # a row in memory: a slot's row, a constant vector, an array written by closed loops
    def __init__(self, ptr: str, width: int) -> None:
        self.ptr, self.width = ptr, width

    def at(self, em: Emitter, idx: str, off: int = 0) -> str:
        return f"{self.ptr}[{_at(off, '0' if self.width == 1 else idx)}]"


class Loc(Val):  # a local of a loop, stored in an array when read elsewhere
    def __init__(self, name: str, loop: Loop, width: int) -> None:
        self.name, self.loop, self.width, self.arr = name, loop, width, None

    def at(self, em: Emitter, idx: str, off: int = 0) -> str:
        if self.loop.open:
            if off == 0 and idx == "j" and em.cur is self.loop:
                return self.name
            raise _Conflict
        if self.arr is None:
            self.arr = em.array(self.width)
            self.loop.body.append(f"{self.arr}[j] = {self.name};")
        return f"{self.arr}[{_at(off, idx)}]"


class View(Val):  # columns [off, off + width) of base
    def __init__(self, base: Val, off: int, width: int) -> None:
        self.base, self.off, self.width = base, off, width

    def at(self, em: Emitter, idx: str, off: int = 0) -> str:
        return self.base.at(em, "0" if self.width == 1 else idx, self.off + off)


class Lazy(Val):  # computed where read (read once per column)
    def __init__(self, node: Node, width: int) -> None:
        self.node, self.width = node, width

    def at(self, em: Emitter, idx: str, off: int = 0) -> str:
        text = em.expr(self.node, _at(off, idx))
        if em.cur is None:
            return f"({text})"
        name = em.name("t")
        em.cur.body.append(f"const {em.d.T} {name} = {text};")
        return name


class Emitter:
    def __init__(self, d: Dtype) -> None:
        self.d, self.items, self.decls, self.consts = d, [], [], []
        self.open: Loop | None = None
        self.cur: Loop | None = None
        self.vals: dict[Node, Any] = {}
        self.n = 0

    def name(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def array(self, width: int) -> str:
        name = self.name("a")
        self.decls.append(f"{self.d.T} {name}[{width}];")
        return name

    def close(self) -> None:
        if self.open is not None:
            self.open.open = False
            self.open = None

    def row(self, stmt: str) -> None:
        """A row-level statement, before the open loop (it reads nothing that loop makes; see scalar)."""
        self.items.insert(self.items.index(self.open) if self.open else len(self.items), stmt)

    def _in_loop(self, width: int, build: Callable[[], str], finish: Callable[[Loop, str], Any]) -> Any:
        for _ in range(2):
            if self.open is None or self.open.width != width:
                self.close()
                self.open = Loop(width)
                self.items.append(self.open)
            loop, mark = self.open, len(self.open.body)
            self.cur = loop
            try:
                text = build()
            except _Conflict:
                del loop.body[mark:]
                self.close()
                continue
            finally:
                self.cur = None
            return finish(loop, text)
        raise CodegenError("internal: a value read before its loop closed")

    def vector(self, width: int, build: Callable[[str], str]) -> Loc:
        def finish(loop: Loop, text: str) -> Loc:
            name = self.name("v")
            loop.body.append(f"const {self.d.T} {name} = {text};")
            return Loc(name, loop, width)

        return self._in_loop(width, lambda: build("j"), finish)

    def scalar(self, build: Callable[[str], str]) -> Expr:
        for _ in range(2):
            try:
                text = build("0")
            except _Conflict:
                self.close()
                continue
            name = self.name("s")
            self.row(f"const {self.d.T} {name} = {text};")
            return Expr(name)
        raise CodegenError("internal: a scalar read before its loop closed")

    def reduce(self, width: int, kind: str, build: Callable[[str], str]) -> Expr:
        """A feature-axis reduction (``+``, ``max``, ``min``) of ``build(j)``, j < width, into a row scalar."""
        if width == 1:
            return self.scalar(build)

        def finish(loop: Loop, text: str) -> Expr:
            acc = self.name("r")
            init = {"+": self.d.lit(0), "max": self.d.lit(float("-inf")), "min": self.d.lit(float("inf"))}[kind]
            self.items.insert(self.items.index(loop), f"{self.d.T} {acc} = {init};")
            if kind == "+":
                loop.body.append(f"{acc} += {text};")
            else:
                loop.body.append(f"{acc} = {text} {'>' if kind == 'max' else '<'} {acc} ? {text} : {acc};")
            loop.red.append((kind, acc))
            return Expr(acc, loop)

        return self._in_loop(width, lambda: build("j"), finish)

    def store(self, val: Val, width: int, dests: list[tuple[str, int, str]]) -> None:
        """Writes ``val`` (``width`` columns) at every ``(pointer, column, "=" or "+=")`` of ``dests``."""
        if not dests:
            return
        zero = isinstance(val, Expr) and val.loop is None and val.text == self.d.lit(0)
        if zero and width > 1 and all(m == "+=" for _, _, m in dests):
            return
        if width == 1:
            s = val if isinstance(val, Expr) and val.loop is None else self.scalar(lambda i: val.at(self, i))
            for ptr, off, mode in dests:
                self.row(f"{ptr}[{off}] {mode} {s.text};")
            return
        loc = val if isinstance(val, Loc) and val.width == width else self.vector(width, lambda i: val.at(self, i))
        for ptr, off, mode in dests:
            loc.loop.body.append(f"{ptr}[{_at(off, 'j')}] {mode} {loc.name};")

    def expr(self, node: Node, idx: str) -> str:
        exprs, raw = [], list(node.args)
        for a in node.args:
            if isinstance(a, Node):
                exprs.append(self.vals[a].at(self, idx))
            elif isinstance(a, (int, float, bool)):
                exprs.append(self.d.lit(a))
            else:
                exprs.append(None)
        return ELEMENTWISE[op_name(node)](Args(exprs, raw), dict(node.kwargs), self.d)

    def cat(self, pieces: Sequence[Node], width: int) -> Mem:
        self.close()
        arr, off = self.array(width), 0
        for p in pieces:
            self.store(self.vals[p], width_of(p), [(arr, off, "=")])
            self.close()
            off += width_of(p)
        return Mem(arr, width)
