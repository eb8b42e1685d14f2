"""A ``StepProgram``'s stages as one plain C unit (no torch headers): a forward and a backward function per stage.

The C ABI (every function, float or double ``T``)::

    void rk_stage<k>_fwd(int64_t b0, int64_t b1, T* const* p, const int64_t* ld);
    void rk_stage<k>_bwd(int64_t b0, int64_t b1, T* const* p, const int64_t* ld);

Slots are numbered in ``program.slots`` order, ``S`` of them. For rows ``b`` in ``[b0, b1)`` of the step, slot ``i``'s
row is ``p[i] + b * ld[i]`` (its value) and ``p[S + i] + b * ld[S + i]`` (its gradient, backward only): a ``param``
slot has ``ld`` 0 (every row reads the same vector). The forward writes (``=``) the stage's output slots from its
input slots; the backward reads the input slots' values and the output slots' gradients and *adds* (``+=``) the
input slots' gradients (``seq`` slots get none): a value read by several stages or multiplies gets the sum.

The backward is the stage graph's vector-Jacobian product traced with ``make_fx`` (``torch.func.vjp``), so it
recomputes what it needs from the stage's inputs; parameters are ``(n, width)`` there, so their gradients come
out per row (the runner sums the rows), and no generated loop runs over the batch axis.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
from torch.fx import GraphModule, Node
from torch.fx.experimental.proxy_tensor import make_fx

from .cops import ELEMENTWISE, PRELUDE, Dtype
from .emit import CONSTANTS, IDENTITY, REDUCTIONS, CodegenError, Emitter, Expr, Lazy, Mem, View, feature_dim, op_name
from .emit import width_of as _w
from .program import Stage, StepProgram

__all__ = ["CodegenError", "emit_function", "stage_backward", "program_source", "c_type"]


def c_type(dtype: torch.dtype) -> str:
    """``float`` or ``double``: the C type of a unit for ``dtype``."""
    if dtype not in (torch.float32, torch.float64):
        raise CodegenError(f"compiled step: float32 or float64 expected, got {dtype}")
    return "float" if dtype == torch.float32 else "double"


def _args(node: Node) -> list[Node]:
    found: list[Node] = []
    torch.fx.node.map_arg((node.args, node.kwargs), found.append)
    return found


def _slice_bounds(node: Node, width: int) -> tuple[int, int]:
    args = list(node.args) + [None] * (5 - len(node.args))
    feature_dim(node, args[1] if args[1] is not None else 0)
    if args[4] not in (None, 1):
        raise CodegenError(f"{node.name}: a slice with step {args[4]} (only step 1)")
    lo, hi = args[2] or 0, width if args[3] is None else args[3]
    lo, hi = (lo + width if lo < 0 else lo), (hi + width if hi < 0 else hi)
    return max(0, min(lo, width)), max(0, min(hi, width))


def _split_sizes(node: Node, width: int) -> list[int]:
    feature_dim(node, node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0))
    arg = node.args[1]
    if isinstance(arg, int):
        return [min(arg, width - k) for k in range(0, width, arg)]
    return [int(s) for s in arg]


def _reads(node: Node, off: int, width: int, live: set[Node], out: list[tuple[int, int]]) -> None:
    """The column ranges of ``node`` its live users read (through slices and splits), appended to ``out``."""
    for user in node.users:
        if user not in live:
            continue
        name, occ = op_name(user), sum(1 for a in _args(user) if a is node)
        if name in IDENTITY and _w(user) == width:
            _reads(user, off, width, live, out)
        elif name == "slice.Tensor":
            lo, hi = _slice_bounds(user, width)
            _reads(user, off + lo, hi - lo, live, out)
        elif name in ("split.Tensor", "split_with_sizes.default"):
            sizes = _split_sizes(user, width)
            for g in user.users:
                if g in live:
                    _reads(g, off + sum(sizes[: g.args[1]]), sizes[g.args[1]], live, out)
        else:
            out.extend([(off, width)] * occ)


def _disjoint(regions: list[tuple[int, int]]) -> bool:
    regions = sorted(regions)
    return all(a[0] + a[1] <= b[0] for a, b in zip(regions, regions[1:], strict=False))


class _Plan:
    """Which nodes are written where (outputs split into pieces), which are live, which computed where read."""

    def __init__(self, graph: torch.fx.Graph, outs: Sequence[Node], dests: Sequence[list]) -> None:
        self.uses = {n: 0 for n in graph.nodes}
        for n in graph.nodes:
            if n.op != "output":
                for a in _args(n):
                    self.uses[a] += 1
        occ: dict[Node, int] = {}
        for o in outs:
            occ[o] = occ.get(o, 0) + 1
        self.requests: dict[Node, list] = {}
        self.skip: set[Node] = set()
        for o, ds in zip(outs, dests, strict=True):
            self._place(o, list(ds), self.uses[o] == 0 and occ[o] >= 1)
        self.live: set[Node] = set()
        stack = list(self.requests)
        while stack:
            n = stack.pop()
            if n not in self.live:
                self.live.add(n)
                stack.extend(_args(n))
        self.lazy = set()
        for n in self.live:
            if n.op == "call_function" and op_name(n) in ELEMENTWISE and n not in self.requests and _w(n) > 1:
                regions: list[tuple[int, int]] = []
                _reads(n, 0, _w(n), self.live, regions)
                if _disjoint(regions):
                    self.lazy.add(n)

    def _place(self, node: Node, dests: list, whole: bool) -> None:
        """Writes ``node`` at ``dests`` ``(pointer, column, mode)``, in pieces when ``whole`` (no other reader)."""
        if not dests:
            return
        name = op_name(node) if node.op == "call_function" else ""
        modes = {m for _, _, m in dests}
        if whole and name == "add.Tensor" and modes == {"+="} and node.kwargs.get("alpha", 1) == 1:
            a, b = node.args
            if isinstance(a, Node) and isinstance(b, Node) and _w(a) == _w(b) == _w(node):
                self.skip.add(node)
                for x in (a, b):
                    self._place(x, dests, self.uses[x] == 1 and a is not b)
                return
        if whole and name == "slice_backward.default" and modes == {"+="} and list(node.args[5:]) in ([], [1]):
            feature_dim(node, node.args[2])
            self.skip.add(node)
            g = node.args[0]
            self._place(g, [(p, o + node.args[3], m) for p, o, m in dests], self.uses[g] == 1)
            return
        if whole and name == "cat.default":
            feature_dim(node, node.args[1] if len(node.args) > 1 else 0)
            pieces, off = node.args[0], 0
            self.skip.add(node)
            for piece in pieces:
                alone = self.uses[piece] == 1
                self._place(piece, [(p, o + off, m) for p, o, m in dests], alone)
                off += _w(piece)
            return
        if whole and name in ("zeros_like.default", "zeros.default", "new_zeros.default") and modes == {"+="}:
            self.skip.add(node)
            return
        self.requests.setdefault(node, []).extend(dests)


def _constant(em: Emitter, gm: GraphModule, node: Node) -> object:
    t = operator.attrgetter(node.target)(gm)
    if t.numel() == 1:
        return Expr(em.d.lit(t.item()))
    if t.dim() in (1, 2) and t.shape[-1] == t.numel():
        name = em.name(f"{em.fn}_c")  # file scope: named after its function
        em.consts.append(f"static const {em.d.T} {name}[{t.numel()}] = {{{', '.join(map(em.d.lit, t.tolist()))}}};")
        return Mem(name, t.numel())
    raise CodegenError(f"constant {node.target} of shape {tuple(t.shape)}: only scalars and feature vectors")


def _value(em: Emitter, plan: _Plan, node: Node) -> object:  # noqa: C901 (one dispatch over the op kinds)
    name, vals, d = op_name(node), em.vals, em.d
    a0 = node.args[0] if node.args else None
    if name == "getitem":
        return vals[a0][node.args[1]]
    if name in IDENTITY:
        v = vals[a0]
        if not isinstance(v, Expr) and v.width not in (1, _w(node)):
            raise CodegenError(f"{node.name}: {name} changes the width {v.width} -> {_w(node)}")
        return v
    if name == "slice.Tensor":
        lo, hi = _slice_bounds(node, _w(a0))
        return View(vals[a0], lo, hi - lo)
    if name in ("split.Tensor", "split_with_sizes.default"):
        sizes = _split_sizes(node, _w(a0))
        return [View(vals[a0], sum(sizes[:k]), s) for k, s in enumerate(sizes)]
    if name in CONSTANTS:
        spec = CONSTANTS[name]
        return Expr(d.lit(spec if isinstance(spec, float) else node.args[spec]))
    if name in ELEMENTWISE:
        w = _w(node)
        if node in plan.lazy:
            return Lazy(node, w)
        if w == 1:
            return em.scalar(lambda i: em.expr(node, i))
        return em.vector(w, lambda i: em.expr(node, i))
    if name in REDUCTIONS:
        feature_dim(node, node.args[1] if len(node.args) > 1 else node.kwargs.get("dim"))
        x, width = vals[a0], _w(a0)
        kind = {"amax.default": "max", "amin.default": "min"}.get(name, "+")
        total = em.reduce(width, kind, lambda i: x.at(em, i))
        if kind != "+" or name == "sum.dim_IntList":
            return total
        mean = em.scalar(lambda i: f"({total.at(em, i)} / {d.lit(width)})")
        if name == "mean.dim":
            return mean
        correction = node.kwargs.get("correction")
        correction = 1 if correction is None else correction

        def square(i: str) -> str:
            dx = f"({x.at(em, i)} - {mean.at(em, i)})"
            return f"({dx} * {dx})"

        m2 = em.reduce(width, "+", square)
        var = em.scalar(lambda i: f"({m2.at(em, i)} / {d.lit(max(width - correction, 0))})")
        return (var, mean) if name == "var_mean.correction" else var
    if name == "cat.default":
        feature_dim(node, node.args[1] if len(node.args) > 1 else 0)
        return em.cat(node.args[0], _w(node))
    if name == "slice_backward.default":
        feature_dim(node, node.args[2])
        em.close()
        arr = em.array(_w(node))
        em.row(f"memset({arr}, 0, sizeof({arr}));")
        em.store(vals[a0], _w(a0), [(arr, node.args[3], "=")])
        em.close()
        return Mem(arr, _w(node))
    raise CodegenError(f"op aten.{name} ({node.name}) is outside the compiled step's op set")


def emit_function(
    name: str, gm: GraphModule, inputs: Sequence[int], outputs: Sequence[Sequence[tuple[int, str]]], ctype: str
) -> str:
    """C of ``gm`` as ``void name(b0, b1, p, ld)``: placeholder ``k`` reads pointer ``inputs[k]``; graph output ``k``
    is written (``"="``) or added (``"+="``) at every pointer of ``outputs[k]`` (see the module's docstring)."""
    nodes = list(gm.graph.nodes)
    holders = [n for n in nodes if n.op == "placeholder"]
    outs = next(n for n in nodes if n.op == "output").args[0]
    outs = tuple(outs) if isinstance(outs, (tuple, list)) else (outs,)
    if len(holders) != len(inputs) or len(outs) != len(outputs):
        raise CodegenError(f"{name}: {len(holders)} inputs and {len(outs)} outputs, expected {len(inputs)}, "
                           f"{len(outputs)}")  # fmt: skip
    if any(not isinstance(o, Node) for o in outs):
        raise CodegenError(f"{name}: every output must be a tensor of the graph")
    dests = [[(f"q{i}", 0, mode) for i, mode in ds] for ds in outputs]
    plan = _Plan(gm.graph, outs, dests)
    em = Emitter(Dtype(ctype))
    em.fn = name
    for k, n in enumerate(holders):
        em.vals[n] = Mem(f"q{inputs[k]}", _w(n))
        em.store(em.vals[n], _w(n), plan.requests.get(n, []))
    for n in nodes:
        if n.op in ("placeholder", "output") or n not in plan.live:
            continue
        em.vals[n] = _constant(em, gm, n) if n.op == "get_attr" else _value(em, plan, n)
        if n in plan.requests:
            em.store(em.vals[n], _w(n), plan.requests[n])
    written = {i for ds in outputs for i, _ in ds}
    read = set(inputs) - written
    T = em.d.T
    ptrs = [f"    const {T}* restrict q{i} = p[{i}] + b * ld[{i}];" for i in sorted(read)]
    ptrs += [f"    {T}* restrict q{i} = p[{i}] + b * ld[{i}];" for i in sorted(written)]
    body = [x.render() if hasattr(x, "render") else f"    {x}" for x in em.items]
    return "\n".join(
        [*em.consts, f"RK_EXPORT void {name}(int64_t b0, int64_t b1, {T}* const* p, const int64_t* ld) {{",
         "  for (int64_t b = b0; b < b1; ++b) {", *ptrs, *(f"    {x}" for x in em.decls), *body, "  }", "}", ""]
    )  # fmt: skip


def stage_backward(stage: Stage, widths: Sequence[int], dtype: torch.dtype) -> GraphModule:
    """The vector-Jacobian product of ``stage.graph``: ``(*inputs, *d_outputs) -> d_inputs``, an aten graph."""
    g = torch.Generator().manual_seed(0)  # (examples of our own: compiling must not move the user's random stream)
    prim = [torch.randn(3, w, dtype=dtype, generator=g) for w in widths]

    def run(*xs: torch.Tensor) -> tuple:
        out = stage.graph(*xs)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)

    cots = [torch.randn(o.shape, dtype=o.dtype, generator=g) for o in run(*prim)]

    def vjp(*args: torch.Tensor) -> tuple:
        _, pullback = torch.func.vjp(run, *args[: len(prim)])
        return tuple(pullback(tuple(args[len(prim) :])))

    gm = make_fx(vjp)(*prim, *cots)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def program_source(program: StepProgram, dtype: torch.dtype, backward: bool) -> tuple[str, int]:
    """The C unit of ``program``'s stages for ``dtype`` (with their backwards when ``backward``), and the stage
    count: functions ``rk_stage<k>_fwd`` (and ``_bwd``), ``k`` counting the ``Stage`` steps in order."""
    ctype = c_type(dtype)
    index = {name: k for k, name in enumerate(program.slots)}
    S = len(index)
    parts, k = [PRELUDE], 0
    for step in program.steps:
        if not isinstance(step, Stage):
            continue
        ins = [index[s] for s in step.inputs]
        parts.append(emit_function(f"rk_stage{k}_fwd", step.graph, ins, [[(index[s], "=")] for s in step.outputs],
                                   ctype))  # fmt: skip
        if backward:
            gm = stage_backward(step, [program.slots[s].width for s in step.inputs], dtype)
            grads = [[] if program.slots[s].kind == "seq" else [(S + index[s], "+=")] for s in step.inputs]
            parts.append(emit_function(f"rk_stage{k}_bwd", gm, ins + [S + index[s] for s in step.outputs], grads,
                                       ctype))  # fmt: skip
        k += 1
    return "\n".join(parts), k
