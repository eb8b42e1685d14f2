"""The rewrites between the trace and the partition: each node classed, the multiplies put in the shape the loop needs.

Classes (``classify``): ``P`` a value of the cell's tensors and constants only (weights, biases, their slices),
``X`` a value of the inputs and not of the state (hoisted out of the time loop), ``S`` a value of the state or of a
per-sequence tensor (inside the loop), ``B`` the batch size (a symbol: ``x.shape[0]`` and arithmetic on it).

Rewrites (``normalise``), each exact:

* one ``sym_size(x, 0)`` node for the batch size, read from the inputs (``prepare`` has no state to read it from);
* ``P`` nodes first, so a node made from weights can be placed before any multiply;
* identities dropped: ``mul(a, 1)`` (from ``addmm``'s decomposition), full slices, whole writes (``copy``);
* a tensor of batch rows made from a size (``torch.zeros(batch, w)``) -> a ``P`` row expanded to the rows;
* a write into columns (``g[:, a:b] = v``, functionalized as ``slice_scatter``) -> a concatenation of columns;
* a feature-axis reduction with ``keepdim=False`` whose every use puts the axis back (``unsqueeze``, ``view``) ->
  ``keepdim=True``;
* ``mm(cat([x part, state part], 1), W)`` with ``W`` of class ``P`` (TF's ``concat([inputs, state]) @ kernel``) ->
  ``mm(x part, W[:d]) + mm(state part, W[d:])``: one multiply hoisted, one in the loop;
* multiplies of one left-hand side by several ``P`` weights -> one multiply by the weights side by side, sliced.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch.fx import Node
from torch.fx.operator_schemas import normalize_function

from .trace import Traced

__all__ = ["P", "X", "S", "B", "classify", "normalise", "emit", "tensors_in", "dims"]

aten = torch.ops.aten
P, X, S, B = "P", "X", "S", "B"
REDUCTIONS = {aten.sum.dim_IntList, aten.mean.dim, aten.amax.default, aten.amin.default, aten.var.correction,
              aten.var_mean.correction}  # fmt: skip
_PUT_BACK = {aten.unsqueeze.default, aten.view.default, aten._unsafe_view.default, aten.reshape.default}
# factory -> (position of the size, position of the fill value or the value)
_FACTORIES = {
    aten.full.default: (0, 1), aten.zeros.default: (0, 0.0), aten.ones.default: (0, 1.0),
    aten.new_full.default: (1, 2), aten.new_zeros.default: (1, 0.0), aten.new_ones.default: (1, 1.0),
}  # fmt: skip


def tensors_in(val: Any) -> list[Any]:
    """The tensors of a node's ``meta["val"]`` (one, or the items of a tuple)."""
    if isinstance(val, (tuple, list)):
        return [v for v in val if isinstance(v, torch.Tensor)]
    return [val] if isinstance(val, torch.Tensor) else []


def classify(traced: Traced) -> dict[Node, str]:
    """Each node's class (``P``, ``X``, ``S``, ``B``; see the module docstring)."""
    cls: dict[Node, str] = {}
    nt = len(traced.tensor_names)
    for node in traced.gm.graph.nodes:
        if node.op == "placeholder":
            i = len(cls)
            cls[node] = (S if i in traced.seq else P) if i < nt else (X if i == nt else S)
        elif node.op == "get_attr":
            cls[node] = P
        elif node.op == "call_function":
            ins = {cls[a] for a in node.all_input_nodes}
            if node.target is aten.sym_size.int or not tensors_in(node.meta.get("val")):
                cls[node] = P if ins <= {P} else B
            else:
                cls[node] = S if S in ins else X if X in ins else S if B in ins else P
    return cls


def emit(traced: Traced, before: Node, target: Any, *args: Any, **kwargs: Any) -> Node:
    """A new call of ``target`` placed before ``before``, its ``meta["val"]`` computed on the fake values."""
    with traced.gm.graph.inserting_before(before):
        node = traced.gm.graph.call_function(target, args, kwargs)
    fake = torch.fx.node.map_arg((args, kwargs), lambda a: a.meta["val"])
    with traced.mode:
        node.meta["val"] = target(*fake[0], **fake[1])
    return node


def _replace(old: Node, new: Node) -> None:
    old.replace_all_uses_with(new)


def _is_batch(a: Any, traced: Traced) -> bool:
    return isinstance(a, torch.SymInt) and a.node.expr == traced.batch


