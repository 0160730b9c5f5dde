"""Shared base of the attacks: `attack(model, images, labels, eps) -> images`, all in [0,1]."""
from __future__ import annotations

from typing import Callable, Protocol

import torch
import torch.nn as nn


class Attack(Protocol):
    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 eps: float) -> torch.Tensor: ...


_ATTACKS: dict[str, Attack] = {}


def register_attack(fn: Callable) -> Callable:
    _ATTACKS[fn.__name__] = fn
    return fn


def attack_names() -> list[str]:
    return sorted(_ATTACKS)


def get_attack(name: str) -> Attack:
    if name not in _ATTACKS:
        raise KeyError(f"unknown attack {name!r}; known: {', '.join(attack_names())}")
    return _ATTACKS[name]


def gradient_step(name: str) -> Callable | None:
    """For single-step attacks, `step(images, grad, eps)`: one input gradient serves every eps."""
    return getattr(get_attack(name), "from_gradient", None)


def input_gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Gradient of the mean cross-entropy w.r.t. the input, model in eval mode."""
    was_training = model.training
    model.eval()
    images = images.clone().detach().requires_grad_(True)
    loss = nn.CrossEntropyLoss()(model(images), labels)
    grad = torch.autograd.grad(loss, images, retain_graph=False, create_graph=False)[0]
    model.train(was_training)
    return grad


def to_8bit_grid(images: torch.Tensor) -> torch.Tensor:
    """What an attacker delivers as a file: round (never truncate) to the 8-bit grid."""
    return torch.round(images.clamp(0, 1) * 255) / 255
