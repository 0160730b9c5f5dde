"""The field's CIFAR architectures: PreActResNet-18 (Wong et al. 2020, RobustBench's entries), ResNet-18 with
the CIFAR stem, and Wide ResNets (Zagoruyko & Komodakis 2016; Madry's and TRADES' WRN-34-10, WRN-28-10).

Each normalizes inside (its first layer), like every model here: attacks and defenses speak [0,1].
Layer for layer as locuslab/fast_adversarial's `PreActResNet18` and RobustBench's `WideResNet`.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import CIFAR10_MEAN, CIFAR10_STD, Normalize
from .registry import register_model


class PreActBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in), nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(c_out), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False) if stride != 1 or c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(x) if self.shortcut is not None else x     # from x, as fast_adversarial's
        out = self.conv2(F.relu(self.bn2(self.conv1(out))))
        return out + shortcut


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out)
        self.conv2, self.bn2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out)
        self.shortcut = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
                         if stride != 1 or c_in != c_out else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def _stages(block, widths: Sequence[int], blocks: Sequence[int], c_in: int) -> nn.Sequential:
    layers = []
    for i, (w, n) in enumerate(zip(widths, blocks)):
        for j in range(n):
            layers.append(block(c_in, w, 2 if (j == 0 and i > 0) else 1))
            c_in = w
    return nn.Sequential(*layers)


class PreActResNet(nn.Module):
    def __init__(self, blocks: Sequence[int], num_classes: int, mean, std):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.layers = _stages(PreActBlock, (64, 128, 256, 512), blocks, 64)
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.layers(self.conv1(self.normalize(x)))))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class ResNet(nn.Module):
    def __init__(self, blocks: Sequence[int], num_classes: int, mean, std):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        self.layers = _stages(BasicBlock, (64, 128, 256, 512), blocks, 64)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.stem(self.normalize(x)))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class WideBlock(nn.Module):
    """RobustBench's WRN block: BN-ReLU before each conv; the shortcut (a 1x1 conv) from the activated input."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in), nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(c_out), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        return out + (self.shortcut(act) if self.shortcut is not None else x)


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen_factor: int, num_classes: int, mean, std):
        super().__init__()
        n = (depth - 4) // 6
        widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.layers = _stages(WideBlock, widths, (n, n, n), 16)
        self.bn = nn.BatchNorm2d(widths[-1])
        self.linear = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.layers(self.conv1(self.normalize(x)))))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


CIFAR = (CIFAR10_MEAN, CIFAR10_STD)


@register_model
def preact_resnet18(num_classes: int = 10, mean: Sequence[float] = CIFAR[0], std: Sequence[float] = CIFAR[1]) -> nn.Module:
    """PreActResNet-18 (He et al. 2016; Wong et al. 2020's fast adversarial training), 11.2 M parameters."""
    return PreActResNet((2, 2, 2, 2), num_classes, mean, std)


@register_model
def resnet18(num_classes: int = 10, mean: Sequence[float] = CIFAR[0], std: Sequence[float] = CIFAR[1]) -> nn.Module:
    """ResNet-18 with the CIFAR stem (one 3x3 conv, no max-pool), 11.2 M parameters."""
    return ResNet((2, 2, 2, 2), num_classes, mean, std)


@register_model
def wide_resnet(num_classes: int = 10, mean: Sequence[float] = CIFAR[0], std: Sequence[float] = CIFAR[1],
                depth: int = 28, widen_factor: int = 10) -> nn.Module:
    """Wide ResNet-depth-widen_factor (28-10: 36.5 M parameters; 34-10: 46.2 M; 16-4: 2.7 M, CPU-sized)."""
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(f"wide_resnet: depth must be 6n + 4 >= 10 (16, 22, 28, 34...), got {depth}")
    if widen_factor < 1:
        raise ValueError(f"wide_resnet: widen_factor must be >= 1, got {widen_factor}")
    return WideResNet(depth, widen_factor, num_classes, mean, std)
