"""The packing plan: how a padded, time-major batch with ``lengths`` becomes packed rows and back.

TF's semantics (``dynamic_rnn(sequence_length=...)``): outputs past a sequence's length are zero,
the final state is the state at its last valid step, and a reverse direction reads each sequence
backwards *within its length*. The engine computes nothing on padding: sequences are sorted by
length (longest first) and step ``t`` processes only the ``batch_sizes[t]`` sequences still
running, exactly torch's ``PackedSequence`` layout. Reversal within length is folded into the
same gather, so the kernels only ever run forward.

Example::

    >>> import torch
    >>> from rnnkit.engine import make_plan
    >>> p = make_plan(3, 2, torch.tensor([1, 3]), reverse=False, device=torch.device("cpu"))
    >>> p.batch_sizes.tolist(), p.index.tolist()      # rows of x.view(T * B, D), step by step
    ([2, 1, 1], [1, 0, 3, 5])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Plan", "make_plan", "plan_for", "full_batch_sizes", "full_to_none", "reverse_sequence"]


@dataclass
class Plan:
    """``index``: packed row -> row of ``x.view(T * B, ...)`` (``None``: identity, time-major order).
    ``perm``: sorted position -> batch index (``None``: unsorted); ``inverse`` undoes it."""

    steps: int
    batch: int
    batch_sizes: Tensor  # (steps_run,) int64 on CPU
    index: Tensor | None
    perm: Tensor | None
    inverse: Tensor | None
    lengths: Tensor | None  # the lengths when they differ from `steps` somewhere

    @property
    def total(self) -> int:
        return int(self.index.numel()) if self.index is not None else self.steps * self.batch

    def pack(self, x: Tensor) -> Tensor:
        """``(T, B, D)`` -> packed ``(total, D)``."""
        flat = x.reshape(self.steps * self.batch, x.shape[-1])  # (T * B, D)
        return flat if self.index is None else flat.index_select(0, self.index)

    def unpack(self, y: Tensor) -> Tensor:
        """Packed ``(total, O)`` -> ``(T, B, O)`` with zeros on padding."""
        if self.index is None:
            return y.view(self.steps, self.batch, y.shape[-1])
        out = y.new_zeros(self.steps * self.batch, y.shape[-1])
        return out.index_copy(0, self.index, y).view(self.steps, self.batch, y.shape[-1])

    def sort(self, s: Tensor) -> Tensor:
        """A per-sequence ``(B, ...)`` tensor in the kernels' (length-sorted) order."""
        return s if self.perm is None else s.index_select(0, self.perm)

    def unsort(self, s: Tensor) -> Tensor:
        return s if self.inverse is None else s.index_select(0, self.inverse)


_FULL: dict[tuple[int, int], Tensor] = {}


def full_batch_sizes(steps: int, batch: int) -> Tensor:
    """``batch_sizes`` of a batch without lengths, shared between calls (read-only: kernels never write it)."""
    bs = _FULL.get((steps, batch))
    if bs is None:
        if len(_FULL) > 256:
            _FULL.clear()
        bs = _FULL[(steps, batch)] = torch.full((steps,), batch, dtype=torch.int64, device="cpu")
    return bs


def full_to_none(lengths: Tensor | None, steps: int, device_type: str) -> Tensor | None:
    """The one place where lengths that are all ``steps`` become ``None`` (plain time-major rows).

    ``lengths``: ``None`` or ``(B,)`` int64, already checked (``[0, steps]``). Lengths on a device without values
    (meta tensors, which only follow shapes) and empty batches are kept as they are.
    """
    if lengths is None or device_type not in ("cpu", "cuda") or not len(lengths):
        return lengths
    return None if bool((lengths == steps).all()) else lengths


def make_plan(steps: int, batch: int, lengths: Tensor | None, reverse: bool, device: torch.device) -> Plan:
    """Plan a ``(steps, batch)`` unroll; ``lengths`` ``(batch,)`` int64 in ``[0, steps]`` or ``None``."""
    return plan_for(steps, batch, full_to_none(lengths, steps, device.type), reverse, device)


def plan_for(steps: int, batch: int, lengths: Tensor | None, reverse: bool, device: torch.device) -> Plan:
    """``make_plan`` for lengths already through ``full_to_none``."""
    if lengths is None:
        bs = full_batch_sizes(steps, batch)
        index = None
        if reverse and steps > 1:
            t = torch.arange(steps - 1, -1, -1, device=device).unsqueeze(1)  # (T, 1)
            index = (t * batch + torch.arange(batch, device=device)).reshape(-1)
        return Plan(steps, batch, bs, index, None, None, None)
    lens = lengths.to(device=device, dtype=torch.int64)
    sorted_lens, perm = torch.sort(lens, descending=True, stable=True)
    run = int(sorted_lens[0]) if batch else 0
    t = torch.arange(run, device=device).unsqueeze(1)  # (run, 1)
    active = t < sorted_lens  # (run, B)
    time = sorted_lens - 1 - t if reverse else t.expand(run, batch)
    index = (time * batch + perm)[active]  # row-major: step by step, longest first
    bs = active.sum(1).cpu()
    return Plan(steps, batch, bs, index, perm, torch.argsort(perm), lens)


def reverse_sequence(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse a time-major ``(time, batch, ...)`` tensor along time, each sequence within its length.

    Steps past a sequence's length stay where they are (TF's ``tf.reverse_sequence``).

    Example::

        >>> import torch, rnnkit
        >>> x = torch.arange(3.0).view(3, 1, 1).expand(3, 2, 1)    # (T, B, 1): steps 0, 1, 2
        >>> rnnkit.reverse_sequence(x, torch.tensor([3, 2]))[:, :, 0].T.tolist()
        [[2.0, 1.0, 0.0], [1.0, 0.0, 2.0]]
    """
    if lengths is None:
        return x.flip(0)
    steps = torch.arange(x.shape[0], device=x.device).unsqueeze(1)  # (T, 1)
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)  # (T, B)
    index = index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(0, index)
