"""The Linnaeus 5 notebook's plain CNN: conv, pool, fully connected."""
from __future__ import annotations

from typing import Sequence

import torch.nn as nn

from .layers import Normalize
from .registry import register_model


@register_model
def simple_cnn(num_classes: int = 10, mean: Sequence[float] = (0.5, 0.5, 0.5),
               std: Sequence[float] = (0.5, 0.5, 0.5)) -> nn.Module:
    return nn.Sequential(
        Normalize(mean, std),
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 8 * 8, 128), nn.ReLU(inplace=True),
        nn.Linear(128, num_classes),
    )