def _canonical_batch(traced: Traced, cls: dict[Node, str]) -> None:
    graph = traced.gm.graph
    phs = [n for n in graph.nodes if n.op == "placeholder"]
    x = phs[len(traced.tensor_names)]
    sizes = [n for n in graph.nodes if n.target is aten.sym_size.int and _is_batch(n.meta.get("val"), traced)]
    if not sizes:
        return
    one = emit(traced, phs[-1].next, aten.sym_size.int, x, 0)
    for n in sizes:
        _replace(n, one)
        graph.erase_node(n)


def _hoist_weights(traced: Traced, cls: dict[Node, str]) -> None:
    graph = traced.gm.graph
    anchor = [n for n in graph.nodes if n.op == "placeholder"][-1]
    if anchor.next.target is aten.sym_size.int:
        anchor = anchor.next
    for node in list(graph.nodes):
        if node.op in ("call_function", "get_attr") and cls.get(node) == P and node is not anchor:
            anchor.append(node)
            anchor = node


def _drop_identities(traced: Traced) -> None:
    for node in list(traced.gm.graph.nodes):
        a = node.args[0] if node.args else None
        if not isinstance(a, Node) or not tensors_in(node.meta.get("val")) or not tensors_in(a.meta.get("val")):
            continue
        one = node.target in (aten.mul.Tensor, aten.mul.Scalar) and len(node.args) == 2 and node.args[1] == 1
        full = node.target is aten.slice.Tensor and (len(node.args) < 5 or node.args[4] == 1)
        if (one or full) and _same(node.meta["val"], a.meta["val"]):
            _replace(node, a)
        src = node.args[1] if len(node.args) > 1 and isinstance(node.args[1], Node) else None
        scatter = node.target is aten.slice_scatter.default and (len(node.args) < 6 or node.args[5] == 1)
        if src is not None and (scatter or node.target is aten.copy.default) and _same(a.meta["val"], src.meta["val"]):
            _replace(node, src)  # the whole of a written by src


def dims(v: torch.Tensor) -> tuple[Any, ...]:
    """A tensor's shape with symbols as expressions: compared without adding guards to the shape environment."""
    return tuple(d.node.expr if isinstance(d, torch.SymInt) else d for d in v.shape)


def _same(v: Any, w: Any) -> bool:
    return isinstance(v, torch.Tensor) and isinstance(w, torch.Tensor) and dims(v) == dims(w) and v.dtype == w.dtype


def _row_factories(traced: Traced, cls: dict[Node, str]) -> None:
    """``torch.zeros(batch, w)`` and kin -> ``full((w,), value).expand(batch, w)``: a row parameter, expanded; a
    factory of no rows made from a step value (``h.new_full((), p)``, only its dtype read) -> ``full``, a constant."""
    for node in list(traced.gm.graph.nodes):
        if node.target not in _FACTORIES or cls.get(node) != S:
            continue
        val = node.meta["val"]
        size_at, fill = _FACTORIES[node.target]
        size_arg = node.args[size_at]
        fill = node.args[fill] if isinstance(fill, int) else fill
        if val.dim() < 2 and all(isinstance(n, int) for n in size_arg):  # ``h.new_full((), p)``: a constant (lerp's)
            _replace(node, emit(traced, node, aten.full.default, list(size_arg), fill, dtype=val.dtype,
                                device=val.device))  # fmt: skip
            continue
        if val.dim() != 2 or not _is_batch(val.shape[0], traced) or not isinstance(size_arg[1], int):
            continue
        row = emit(traced, node, aten.full.default, [size_arg[1]], fill, dtype=val.dtype, device=val.device)
        _replace(node, emit(traced, node, aten.expand.default, row, [size_arg[0], size_arg[1]]))


def _slice_scatters(traced: Traced, cls: dict[Node, str]) -> None:
    """``slice_scatter(base, src, 1, a, b)`` (``base[:, a:b] = src``, functionalized) -> a concatenation of columns."""
    for node in list(traced.gm.graph.nodes):
        if node.target is not aten.slice_scatter.default or cls.get(node) not in (X, S):
            continue
        kw = normalize_function(node.target, node.args, node.kwargs, normalize_to_only_use_kwargs=True).kwargs
        base, src = node.args[0], node.args[1]
        width = base.meta["val"].shape[-1]
        start, end = kw.get("start") or 0, kw.get("end")
        end = width if end is None else min(end, width)
        if kw.get("dim") not in (1, -1) or kw.get("step", 1) != 1 or base.meta["val"].dim() != 2 or start < 0:
            continue
        parts = [emit(traced, node, aten.slice.Tensor, base, 1, 0, start)] if start else []
        parts.append(src)
        if end < width:
            parts.append(emit(traced, node, aten.slice.Tensor, base, 1, end, width))
        _replace(node, emit(traced, node, aten.cat.default, parts, 1))


