"""torchrun helpers for training (DDP) and ``prepare``: join the job from the environment, reductions, gathers.

A process group is created only when ``WORLD_SIZE > 1`` (torchrun sets it, with RANK, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT): backend nccl on CUDA, gloo otherwise (or as asked).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "all_finite", "barrier", "gather_objects", "init_distributed", "shutdown_distributed"]


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    initialised_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device | None = None, backend: str | None = None,
                     timeout: timedelta | None = None) -> DistInfo:
    """Join the torchrun job described by the environment (no-op for a single process).

    ``backend`` defaults to nccl for a CUDA ``device``, else gloo; ``timeout`` bounds every collective wait
    (torch's default when None). Raises ValueError for RANK / WORLD_SIZE values that are not a valid place.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank}, WORLD_SIZE={world} is not a place in the job")
    if world == 1:
        return DistInfo()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    created = False
    if not dist.is_initialized():
        if backend is None:
            backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
        extra = {} if timeout is None else {"timeout": timeout}
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world, **extra)
        created = True
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world, initialised_here=created)


def shutdown_distributed(info: DistInfo) -> None:
    if info.initialised_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def _reduce_flag(flag: bool, info: DistInfo, device: torch.device, op: dist.ReduceOp) -> bool:
    """``flag`` combined over every rank: MIN = all of them, MAX = any of them."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=op)
    return bool(t.item() > 0.5)


def all_finite(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True only if ``flag`` is True on every rank (so all ranks skip a bad step together)."""
    return _reduce_flag(flag, info, device, dist.ReduceOp.MIN)


def any_flag(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True if ``flag`` is True on any rank (e.g. a stop request)."""
    return _reduce_flag(flag, info, device, dist.ReduceOp.MAX)


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """``obj`` from every rank (a one-element list without DDP)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out
