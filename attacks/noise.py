"""Random noise in the eps-ball (uniform in the L-inf cube, on the L2 sphere): the baseline every gradient attack must beat (Carlini et al. 2019).

Gradient-free and model-independent: each image's noise is its random start drawn from the
evaluation seed (on a stream of its own, not PGD's starts). When an attack does no better than
this, `robustgrid show` flags it (no_better_than_random_noise).
"""
from __future__ import annotations

import torch
from torch import nn

from ..registry import Param
from .base import NORMS, register_attack
from .pgd import l2_start, start_kind

NOISE_SEED_SALT = 0x0_5EED_0015E    # the noise's draws are not PGD's starts


@register_attack(params={
    "random_start": Param(True, bool, lambda v: v is True, "true (the noise is the random start)"),
    "norm": Param("linf", str, lambda n: n in NORMS, " or ".join(NORMS)),
}, kind="model-free", starts=lambda p: (1, start_kind(p["norm"])), seed_salt=NOISE_SEED_SALT)
def noise(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, random_start: bool = True,
          norm: str = "linf", starts: torch.Tensor | None = None) -> torch.Tensor:
    """images + noise (starts: (batch, 1, C, H, W) from the caller), clipped to [0,1]: L-inf uniform in
    [-eps, eps]; L2 a Gaussian direction on the sphere of radius eps."""
    if eps == 0:
        return images.clone().detach()
    if starts is None:
        starts = (torch.empty_like(images).uniform_(-eps, eps) if norm == "linf"
                  else torch.randn_like(images)).unsqueeze(1)
    delta = starts[:, 0] if norm == "linf" else l2_start(starts[:, 0], eps)
    return torch.clamp(images + delta, 0, 1).detach()