def _keepdim(traced: Traced, cls: dict[Node, str]) -> None:
    for node in list(traced.gm.graph.nodes):
        if node.target not in REDUCTIONS or cls.get(node) not in (X, S):
            continue
        kw = normalize_function(node.target, node.args, node.kwargs, normalize_to_only_use_kwargs=True).kwargs
        dims = kw.get("dim")
        dims = [dims] if isinstance(dims, int) else list(dims or [])
        if kw.get("keepdim") or dims not in ([1], [-1]):
            continue
        reduced = [u for u in node.users] if node.target is aten.var_mean.correction else [node]
        uses = [u for r in reduced for u in r.users]
        if not all(u.target in _PUT_BACK and len(tensors_in(u.meta.get("val"))[0].shape) == 2 for u in uses):
            continue  # a rank-1 row value used as such: the validation names it
        kw = {k: v for k, v in kw.items() if v is not node.args[0]}  # (the input goes first, by position)
        new = emit(traced, node, node.target, node.args[0], **{**kw, "keepdim": True})
        if node.target is aten.var_mean.correction:
            for r in reduced:
                r.replace_input_with(node, new)
                r.meta["val"] = new.meta["val"][r.args[1]]
        else:
            _replace(node, new)
            reduced = [new]
        for r in reduced:
            for u in list(r.users):
                if u.target in _PUT_BACK:
                    _replace(u, r)


def _split_concat_multiplies(traced: Traced, cls: dict[Node, str]) -> None:
    for node in list(traced.gm.graph.nodes):
        if node.target is not aten.mm.default or cls.get(node.args[1]) != P:
            continue
        lhs, w = node.args
        if lhs.target is not aten.cat.default or (lhs.args[1] if len(lhs.args) > 1 else 0) not in (1, -1):
            continue
        parts = list(lhs.args[0])
        if not any(cls[p] == X for p in parts) or all(cls[p] == X for p in parts):
            continue
        groups: dict[bool, list[tuple[Node, int, int]]] = defaultdict(list)
        off = 0
        for p in parts:
            width = p.meta["val"].shape[1]
            groups[cls[p] == X].append((p, off, off + width))
            off += width
        terms = []
        for group in (groups[True], groups[False]):
            rows = [emit(traced, node, aten.slice.Tensor, w, 0, a, b) for _, a, b in group]
            left = group[0][0] if len(group) == 1 else emit(traced, node, aten.cat.default, [p for p, _, _ in group], 1)
            right = rows[0] if len(rows) == 1 else emit(traced, node, aten.cat.default, rows, 0)
            terms.append(emit(traced, node, aten.mm.default, left, right))
        _replace(node, emit(traced, node, aten.add.Tensor, *terms))


def _merge_multiplies(traced: Traced, cls: dict[Node, str]) -> None:
    by_lhs: dict[Node, list[Node]] = defaultdict(list)
    for node in traced.gm.graph.nodes:
        if node.target is aten.mm.default and cls.get(node.args[1]) == P and cls.get(node.args[0]) in (X, S):
            by_lhs[node.args[0]].append(node)
    for group in by_lhs.values():
        if len(group) < 2:
            continue
        first = group[0]
        weight = emit(traced, first, aten.cat.default, [m.args[1] for m in group], 1)
        both = emit(traced, first, aten.mm.default, first.args[0], weight)
        off = 0
        for m in group:
            width = m.meta["val"].shape[1]
            _replace(m, emit(traced, first, aten.slice.Tensor, both, 1, off, off + width))
            off += width


def normalise(traced: Traced) -> None:
    """Apply the rewrites of the module docstring to ``traced.gm`` in place (classes recomputed between them)."""
    steps = (_canonical_batch, _hoist_weights, _drop_identities, _row_factories, _slice_scatters, _keepdim,
             _split_concat_multiplies, _hoist_weights, _merge_multiplies)  # fmt: skip
    for step in steps:
        cls = classify(traced)
        if step is _drop_identities:
            step(traced)
        else:
            step(traced, cls)
        traced.gm.graph.eliminate_dead_code()
    traced.gm.graph.lint()

