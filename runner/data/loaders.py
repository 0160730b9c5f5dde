"""The reference training input path: torchvision transforms in a DataLoader (what the notebooks used).

The default `tensor` path (runner/train.py TensorBatches) keeps the split on the device and
crops/flips there; this one exists to compare against it (same augmentation semantics:
RandomCrop(32, padding=4) with zero fill + RandomHorizontalFlip(0.5)).
"""
from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.transforms import v2

from ...pixels import from_levels


class UInt8Images(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor, augment: bool):
        self.x, self.y = x, y
        self.transform = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()]) if augment else None

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        img = self.x[i]
        if self.transform is not None:
            img = self.transform(img)
        return img, self.y[i]


class DataLoaderBatches:
    def __init__(self, x, y, batch_size, dist_info, device, seed, augment, workers: int = 0):
        self.device = device
        self.sampler = DistributedSampler(range(len(x)), num_replicas=dist_info.world_size, rank=dist_info.rank,
                                          shuffle=True, seed=seed)
        self.local_batch = max(1, batch_size // dist_info.world_size)
        self.loader = DataLoader(UInt8Images(x, y, augment), batch_size=self.local_batch, sampler=self.sampler,
                                 num_workers=workers, pin_memory=device.type == "cuda",
                                 persistent_workers=workers > 0)

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.local_batch)

    def epoch(self, epoch: int):
        self.sampler.set_epoch(epoch)
        for xb, yb in self.loader:
            yield from_levels(xb.to(self.device, non_blocking=True)), yb.to(self.device, non_blocking=True)
