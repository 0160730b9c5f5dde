"""A learnable synthetic set made on the spot (tests, benchmarks, miniature sweeps): no file, no download."""
from __future__ import annotations

import torch

from .catalog import Dataset, register


def make_synthetic(n: int, num_classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A learnable 32x32 RGB set: each class is a colour and a stripe orientation, plus noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    palette = torch.rand(num_classes, 3, 1, 1, generator=torch.Generator().manual_seed(1234)) * 0.6 + 0.2
    angle = torch.arange(num_classes, dtype=torch.float32) * (torch.pi / num_classes)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    phase = torch.rand(n, generator=g) * 2 * torch.pi
    a = angle[labels].view(n, 1, 1)
    stripes = torch.sin((xx * torch.cos(a) + yy * torch.sin(a)) * 0.8 + phase.view(n, 1, 1))
    img = palette[labels] + 0.25 * stripes.unsqueeze(1) + 0.1 * torch.randn(n, 3, 32, 32, generator=g)
    return torch.round(img.clamp(0, 1) * 255).to(torch.uint8), labels


def load_synthetic(n_train: int, n_test: int, num_classes: int = 10):
    train_x, train_y = make_synthetic(n_train, num_classes, seed=0)
    test_x, test_y = make_synthetic(n_test, num_classes, seed=1)
    return train_x, train_y, test_x, test_y, [f"class_{i}" for i in range(num_classes)]


SYNTHETIC = register(Dataset(
    "synthetic", load=lambda data, progress=None: load_synthetic(data.synthetic_train, data.synthetic_test),
    load_test=lambda data: load_synthetic(0, data.synthetic_test)[2:], n_test=lambda data: data.synthetic_test,
    source="made on the spot (data.synthetic_train / synthetic_test images)"))
