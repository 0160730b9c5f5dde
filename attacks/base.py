"""Shared base of the attacks: `attack(model, images, labels, eps, **params) -> images`, all in [0,1].

An attack declares its parameters (defaults, domains) in the registry; the sweep's
`attacks: [fgsm, {pgd: {steps: 20}}]` is checked against them and the full parameters of a
cell are its `attack_params` column.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, Protocol

import torch
import torch.nn as nn

from ..registry import Param, Registry


class Attack(Protocol):
    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 eps: float, **params) -> torch.Tensor: ...


ATTACKS = Registry("attack")


def register_attack(*, step: Callable | None = None, params: dict[str, Param] | None = None):
    """Register an attack under its function's name. `step(images, grad, eps)` marks a single-step
    attack: one input gradient then serves every eps (the engine makes it once)."""
    return ATTACKS.register(params=params, step=step)


def attack_names() -> list[str]:
    return ATTACKS.names()


def get_attack(name: str) -> Attack:
    if name.startswith(ZOO_PREFIX):       # the optional torchattacks backend
        from .zoo import zoo_attack
        return zoo_attack(name.removeprefix(ZOO_PREFIX))
    return ATTACKS.get(name).obj


def attack_params_json(name: str, params: dict | None = None) -> str:
    """Canonical JSON of an attack's full parameters (defaults filled in): part of a cell's key."""
    import json
    full = dict(params or {}) if name.startswith(ZOO_PREFIX) else ATTACKS.resolve(name, params)
    return json.dumps(full, sort_keys=True)


ZOO_PREFIX = "torchattacks."


def gradient_step(name: str) -> Callable | None:
    """For single-step attacks, `step(images, grad, eps)`: one input gradient serves every eps."""
    return None if name.startswith(ZOO_PREFIX) else ATTACKS.get(name).extras.get("step")


def input_gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                   return_logits: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the mean cross-entropy w.r.t. the input, model in eval mode, each image's
    up to its own positive power of two (its sign, all FGSM/PGD use, is the unscaled one's).

    Through a half-precision model the gradient of a confident image underflows to zero and
    sign(0) leaves its pixels unperturbed. So each image's loss is scaled by a power of two
    that brings its logit gradient near 1 before it enters the model's backward; a power of
    two is exact in fp32, so on an fp32 model the signs equal torchattacks' bit for bit.
    Images whose scaled gradient overflows are retried with a smaller scale.

    A model with `eot_draws` (a randomized defense in front of it) gives the mean gradient over
    those draws of its randomness (EOT), every draw under the same per-image scale.
    return_logits: also the logits of this forward pass (their mean over EOT draws), which
    attacks that keep their best iterate read at no extra cost.
    """
    was_training = model.training
    model.eval()
    draws = getattr(model, "eot_draws", None) or [None]
    scale = None
    for _ in range(4):
        grads, logits = [], []
        for d in draws:
            if d is not None:
                model.draw = d
            grad, scale, out = _scaled_gradient(model, images, labels, scale)
            grads.append(grad)
            logits.append(out)
        grad = grads[0] if len(grads) == 1 else torch.stack(grads).mean(0)
        bad = ~torch.isfinite(grad).flatten(1).all(1)
        if not bad.any():
            break
        scale = torch.where(bad, scale * 2.0 ** -16, scale)
    model.train(was_training)
    if return_logits:
        return grad, logits[0] if len(logits) == 1 else torch.stack(logits).mean(0)
    return grad


def _scaled_gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                     scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = images.clone().detach().requires_grad_(True)
    logits = model(x).float()
    if scale is None:
        scale = _loss_scale(logits.detach(), labels)
    per_image = nn.functional.cross_entropy(logits, labels, reduction="none")
    loss = (per_image * scale).sum() / len(labels)       # the mean, each term scaled
    return torch.autograd.grad(loss, x)[0], scale, logits.detach()


def _loss_scale(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per image 2**k, k such that its largest logit gradient, (softmax - onehot) / N * 2**k, is in [1, 2)."""
    p = torch.softmax(logits, 1)
    top = (p - nn.functional.one_hot(labels, p.shape[1]).to(p.dtype)).abs().amax(1) / len(labels)
    k = -torch.floor(torch.log2(top.clamp_min(2.0 ** -140)))
    return torch.exp2(k.clamp(0, 126))          # 2**126: the largest power of two a float32 holds with room


@contextlib.contextmanager
def input_gradients_only(model: nn.Module) -> Iterator[nn.Module]:
    """The model with its weights frozen while an attack runs: autograd then skips the weights'
    gradients, which no attack reads (a third of a simple_cnn's backward on a CPU). The input
    gradient is the same, bit for bit; the weights' flags are restored afterwards."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p in params:
            p.requires_grad_(True)


def to_8bit_grid(images: torch.Tensor) -> torch.Tensor:
    """What an attacker delivers as a file: round (never truncate) to the 8-bit grid."""
    return torch.round(images.clamp(0, 1) * 255) / 255


def eps_levels(eps: float) -> int:
    """The largest perturbation, in 8-bit levels, that stays inside an L-infinity ball of radius eps."""
    return math.floor(eps * 255 + 1e-6)


def deliver(adv: torch.Tensor, clean: torch.Tensor, eps: float) -> torch.Tensor:
    """What an attacker delivers as a file, inside the ball its row is labelled with: each pixel rounded
    to the 8-bit grid, toward the clean pixel where plain rounding would leave the L-infinity ball
    (eps 0.03 delivers at most 7/255, never 8/255). `clean` lies on the grid; `adv` is (N, C, H, W) or
    candidates (N, K, C, H, W)."""
    if adv.dim() == clean.dim() + 1:
        clean = clean.unsqueeze(1)
    k = eps_levels(eps)
    u = torch.round(clean * 255)
    r = torch.round(adv.clamp(0, 1) * 255)
    return (u + (r - u).clamp(-k, k)) / 255


def as_candidates(adv: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """An attack's output as candidates (N, K, C, H, W): an attack returns one image per input, or K
    candidates each (its restarts' final and best iterates)."""
    return adv.unsqueeze(1) if adv.dim() == images.dim() else adv
