"""Layers shared by the architectures."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

# CIFAR-10's channel statistics (its training images), written once: the defaults of the architectures made for
# it, and the CIFAR-10 data set's normalisation (runner/data/cifar10.py)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class Normalize(nn.Module):
    """First layer of every model: images come in as [0,1], mean/std live here.

    mean/std are buffers so they travel in the state_dict and nothing outside the
    model needs to know them (attacks and defenses speak [0,1]).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
