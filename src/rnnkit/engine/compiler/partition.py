"""The partition: a traced step (``trace``) cut into ``prepare`` and the loop's ``steps`` (``program``'s contract).

After the rewrites (``rewrite.normalise``) each node has a class (``P``: weights; ``X``: inputs only; ``S``: state;
``B``: the batch size). Then:

* every ``X`` and ``S`` node must act row by row: a value ``(rows, features)`` with the batch rows first, of an op in
  ``STAGE_OPS`` (an ``X`` node may also be any pointwise op, run by torch) or a multiply by a ``P`` weight. Anything
  else is ``Unsupported``, naming the op: never a silently wrong step;
* ``prepare`` is a ``GraphModule`` of the ``P`` and ``X`` nodes the loop reads: the ``X`` values packed side by side
  into ``step_inputs`` (their columns are the ``step`` slots), the recurrent weights and the row parameters. It was
  traced with a symbolic batch, so it runs on all ``N = T * B`` rows at once;
* an ``S`` multiply ``mm(lhs, W)`` becomes a ``MatMul`` and the other ``S`` nodes are cut into ``Stage`` graphs between
  the multiplies: a multiply reading a value of stage ``k`` runs after it (level ``k + 1``); a node that feeds a
  multiply runs as early as it can, any other in the last stage. Values crossing a multiply are ``temp`` slots.
"""

from __future__ import annotations

import hashlib
import operator
from typing import Any

import torch
from torch import Tensor
from torch.fx import Graph, GraphModule, Node

from .program import STAGE_OPS, MatMul, Slot, Stage, StepProgram, Unsupported
from .rewrite import B, P, S, X, classify, dims, normalise, tensors_in
from .trace import Traced

__all__ = ["partition"]

aten = torch.ops.aten
_SIZED = {aten.expand.default, aten.view.default, aten._unsafe_view.default}  # a batch size in a size list -> -1


def _what(cls: str) -> str:
    return {X: "the inputs", S: "the state", B: "the batch size"}.get(cls, "the cell's tensors")


def _check(traced: Traced, cls: dict[Node, str]) -> str:
    """Why an ``X``/``S`` node cannot run in rows, or ``""`` (the multiplies first: they have the clearest words)."""
    nodes = [n for n in traced.gm.graph.nodes if n.op == "call_function" and cls[n] in (X, S)]
    for n in nodes:
        if n.target in (aten.mm.default, aten.bmm.default, aten.mv.default, aten.dot.default) and any(
            cls[a] != P for a in n.args[1:2]
        ):
            on = _what(cls[n.args[1]])
            return f"{n.target} multiplies by a matrix that depends on {on} (only multiplies by the cell's tensors " \
                "are compiled)"  # fmt: skip
    for n in nodes:
        name = str(n.target)
        pointwise = isinstance(n.target, torch._ops.OpOverload) and torch.Tag.pointwise in n.target.tags
        if not (n.target in (operator.getitem, aten.mm.default) or name in STAGE_OPS or (cls[n] == X and pointwise)):
            return f"{name} is outside the compiled op set"
        for v in tensors_in(n.meta["val"]):
            shape = dims(v)
            if len(shape) != 2 or shape[0] != traced.batch or not isinstance(shape[1], int):
                return f"{name} makes a value of shape {tuple(v.shape)}, not (batch, features): only row-wise work " \
                    "is compiled (reduce over the feature axis with keepdim=True)"  # fmt: skip
        if cls[n] != S:
            continue
        for a in n.all_input_nodes:
            if cls[a] == B and not (n.target in _SIZED and a in n.args[1]):
                return f"{name} reads the batch size in the step"
            if cls[a] == P and n.target is not aten.mm.default and any(d != 1 for d in a.meta["val"].shape[:-1]):
                return f"{name} combines a state value with a {tuple(a.meta['val'].shape)} matrix of the cell " \
                    "elementwise (a row parameter must be a vector)"  # fmt: skip
    return ""


