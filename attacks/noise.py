"""Uniform random noise in the eps-ball: the baseline every gradient attack must beat (Carlini et al. 2019).

Gradient-free and model-independent: each image's noise is its random start drawn from the
evaluation seed (on a stream of its own, not PGD's starts). When an attack does no better than
this, `robustgrid show` flags it (no_better_than_random_noise).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..registry import Param
from .base import register_attack

NOISE_SEED_SALT = 0x0_5EED_0015E    # the noise's draws are not PGD's starts


@register_attack(params={"random_start": Param(True, bool, lambda v: v is True, "true (the noise is the random start)")})
def noise(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, random_start: bool = True,
          starts: torch.Tensor | None = None) -> torch.Tensor:
    """images + uniform noise in [-eps, eps] (starts: (batch, 1, C, H, W) from the caller), clipped to [0,1]."""
    if eps == 0:
        return images.clone().detach()
    if starts is None:
        starts = torch.empty_like(images).uniform_(-eps, eps).unsqueeze(1)
    return torch.clamp(images + starts[:, 0], 0, 1).detach()
