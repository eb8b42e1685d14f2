"""The time loop of the pure-PyTorch kernels, shared by every family (as ``csrc/loop.h`` is by the compiled ones).

Packed rows ``(total, features)``: step ``t`` owns rows ``off : off + n`` where ``n = batch_sizes[t]`` is
non-increasing (sequences sorted longest first), so the ``n`` rows of a step continue the first ``n`` sequences.
:func:`forward_loop` is written in out-of-place torch ops, so the same loop serves the twins (without autograd)
and the differentiable recomputation of a fused layer (``create_graph=True``); :func:`backward_loop` runs the
hand-derived backward of a step, last step first.

Example::

    >>> from rnnkit.engine.twin.loop import forward_loop
    >>> bs = torch.tensor([2, 1])                        # 2 steps: batch 2, then 1
    >>> y, (h,) = forward_loop(bs, (torch.zeros(2, 3),), (None,), lambda off, n, h: (h + 1, (h + 1,)))
    >>> y.tolist(), h.tolist()
    ([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [2.0, 2.0, 2.0]], [[2.0, 2.0, 2.0], [1.0, 1.0, 1.0]])
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

__all__ = ["steps", "blocks", "affine", "clip_limit", "forward_loop", "backward_loop", "previous", "masked_rows"]
__all__ += ["input_grads"]


def steps(batch_sizes: Tensor) -> Iterator[tuple[int, int]]:
    """``(first row, rows)`` of each step of a packed sequence, up to its first empty step."""
    off = 0
    for n in batch_sizes.tolist():
        if n == 0:
            return
        yield off, n
        off += n


def blocks(g: Tensor, order: Sequence[int], width: int) -> list[Tensor]:
    """The column blocks ``order[0], order[1] ...`` of ``g``, each ``width`` wide (views)."""
    return [g[:, k * width : (k + 1) * width] for k in order]


def affine(x: Tensor, w: Tensor, bias: Tensor | None) -> Tensor:
    """``x @ w + bias``; the bias may be absent."""
    return x @ w if bias is None else torch.addmm(bias, x, w)


def clip_limit(limit: float) -> float | None:
    """A kernel's clip argument as the cells take it: the kernels' 0 means no clip."""
    return limit if limit > 0 else None


def _carry(new: Tensor, old: Tensor, mask: Tensor | None) -> Tensor:
    """The carried state after a step of ``n = len(new)`` running sequences, times the per-sequence state mask
    (a DropoutWrapper's); the sequences that have ended keep theirs."""
    n = new.shape[0]
    if mask is not None:
        new = new * mask[:n]
    return new if n == old.shape[0] else torch.cat([new, old[n:]])


Step = Callable[..., tuple[Tensor, Sequence[Tensor]]]


def forward_loop(
    batch_sizes: Tensor, states: Sequence[Tensor], masks: Sequence[Tensor | None], step: Step
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Runs ``step(off, n, *states_n) -> (y_t, new_states)`` over the packed steps, ``states_n`` each state's
    rows of the running sequences, and carries the new states (times their masks). Returns the outputs
    ``(total, width)``, ``states[0]``'s width, and the final states, each sequence's at its last step."""
    states = tuple(states)
    ys = []
    for off, n in steps(batch_sizes):
        y, new = step(off, n, *(s[:n] for s in states))
        ys.append(y)
        states = tuple(_carry(v, s, m) for v, s, m in zip(new, states, masks, strict=True))
    return (torch.cat(ys) if ys else states[0][:0]), states


def backward_loop(
    batch_sizes: Tensor, dy: Tensor, grads: Sequence[Tensor], masks: Sequence[Tensor | None], step: Step
) -> list[Tensor]:
    """Backward through time from ``grads``, the gradients reaching the final states (``dh[, dc]``), last step
    first: ``step(rows, n, d_h, *d_states) -> the gradients reaching the previous states``, where
    ``d_h = dy[rows] + mask_h * dh`` is the gradient reaching the step's outputs and ``d_states`` the rest of
    ``grads`` times their masks. Returns the gradients reaching the initial states."""
    grads = [g.clone() for g in grads]
    for off, n in reversed(list(steps(batch_sizes))):
        rows = slice(off, off + n)
        incoming = [g[:n] if m is None else m[:n] * g[:n] for g, m in zip(grads, masks, strict=True)]
        incoming[0] = dy[rows] + incoming[0]
        for g, new in zip(grads, step(rows, n, *incoming), strict=True):
            g[:n] = new
    return grads


def previous(batch_sizes: Tensor, h0: Tensor, y: Tensor, mask: Tensor | None) -> Tensor:
    """The state each step read, packed like ``y``: ``h0`` at step 0, then the previous step's (masked) rows."""
    rows = []
    schedule = list(steps(batch_sizes))
    for t, (_off, n) in enumerate(schedule):
        if t == 0:
            rows.append(h0[:n])
        else:
            prev = y[schedule[t - 1][0] : schedule[t - 1][0] + n]
            rows.append(prev * mask[:n] if mask is not None else prev)
    return torch.cat(rows) if rows else h0[:0]


def masked_rows(batch_sizes: Tensor, rows: Tensor, mask: Tensor | None) -> Tensor:
    """Packed ``rows`` (total, W) times a per-sequence mask (B, W), row b of every step times mask row b (the
    recurrent-dropout mask on the ``h`` each step's matmul read); ``rows`` itself without a mask."""
    if mask is None or rows.shape[0] == 0:
        return rows
    return torch.cat([rows[off : off + n] * mask[:n] for off, n in steps(batch_sizes)])


def input_grads(x: Tensor, w_x: Tensor, d: Tensor, need_dx: bool) -> tuple[Tensor | None, Tensor]:
    """``dx = d @ W_x^T`` (when asked) and ``dW_x = x^T @ d`` from the d pre-activations of all steps."""
    return (d @ w_x.t() if need_dx else None), x.t() @ d