def _levels(snodes: list[Node], matmuls: set[Node]) -> dict[Node, int]:
    """Stage index of each stage node and level of each multiply (it runs before the stage of its level)."""
    level: dict[Node, int] = {}
    for n in snodes:
        if n in matmuls:
            lhs = n.args[0]
            level[n] = level[lhs] + 1 if lhs in level and lhs not in matmuls else 0
        else:
            level[n] = max([level[a] for a in n.all_input_nodes if a in level], default=0)
    feeds: set[Node] = set()
    todo = [m.args[0] for m in matmuls]
    while todo:
        n = todo.pop()
        if n in level and n not in matmuls and n not in feeds:
            feeds.add(n)
            todo += n.all_input_nodes
    last = max(level.values(), default=0)
    for n in snodes:  # what no multiply needs runs in the last stage (a getitem stays with its tuple)
        if n not in matmuls and n not in feeds:
            level[n] = level[n.args[0]] if n.target is operator.getitem else last
    return level


def _op_name(target: object) -> str:
    return "operator.getitem" if target is operator.getitem else str(target)


class _Prepare:
    """``prepare(tensors, x) -> (step_inputs, weights, row_params)``: the program's ``P`` and ``X`` part, in torch."""

    def __init__(self, gm: GraphModule):
        self.graph_module = gm

    def __call__(self, tensors: list[Tensor], x: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        step, weights, params = self.graph_module(*tensors, x)
        return step, list(weights), list(params)


def _covered(frontier: list[Node]) -> Node | None:
    """The node whose columns, in order, the ``frontier`` values are (``aten.slice`` on dim 1 of one ``(rows, w)``
    value, back to back from 0 to ``w``), or ``None``."""
    if len(frontier) < 2 or any(f.target is not aten.slice.Tensor for f in frontier):
        return None
    base, end = frontier[0].args[0], 0
    for f in frontier:
        dim, start, stop = (list(f.args[1:]) + [0, 0, None])[:3]
        step = f.args[4] if len(f.args) > 4 else 1
        if f.args[0] is not base or dim not in (1, -1) or start != end or step != 1:
            return None
        end = f.meta["val"].shape[1] + start
    return base if end == base.meta["val"].shape[1] else None


def partition(traced: Traced) -> StepProgram | Unsupported:
    """``traced`` as a ``StepProgram`` (the module docstring says how), or what stops it."""
    normalise(traced)
    cls = classify(traced)
    bad = _check(traced, cls)
    if bad:
        return Unsupported(bad, traced.where)
    return _Builder(traced, cls).build()


class _Stop(Exception):
    """Why the program cannot be built (raised from deep in the builder, returned as ``Unsupported``)."""


class _Builder:
    def __init__(self, traced: Traced, cls: dict[Node, str]):
        self.t, self.cls = traced, cls
        nodes = list(traced.gm.graph.nodes)
        self.phs = [n for n in nodes if n.op == "placeholder"]
        self.nt = len(traced.tensor_names)
        self.rows = self.phs[self.nt].meta["val"].shape[0]
        self.out = [n for n in nodes if n.op == "output"][0].args[0]
        self.snodes = [n for n in nodes if n.op == "call_function" and cls[n] == S]
        self.matmuls = [n for n in self.snodes if n.target is aten.mm.default]
        self.level = _levels(self.snodes, set(self.matmuls))
        self.slots: dict[str, Slot] = {}
        self.slot_of: dict[Node, str] = {}
        self.frontier: list[Node] = []  # X values the loop reads, in step_inputs' column order
        self.weights: list[Node] = []
        self.params: list[Node] = []
        self.seqs: list[str] = []
        self.bools: set[str] = set()  # slots carried as 0/1 in the program's dtype, compared back to bool inside

    def _new(self, slot: Slot, node: Node) -> str:
        val = node.meta["val"]
        ok = val.dtype == self.t.dtype or (val.dtype == torch.bool and slot.kind in ("step", "param", "temp"))
        # a cell tensor of a narrower float type is promoted by the op reading it anyway: cast in prepare, exactly
        widen = val.dtype.is_floating_point and val.dtype.itemsize <= self.t.dtype.itemsize
        if not (ok or (slot.kind == "param" and (widen or val.dim() == 0))):
            label = self.t.tensor_names[self.phs.index(node)] if node in self.phs else node.name
            raise _Stop(f"a value of dtype {val.dtype} ({label}) enters the step, which computes in {self.t.dtype}")
        if val.dtype == torch.bool:
            self.bools.add(slot.name)
        self.slots[slot.name] = slot
        self.slot_of[node] = slot.name
        return slot.name

    def _slot(self, node: Node) -> str:
        """The slot a stage or a multiply reads ``node`` from (made on first use; a temp is made by its writer)."""
        if node in self.slot_of:
            return self.slot_of[node]
        c, val = self.cls[node], node.meta["val"]
        if node.op == "placeholder" and c == S and self.phs.index(node) > self.nt:
            k = self.phs.index(node) - self.nt - 1
            return self._new(Slot(f"state_in{k}", "state_in", self.t.state_widths[k], k), node)
        if node.op == "placeholder" and c == S:
            self.seqs.append(self.t.tensor_names[self.phs.index(node)])
            return self._new(Slot(f"seq{len(self.seqs) - 1}", "seq", val.shape[1], len(self.seqs) - 1), node)
        if c == X:
            start = sum(f.meta["val"].shape[1] for f in self.frontier)
            self.frontier.append(node)
            return self._new(Slot(f"x_{node.name}", "step", val.shape[1], start), node)
        if c == P:
            self.params.append(node)
            return self._new(Slot(f"p_{node.name}", "param", max(1, val.numel()), len(self.params) - 1), node)
        raise AssertionError(f"{node.name} read before it is written")  # (the levels order every temp first)

    def _temp(self, node: Node) -> str:
        return self._new(Slot(f"t_{node.name}", "temp", node.meta["val"].shape[1]), node)

    def build(self) -> StepProgram | Unsupported:
        try:
            return self._program(self._steps())
        except _Stop as stop:
            return Unsupported(str(stop), self.t.where)

    def _steps(self) -> list[Stage | MatMul]:
        outs = [("output", self.out[0], self.t.output_width)]
        leaves = zip(self.out[1:], self.t.state_widths, strict=True)
        outs += [(f"state_out{k}", v, w) for k, (v, w) in enumerate(leaves)]
        for i, (name, v, w) in enumerate(outs):
            val = v.meta.get("val") if isinstance(v, Node) else None
            if val is None or self.cls[v] == P or val.dtype != self.t.dtype or val.shape[1] != w:
                raise _Stop(f"{name.replace('0', ' 0')} is not a (batch, {w}) value of the step in {self.t.dtype}")
            self.slots[name] = Slot(name, "output" if i == 0 else "state_out", w, max(0, i - 1))
        last = max(self.level.values(), default=0)
        writer = {name: self.level[v] if v in self.level and v not in self.matmuls else last for name, v, _ in outs}
        steps: list[Stage | MatMul] = []
        for k in range(last + 1):
            for m in (m for m in self.matmuls if self.level[m] == k):
                if m.args[0].meta["val"].dtype != self.t.dtype:
                    raise _Stop(f"{m.name} multiplies a value of dtype {m.args[0].meta['val'].dtype}")
                self.weights.append(m.args[1])
                steps.append(MatMul(lhs=self._slot(m.args[0]), weight=len(self.weights) - 1, out=self._temp(m)))
            stage = self._stage(k, [(name, v) for name, v, _ in outs if writer[name] == k])
            if stage is not None:
                steps.append(stage)
        return steps

    def _later(self, n: Node, k: int) -> bool:
        return any(u in self.level and (u in self.matmuls or self.level[u] > k) for u in n.users)

    def _stage(self, k: int, outs: list[tuple[str, Node]]) -> Stage | None:
        here = [n for n in self.snodes if n not in self.matmuls and self.level[n] == k]
        inside = set(here)
        temps = [n for n in here if self._later(n, k)]
        if not here and not outs:
            return None
        g, env, inputs = Graph(), {}, []

        def read(a: Node) -> Node:
            if a not in env:
                name = self._slot(a)
                ph = g.placeholder(name)
                with self.t.mode:
                    ph.meta["val"] = torch.empty(self.rows, self.slots[name].width, dtype=self.t.dtype)
                inputs.append(name)
                env[a] = self._call(g, aten.ne.Scalar, ph, 0) if name in self.bools else ph
            return env[a]

        for n in here:
            for a in n.all_input_nodes:
                if a not in inside and self.cls[a] != B:
                    read(a)
            env[n] = g.node_copy(n, lambda a: -1 if self.cls[a] == B else env[a])  # (B: a size list's rows, _check)
        names, results = [], []
        for n in temps:
            names.append(self._temp(n))
            cast = n.meta["val"].dtype == torch.bool  # (a bool temp travels as 0/1)
            to = {"dtype": self.t.dtype}
            results.append(self._call(g, aten._to_copy.default, env[n], **to) if cast else env[n])
        for name, v in outs:
            names.append(name)
            results.append(env[v] if v in inside else self._call(g, aten.clone.default, read(v)))
        g.output(tuple(results))
        return Stage(GraphModule(torch.nn.Module(), g), tuple(inputs), tuple(names))

    def _call(self, g: Graph, op: Any, node: Node, *args: Any, **kwargs: Any) -> Node:
        """A new node ``op(node, *args, **kwargs)`` with its fake value (``meta["val"]``), as traced nodes have."""
        out = g.call_function(op, (node, *args), kwargs)
        with self.t.mode:
            out.meta["val"] = op(node.meta["val"], *args, **kwargs)
        return out

    def _prepare(self) -> GraphModule:
        """The ``P`` and ``X`` nodes the loop reads, as ``(tensors..., x) -> (step_inputs, weights, row_params)``."""
        g, env = Graph(), {}
        for i, ph in enumerate(self.phs[: self.nt + 1]):
            env[ph] = g.placeholder(f"t{i}" if i < self.nt else "x")
        needed: set[Node] = set()
        todo = [*self.frontier, *self.weights, *self.params]
        while todo:
            n = todo.pop()
            if n not in needed and n.op != "placeholder":
                needed.add(n)
                todo += n.all_input_nodes
        for n in self.t.gm.graph.nodes:
            if n in needed:
                env[n] = g.node_copy(n, lambda a: env[a])
        cast = {"dtype": self.t.dtype}

        def as_dtype(n: Node) -> Node:
            same = n.meta["val"].dtype == self.t.dtype
            return env[n] if same else g.call_function(aten._to_copy.default, (env[n],), cast)

        x = env[self.phs[self.nt]]
        whole = _covered(self.frontier)
        if whole is not None:  # the step values are one tensor's columns in order (a merged multiply): no copy
            step = as_dtype(whole)
        elif len(self.frontier) == 1:
            step = as_dtype(self.frontier[0])
        elif self.frontier:
            step = g.call_function(aten.cat.default, ([as_dtype(f) for f in self.frontier], 1))
        else:
            step = g.call_function(aten.slice.Tensor, (x, 1, 0, 0))
        params = [g.call_function(aten.reshape.default, (as_dtype(p), [-1])) for p in self.params]
        g.output((step, [env[w] for w in self.weights], params))
        return GraphModule(self.t.gm, g)

    def _program(self, steps: list[Stage | MatMul]) -> StepProgram:
        prepare = self._prepare()
        stages = [s for s in steps if isinstance(s, Stage)]
        ops = sorted({_op_name(n.target) for s in stages for n in s.graph.graph.nodes if n.op == "call_function"})
        hoisted = [n for n in self.t.gm.graph.nodes if n.target is aten.mm.default and self.cls[n] == X]
        step_width = sum(f.meta["val"].shape[1] for f in self.frontier)
        info = {
            "ops": ops,
            "hoisted_multiplies": len(hoisted),
            "recurrent_multiplies": len(self.matmuls),
            "matmul_levels": len({self.level[m] for m in self.matmuls}),
            "stages": len(stages),
            "dtype": str(self.t.dtype).replace("torch.", ""),
            "bool_slots": sorted(self.bools),
            "random_draws": len(self.t.draws),
        }
        digest = hashlib.sha256()
        for part in (
            info["dtype"], step_width, self.t.state_widths, self.t.output_width, sorted(self.slots.values(), key=repr),
            *[s if isinstance(s, MatMul) else (s.graph.code, s.inputs, s.outputs) for s in steps],
        ):  # fmt: skip
            digest.update(repr(part).encode())
        return StepProgram(
            slots=self.slots,
            steps=steps,
            step_width=step_width,
            state_widths=self.t.state_widths,
            output_width=self.t.output_width,
            tensor_names=self.t.tensor_names,
            prepare=_Prepare(prepare),
            seq_names=tuple(self.seqs),
            key=digest.hexdigest(),
            draws=tuple(self.t.draws),
            info=info,
        )
