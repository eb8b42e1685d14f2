"""torch.distributed set-up for ``torchrun -m rnnkit train``: one process per rank, DDP, gloo or nccl.

Without ``torchrun`` (``WORLD_SIZE`` unset or 1) everything here is a no-op and the run is one process.

Teardown: :meth:`Dist.close` must really destroy the process group, so that its backend's threads (gloo's
``pt_gloo_runloop`` and ``gloo_tcp_loop``) are joined while the interpreter is fully alive. A process group
that outlives ``destroy_process_group`` is destroyed during interpreter finalization instead, and that
aborts the process in about one exit of ten (``terminate called without an active exception``, SIGABRT,
torchrun exit 1). The import of ``torch.distributed.nn`` below is what lets it be freed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

# DistributedDataParallel imports torch.distributed.nn, whose functions take ``group=group.WORLD`` as a default
# argument. Imported after init_process_group, ten function defaults hold the world group for the life of the
# interpreter, so destroy_process_group cannot free it and its threads die in finalization (see above).
# Imported here, before any process group exists, those defaults are None.
import torch.distributed.nn  # noqa: F401  # isort: skip

from .errors import CLIError

__all__ = ["Dist", "setup", "pick_device", "cpu_threads"]


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when CUDA is available, else ``cpu``; otherwise the named device."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CLIError(f"--device: not a device name: {name!r} (try cpu, cuda, cuda:1 or auto)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"--device {name}: CUDA is not available on this machine")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    return device


@contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """Run with ``torch.set_num_threads(n)`` (``None``: unchanged), restoring the previous count afterwards."""
    if n is not None and n < 1:
        raise CLIError(f"--threads must be >= 1, got {n}")
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class Dist:
    """This process's place: ``rank`` of ``world_size`` (1 without torchrun) and its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rows(self, batch: int) -> slice:
        """This rank's rows of a global batch of ``batch`` rows."""
        per = batch // self.world_size
        return slice(self.rank * per, (self.rank + 1) * per)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a scalar over ranks (equal shards, so the mean of the global batch)."""
        if not self.enabled:
            return value
        value = value.detach().clone()
        dist.all_reduce(value)
        return value / self.world_size

    def gather_rows(self, tensor: torch.Tensor, dim: int) -> torch.Tensor:
        """Every rank's ``tensor`` concatenated along ``dim`` in rank order (the global batch)."""
        if not self.enabled:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim)

    def gather_objects(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def setup(device_name: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if world <= 1:
        return Dist(0, 1, device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend)
    return Dist(dist.get_rank(), dist.get_world_size(), device)
