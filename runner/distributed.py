"""DDP plumbing in the nanoGPT way: join the group torchrun (or Ray Train) describes, or run alone."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .device import pick_device


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False   # we called init_process_group, so we tear it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_kind: str) -> DistInfo:
    """Join the process group torchrun (or Ray Train) describes; a no-op for one process."""
    if dist.is_available() and dist.is_initialized():  # Ray Train sets it up for us
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world <= 1:
        return DistInfo()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device_kind == "cuda":
        # Each rank owns its GPU before NCCL starts: collectives must not guess the device.
        device = pick_device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl", device_id=device)
    else:
        dist.init_process_group(backend="gloo")
    return DistInfo(dist.get_rank(), world, local_rank, owns_group=True)


def from_rank0(values: list[float], di: DistInfo, device: torch.device) -> list[float]:
    """Rank 0's values on every rank: one decision (lr step, early stop, best epoch) for all.

    Ranks' validation passes can differ (BatchNorm statistics are per rank without SyncBatchNorm);
    ranks that decided alone would diverge, or one would stop and leave the others in a collective.
    """
    if di.world_size <= 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return t.tolist()
