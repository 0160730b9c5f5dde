"""FGSM (Goodfellow et al. 2015): one signed-gradient step of size eps, as torchattacks does it."""
from __future__ import annotations

import torch
import torch.nn as nn

from .base import input_gradient, register_attack


@register_attack
def fgsm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    if eps == 0:
        return images.clone().detach()
    grad = input_gradient(model, images, labels)
    return torch.clamp(images + eps * grad.sign(), min=0, max=1).detach()
