"""PGD (Madry et al. 2018): projected gradient descent with random starts, as torchattacks.PGD (L-inf) and PGDL2.

Random starts are drawn per image, for the whole image set at once (`random_starts`), so an
image starts at the same point whatever batch it lands in; the caller slices them per batch.

PGD returns candidates, not one image: per restart its final iterate and its best iterate (the
one that best fooled the attacker's model, tracked as APGD does). The evaluation judges every candidate on the scored system (the real model
of the mode behind the real defense): an image is robust only if none of them fools it.
"""
from __future__ import annotations

import torch
from torch import nn

from ..registry import Param
from .base import NORMS, input_gradient, random_starts, register_attack


def default_alpha(eps: float, norm: str = "linf") -> float:
    return max(eps / 4, 1 / 255) if norm == "linf" else eps / 4


def start_kind(norm: str) -> str:
    """L-inf: uniform in the cube (torchattacks.PGD); L2: a Gaussian draw put on the sphere (APGD's L2 start)."""
    return "uniform" if norm == "linf" else "randn"


def l2_start(draw: torch.Tensor, eps: float) -> torch.Tensor:
    """A start perturbation on the L2 sphere of radius eps from a Gaussian draw (N, C, H, W)."""
    return eps * draw / (draw.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-12)


def l2_direction(grad: torch.Tensor) -> torch.Tensor:
    """torchattacks.PGDL2's step direction: the gradient over its L2 norm."""
    return grad / (grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-10)


def project_l2(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """delta scaled into the L2 ball of radius eps, as torchattacks.PGDL2 does it."""
    factor = torch.clamp(eps / delta.flatten(1).norm(dim=1), max=1.0)
    return delta * factor.view(-1, 1, 1, 1)


def pgd_steps(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, alpha: float,
              steps: int, start: torch.Tensor | None, norm: str = "linf", track_best: bool = True
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """torchattacks.PGD's loop (PGDL2's for L2), op for op: start, then `steps` steps, each projected on the eps-ball.
    Returns (final iterate, best iterate): the best by `strength` on the attacker's model, read from the
    logits each step computes anyway (one more forward pass scores the final iterate). track_best=False
    (adversarial training, which trains on the final iterate): (final, final), without that pass."""
    adv = images.clone().detach()
    if start is not None:
        start = start if norm == "linf" else l2_start(start, eps)
        adv = torch.clamp(adv + start, min=0, max=1).detach()
    best, best_key = adv, None
    for _ in range(steps):
        grad, logits = input_gradient(model, adv, labels, return_logits=True)
        best, best_key = _keep_stronger(best, best_key, adv, strength(logits, labels))
        if norm == "linf":
            adv = adv.detach() + alpha * grad.sign()
            delta = torch.clamp(adv - images, min=-eps, max=eps)
        else:
            delta = project_l2(adv.detach() + alpha * l2_direction(grad) - images, eps)
        adv = torch.clamp(images + delta, min=0, max=1).detach()
    if not track_best:
        return adv, adv
    best, _ = _keep_stronger(best, best_key, adv, _strength_of(model, adv, labels))
    return adv, best


@register_attack(params={
    "steps": Param(10, int, lambda s: s >= 1, ">= 1"),
    "alpha": Param(None, float, lambda a: a is None or a > 0, "> 0, or null for max(eps/4, 1/255)"),
    "random_start": Param(True, bool),
    "restarts": Param(1, int, lambda r: r >= 1, ">= 1"),
    "norm": Param("linf", str, lambda n: n in NORMS, " or ".join(NORMS)),
}, starts=lambda p: (p["restarts"], start_kind(p["norm"])) if p["random_start"] else None, step_size="fixed")
def pgd(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, steps: int = 10,
        alpha: float | None = None, random_start: bool = True, restarts: int = 1, norm: str = "linf",
        starts: torch.Tensor | None = None) -> torch.Tensor:
    """PGD: `steps` signed gradient steps of size alpha inside the eps-ball, from `restarts` random starts.
    Returns candidates (N, 2 * restarts, C, H, W): every restart's final and best iterates (no pick among
    them: the scored system judges them all). starts: the start perturbations
    (batch, restarts, C, H, W), random_starts(..., eps=eps) sliced per batch by the caller; without them
    they are drawn here (seed 0)."""
    if eps == 0:
        return images.clone().detach().unsqueeze(1)
    alpha = default_alpha(eps, norm) if alpha is None else alpha
    if random_start and starts is None:
        starts = random_starts(len(images), tuple(images.shape[1:]), restarts, seed=0, eps=eps,
                               kind=start_kind(norm)).to(images.device)
    found = []
    for r in range(restarts):
        found += pgd_steps(model, images, labels, eps, alpha, steps, starts[:, r] if random_start else None, norm)
    return torch.stack(found, dim=1)


def strength(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per image: a fooled image beats any unfooled one; among equals, the higher loss wins."""
    logits = logits.float()
    loss = nn.functional.cross_entropy(logits, labels, reduction="none")
    fooled = (logits.argmax(1) != labels).float()
    return fooled * 1e6 + loss.clamp(max=1e5)


@torch.no_grad()
def _strength_of(model: nn.Module, adv: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """strength on the attacker's model; through a randomized defense, of its logits' mean over the EOT draws."""
    draws = getattr(model, "eot_draws", None)
    if not draws:
        return strength(model(adv), labels)
    logits = []
    for d in draws:
        model.draw = d
        logits.append(model(adv).float())
    return strength(torch.stack(logits).mean(0), labels)


def _keep_stronger(best: torch.Tensor | None, best_key: torch.Tensor | None, adv: torch.Tensor,
                   key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if best is None or best_key is None:
        return adv, key
    better = key > best_key
    return torch.where(better.view(-1, *[1] * (adv.dim() - 1)), adv, best), torch.maximum(key, best_key)
