"""The CIFAR-10 notebook's ImprovedCNN, layer for layer.

3 blocks of Conv-BN-ReLU-Conv-BN-ReLU-MaxPool (64/128/256 channels), then
Flatten-Dropout-Linear(4096,512)-ReLU-Dropout-Linear(512,classes).
"""
from __future__ import annotations

from typing import Sequence

import torch.nn as nn

from .layers import CIFAR10_MEAN, CIFAR10_STD, Normalize
from .registry import register_model


def _block(c_in: int, c_out: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    ]


@register_model
def improved_cnn(num_classes: int = 10, mean: Sequence[float] = CIFAR10_MEAN,
                 std: Sequence[float] = CIFAR10_STD, dropout: float = 0.5) -> nn.Module:
    return nn.Sequential(
        Normalize(mean, std),
        *_block(3, 64), *_block(64, 128), *_block(128, 256),
        nn.Flatten(),
        nn.Dropout(dropout), nn.Linear(256 * 4 * 4, 512), nn.ReLU(inplace=True),
        nn.Dropout(dropout), nn.Linear(512, num_classes),
    )
