"""FGM (Goodfellow et al. 2015; Miyato et al. 2017): FGSM's L2 twin, one step of L2 length eps along the gradient."""
from __future__ import annotations

import torch
from torch import nn

from ..registry import Param
from .base import input_gradient, register_attack
from .pgd import l2_direction


def fgm_step(images: torch.Tensor, grad: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.clamp(images + eps * l2_direction(grad), min=0, max=1).detach()


@register_attack(step=fgm_step, params={"norm": Param("l2", str, lambda n: n == "l2", "l2 (fgsm is the L-inf one)")})
def fgm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, norm: str = "l2") -> torch.Tensor:
    """FGM: images + eps * g / ||g||_2 (g the input gradient of the cross-entropy), clipped to [0,1]."""
    if eps == 0:
        return images.clone().detach()
    return fgm_step(images, input_gradient(model, images, labels), eps)
