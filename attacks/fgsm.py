"""FGSM (Goodfellow et al. 2015): one signed-gradient step of size eps, as torchattacks does it."""
from __future__ import annotations

import torch
from torch import nn

from .base import input_gradient, register_attack


def fgsm_step(images: torch.Tensor, grad: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.clamp(images + eps * grad.sign(), min=0, max=1).detach()


@register_attack(step=fgsm_step)
def fgsm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    """FGSM: images + eps * sign(input gradient of the cross-entropy), clipped to [0,1]."""
    if eps == 0:
        return images.clone().detach()
    return fgsm_step(images, input_gradient(model, images, labels), eps)
