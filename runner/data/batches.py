"""Batches: uint8 splits become [0,1] floats on the device, crop/flip done there (airbench-style).

`TensorBatches` is the default training input path: the whole split lives on the device as
uint8, each epoch's crops and flips are drawn for every sample at once. The torchvision
DataLoader path (loaders.py) exists to compare against it.
"""
from __future__ import annotations

import math

import torch
from torch.utils.data import DistributedSampler

from ...pixels import from_levels
from ..distributed import DistInfo


def to_float(x_uint8: torch.Tensor) -> torch.Tensor:
    """[0,1] images in the default float dtype (float32 unless a caller chose float64, as the DDP test does)."""
    return from_levels(x_uint8, torch.get_default_dtype())


def augment_params(n: int, seed: int, epoch: int, pad: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Crop offsets and flips for every sample of an epoch, indexed by sample.

    Drawn for the whole epoch from (seed, epoch), so a sample gets the same crop whichever
    rank or batch it lands in: DDP and single-process runs see identical inputs.
    """
    g = torch.Generator().manual_seed(seed * 100003 + epoch)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    flip = torch.rand(n, generator=g) < 0.5
    return dx, dy, flip


def crop_flip(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, flip: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding + horizontal flip, batched, on x's device (any dtype)."""
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dev = x.device
    rows = dy.to(dev).view(n, 1) + torch.arange(h, device=dev).view(1, h)          # (n, h)
    cols = dx.to(dev).view(n, 1) + torch.arange(w, device=dev).view(1, w)          # (n, w)
    cols = torch.where(flip.to(dev).view(n, 1), cols.flip(1), cols)
    idx_n = torch.arange(n, device=dev).view(n, 1, 1)
    out = padded.permute(0, 2, 3, 1)[idx_n, rows.view(n, h, 1), cols.view(n, 1, w)]  # (n, h, w, c)
    return out.permute(0, 3, 1, 2).contiguous()


class TensorBatches:
    """airbench-style loader: the whole split lives on the device as uint8; crop/flip there."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, dist_info: DistInfo,
                 device: torch.device, seed: int, augment: bool):
        self.x, self.y = x.to(device), y.to(device)
        self.batch_size, self.device, self.seed, self.augment = batch_size, device, seed, augment
        self.index: torch.Tensor | None = None
        # Each rank takes 1/world of the global batch, so gradients average to the global one.
        self.local_batch = max(1, batch_size // dist_info.world_size)
        self.sampler = DistributedSampler(range(len(x)), num_replicas=dist_info.world_size,
                                          rank=dist_info.rank, shuffle=True, seed=seed)

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.local_batch)

    def epoch(self, epoch: int):
        self.sampler.set_epoch(epoch)
        order = torch.tensor(list(self.sampler))
        params = augment_params(len(self.x), self.seed, epoch) if self.augment else None
        for i in range(0, len(order), self.local_batch):
            idx = order[i:i + self.local_batch]
            self.index = idx          # the batch's samples (adversarial training draws its starts per sample)
            xb = self.x[idx.to(self.device)]
            if params is not None:
                xb = crop_flip(xb, *(p[idx] for p in params))
            yield to_float(xb), self.y[idx.to(self.device)]
