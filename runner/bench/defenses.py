"""(b) Each defense, reference (per image) vs batched, on the same images: images per second, the largest
difference, and what one adaptive step pays for it (the real forward + the backward through its declared gradient)."""
from __future__ import annotations

import torch

from ...defenses import apply_defense, defend_differentiably, defense_names
from ..device import clock
from .common import (
    best_seconds,
)


def bench_defenses(images: torch.Tensor, device: torch.device) -> list[dict]:
    rows = []
    x = images.to(device)
    for name in defense_names():
        t_ref, ref = best_seconds(lambda name=name: apply_defense(name, images, backend="reference"))

        t_fast, (fast, _) = best_seconds(lambda name=name: (apply_defense(name, x, backend="batched"), clock(device)))
        t_adaptive, _ = best_seconds(lambda name=name: _through_defense(name, x))
        rows.append({"defense": name, "images": len(images), "reference_img_per_s": len(images) / t_ref,
                     "batched_img_per_s": len(images) / t_fast, "speedup": t_ref / t_fast,
                     "max_abs_diff": (fast.cpu().double() - ref.double()).abs().max().item(),
                     "adaptive_img_per_s": len(images) / t_adaptive})
    return rows


def _through_defense(name: str, images: torch.Tensor) -> torch.Tensor:
    """What an adaptive attacker pays per step for the defense: the real defense forward (batched)
    and the backward through its declared gradient (BPDA stand-in, or exact)."""
    x = images.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(defend_differentiably(name, x).sum(), x)
    clock(grad.device)
    return grad
