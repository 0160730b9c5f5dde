"""Batch-by-batch helpers shared by the engine and the reference pipeline: predict, attack, defend."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from ...attacks import get_attack, to_8bit_grid
from ...defenses import apply_defense


def to_model(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    # channels_last: the CPU convolutions and pools run ~2.5x faster on 32x32 images, CUDA's too
    return x.to(device).contiguous(memory_format=torch.channels_last)


def predict(model: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int) -> torch.Tensor:
    """Predicted classes, on the CPU (the copy back waits for the device: a clock after it is honest)."""
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            out.append(model(to_model(images[i:i + batch_size], device)).argmax(1).cpu())
    return torch.cat(out)


def over_batches(fn: Callable, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 device: torch.device, batch_size: int, extra: torch.Tensor | None = None) -> torch.Tensor:
    """fn(model, images, labels[, extra]) batch by batch on `device`; results gathered where the images
    live. `extra` (per image, e.g. random starts) is sliced with the images. Attacks and gradients
    share these batches, so a step from a gradient is bit-identical."""
    out = []
    for i in range(0, len(images), batch_size):
        xb, yb = to_model(images[i:i + batch_size], device), labels[i:i + batch_size].to(device)
        args = (model, xb, yb) if extra is None else (model, xb, yb, extra[i:i + batch_size].to(device))
        out.append(fn(*args).to(images.device))
    return torch.cat(out).contiguous()


def attack_images(model: nn.Module, attack: str, images: torch.Tensor, labels: torch.Tensor, eps: float,
                  device: torch.device, batch_size: int, params: dict | None = None,
                  starts: torch.Tensor | None = None) -> torch.Tensor:
    """Adversarial images on the 8-bit grid (what an attacker delivers as a file)."""
    fn, params = get_attack(attack), params or {}
    if starts is None:
        return over_batches(lambda m, x, y: to_8bit_grid(fn(m, x, y, eps, **params)), model, images, labels,
                            device, batch_size)
    return over_batches(lambda m, x, y, s: to_8bit_grid(fn(m, x, y, eps, starts=s, **params)), model, images,
                        labels, device, batch_size, starts)


def defend_images(name: str, params: dict, images: torch.Tensor, backend: str, batch_size: int) -> torch.Tensor:
    return torch.cat([apply_defense(name, images[i:i + batch_size], params, backend)
                      for i in range(0, len(images), batch_size)])
