"""PGD (Madry et al. 2018): L-infinity projected gradient descent with random starts, as torchattacks.PGD.

Random starts are drawn per image, for the whole image set at once (`random_starts`), so an
image starts at the same point whatever batch it lands in; the caller slices them per batch.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..registry import Param
from .base import input_gradient, register_attack


def default_alpha(eps: float) -> float:
    return max(eps / 4, 1 / 255)


def random_starts(n: int, shape: tuple[int, ...], restarts: int, seed: int) -> torch.Tensor:
    """Unit starts u in [-1, 1), (n, restarts, *shape), from (seed) alone; a start at eps is eps * u."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, restarts, *shape), generator=g) * 2 - 1


def pgd_steps(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, alpha: float,
              steps: int, start: torch.Tensor | None) -> torch.Tensor:
    """torchattacks.PGD's loop, op for op: start, then `steps` signed steps, each projected on the eps-ball."""
    adv = images.clone().detach()
    if start is not None:
        adv = torch.clamp(adv + start, min=0, max=1).detach()
    for _ in range(steps):
        grad = input_gradient(model, adv, labels)
        adv = adv.detach() + alpha * grad.sign()
        delta = torch.clamp(adv - images, min=-eps, max=eps)
        adv = torch.clamp(images + delta, min=0, max=1).detach()
    return adv


@register_attack(params={
    "steps": Param(10, int, lambda s: s >= 1, ">= 1"),
    "alpha": Param(None, float, lambda a: a is None or a > 0, "> 0, or null for max(eps/4, 1/255)"),
    "random_start": Param(True, bool),
    "restarts": Param(1, int, lambda r: r >= 1, ">= 1"),
})
def pgd(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, steps: int = 10,
        alpha: float | None = None, random_start: bool = True, restarts: int = 1,
        starts: torch.Tensor | None = None) -> torch.Tensor:
    """PGD: `steps` signed gradient steps of size alpha inside the eps-ball; per image the worst case
    over `restarts` random starts is kept. starts: the start perturbations (batch, restarts, C, H, W),
    eps * random_starts(...) sliced per batch by the caller; without them they are drawn here (seed 0)."""
    if eps == 0:
        return images.clone().detach()
    alpha = default_alpha(eps) if alpha is None else alpha
    if random_start and starts is None:
        starts = eps * random_starts(len(images), tuple(images.shape[1:]), restarts, seed=0).to(images.device)
    best, best_key = None, None
    for r in range(restarts):
        adv = pgd_steps(model, images, labels, eps, alpha, steps, starts[:, r] if random_start else None)
        if restarts == 1:
            return adv
        key = _strength(model, adv, labels)
        if best is None:
            best, best_key = adv, key
            continue
        better = key > best_key
        best = torch.where(better.view(-1, 1, 1, 1), adv, best)
        best_key = torch.maximum(key, best_key)
    return best


@torch.no_grad()
def _strength(model: nn.Module, adv: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per image: a fooled image beats any unfooled one; among equals, the higher loss wins."""
    logits = model(adv).float()
    loss = nn.functional.cross_entropy(logits, labels, reduction="none")
    fooled = (logits.argmax(1) != labels).float()
    return fooled * 1e6 + loss.clamp(max=1e5)
