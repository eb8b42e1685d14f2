"""Random numbers a step draws (zoneout, per-step dropout), drawn before the loop in the reference loop's order.

A cell whose ``call`` draws at every step (``torch.bernoulli(torch.full_like(h, p))``, zoneout's mask; ``empty_like(h)
.bernoulli_(p)``, dropout's) runs compiled when each draw is *replayable*: the same op on a fresh ``(batch, width)``
tensor of the same dtype, whatever the step's values (a probability that is a constant, not one computed from the
state). The capture replaces each draw with columns of the inputs (``x`` widened to ``(rows, depth + R)``), so the
draws reach the loop as per-step inputs; before the loop, the engine makes the very calls the reference loop makes,
step by step, in the same order (``replay``), so the random stream is consumed alike and the results are equal. A
draw whose probability depends on the step's values is refused (``Unsupported``).

Example::

    >>> import torch
    >>> from rnnkit.engine.compiler.draws import Draw, replay
    >>> _ = torch.manual_seed(0); a = [torch.bernoulli(torch.full((3, 4), 0.3)) for _ in range(2)]
    >>> _ = torch.manual_seed(0); b = replay([Draw("bernoulli", 0.3, 4, "float32")], steps=2, batch=3)
    >>> bool(torch.equal(torch.stack(a), b))
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.fx import GraphModule, Node

__all__ = ["Draw", "widen_for_draws", "replay", "packed"]

aten = torch.ops.aten


@dataclass(frozen=True)
class Draw:
    """One draw of a step: ``kind`` ``"bernoulli"`` (``torch.bernoulli(torch.full((B, w), p))``) or
    ``"bernoulli_"`` (``torch.empty(B, w).bernoulli_(p)``), ``p``, the ``width`` and the dtype's name."""

    kind: str
    p: float
    width: int
    dtype: str

    def __call__(self, batch: int, device: Any = None) -> Tensor:
        dtype = getattr(torch, self.dtype)
        if self.kind == "bernoulli":
            return torch.bernoulli(torch.full((batch, self.width), self.p, dtype=dtype, device=device))
        return torch.empty(batch, self.width, dtype=dtype, device=device).bernoulli_(self.p)


def _recipe(node: Node) -> Draw | str:
    """The draw ``node`` makes, or why it cannot be replayed."""
    val = node.meta.get("val")
    width = int(val.shape[1]) if val is not None and val.dim() == 2 else None
    source = node.args[0] if node.args else None
    if width is None or not isinstance(source, Node):
        return f"{node.target} draws values of a shape other than (rows, width)"
    if node.target is aten.bernoulli.default and source.target is aten.full_like.default:
        p = source.args[1]
        kind = "bernoulli"
    elif node.target in (aten.bernoulli_.float, aten.bernoulli.p) and source.target is aten.empty_like.default:
        p = node.args[1] if len(node.args) > 1 else node.kwargs.get("p", 0.5)
        kind = "bernoulli_"
    else:
        return (f"{node.target} draws random numbers from values the step computes; a replayable draw is "
                "torch.bernoulli(torch.full_like(h, p)) or torch.empty_like(h).bernoulli_(p)")  # fmt: skip
    if not isinstance(p, (int, float)):
        return f"{node.target}: its probability is computed at every step; give it as a number"
    return Draw(kind, float(p), width, str(val.dtype).removeprefix("torch."))


def widen_for_draws(gm: GraphModule, x: Node, mode: Any) -> list[Draw] | str:
    """Replace every draw of ``gm`` by columns of its inputs ``x``, widened to ``(rows, depth + R)``; the draws in
    the order the step makes them, or why one cannot be replayed (``gm`` then unchanged)."""
    seeded = [n for n in gm.graph.nodes if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)
              and torch.Tag.nondeterministic_seeded in n.target.tags]  # fmt: skip
    draws = [_recipe(n) for n in seeded]
    bad = next((d for d in draws if isinstance(d, str)), None)
    if bad is not None or not draws:
        return bad or []
    depth, val = x.meta["val"].shape[1], x.meta["val"]
    with mode:
        wide = torch.empty(val.shape[0], depth + sum(d.width for d in draws), dtype=val.dtype, device=val.device)
    g = gm.graph
    with g.inserting_after(x):
        first = g.call_function(aten.slice.Tensor, (x, 1, 0, depth))
    x.replace_all_uses_with(first, delete_user_cb=lambda user: user is not first)
    x.meta["val"] = wide
    with mode:
        first.meta["val"] = wide[:, :depth]
    start = depth
    for node, draw in zip(seeded, draws, strict=True):
        with g.inserting_before(node):
            cols = g.call_function(aten.slice.Tensor, (x, 1, start, start + draw.width))
        with mode:
            cols.meta["val"] = wide[:, start : start + draw.width].to(getattr(torch, draw.dtype))
        node.replace_all_uses_with(cols)
        g.erase_node(node)  # (a draw is impure: dead-code elimination keeps it)
        start += draw.width
    g.eliminate_dead_code()
    gm.recompile()
    return draws


def replay(draws: list[Draw], steps: int, batch: int, device: Any = None) -> Tensor:
    """The draws of ``steps`` steps of ``batch`` rows as the reference loop makes them: ``(steps, batch, R)``."""
    per_step = [torch.cat([d(batch, device) for d in draws], 1) for _ in range(steps)]
    return torch.stack(per_step) if per_step else torch.zeros(0, batch, sum(d.width for d in draws))


def packed(draws: list[Draw], batch_sizes: Tensor, batch: int, sort: Any, like: Tensor) -> Tensor:
    """``replay`` for a packed schedule ``batch_sizes`` (``len`` steps, rows sorted by ``sort``): ``(N, R)`` rows in
    the packed order, the running sequences' rows of each step."""
    steps = replay(draws, len(batch_sizes), batch, like.device).to(like.dtype)  # (T, B, R), the batch's order
    rows = sort(steps.transpose(0, 1))  # (B, T, R), the kernels' order
    return torch.cat([rows[:n, t] for t, n in enumerate(batch_sizes.tolist())]) if len(batch_sizes) else rows[:0, 0]
