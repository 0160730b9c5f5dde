"""Total-variation denoising (Chambolle); equals skimage.restoration.denoise_tv_chambolle.

skimage turns the uint8 image into float64 in [0,1] and denoises each channel of each
image on its own, stopping when its energy settles. The batched port keeps float64 and a
per-plane convergence mask, so every plane stops at the same iteration as skimage's.
"""
from __future__ import annotations

import numpy as np
import torch
from skimage.restoration import denoise_tv_chambolle

from .base import Defense, register_defense, to_uint8


def reference(img: np.ndarray, weight: float = 0.1, eps: float = 2e-4, max_num_iter: int = 200) -> np.ndarray:
    return denoise_tv_chambolle(img, weight=weight, eps=eps, max_num_iter=max_num_iter, channel_axis=-1)


def _divergence(p: torch.Tensor) -> torch.Tensor:
    """skimage's d = -(div p): p is (2, planes, H, W)."""
    d = -p.sum(0)
    d[:, 1:, :] += p[0, :, :-1, :]
    d[:, :, 1:] += p[1, :, :, :-1]
    return d


def _gradient(out: torch.Tensor) -> torch.Tensor:
    g = torch.zeros((2,) + out.shape, dtype=out.dtype, device=out.device)
    g[0, :, :-1, :] = out[:, 1:, :] - out[:, :-1, :]
    g[1, :, :, :-1] = out[:, :, 1:] - out[:, :, :-1]
    return g


def chambolle_planes(image: torch.Tensor, weight: float, eps: float, max_num_iter: int) -> torch.Tensor:
    """Denoise (planes, H, W) float64, each plane with its own stopping iteration."""
    planes, h, w = image.shape
    result = image.clone()
    active = torch.arange(planes, device=image.device)   # planes still iterating
    img = image
    p = torch.zeros((2, planes, h, w), dtype=image.dtype, device=image.device)
    tau = 1.0 / 4.0
    e_init = e_prev = None
    for i in range(max_num_iter):
        d = _divergence(p) if i > 0 else torch.zeros_like(img)
        out = img + d if i > 0 else img
        g = _gradient(out)
        norm = torch.sqrt((g ** 2).sum(0))
        energy = ((d ** 2).sum((1, 2)) + weight * norm.sum((1, 2))) / float(h * w)
        p = (p - tau * g) / (1.0 + norm * (tau / weight)).unsqueeze(0)
        result[active] = out
        if i == 0:
            e_init, e_prev = energy, energy
            continue
        done = (e_prev - energy).abs() < eps * e_init
        if done.any():
            keep = ~done
            active, img, p = active[keep], img[keep], p[:, keep]
            e_init, energy = e_init[keep], energy[keep]
            if active.numel() == 0:
                break
        e_prev = energy
    return result


def batched(images: torch.Tensor, weight: float = 0.1, eps: float = 2e-4, max_num_iter: int = 200) -> torch.Tensor:
    n, c, h, w = images.shape
    x = to_uint8(images).to(torch.float64) / 255.0
    out = chambolle_planes(x.reshape(n * c, h, w), weight, eps, max_num_iter)
    return out.reshape(n, c, h, w).to(torch.float32)


DEFENSE = register_defense(Defense("tv_denoise", {"weight": 0.1, "eps": 2e-4, "max_num_iter": 200},
                                   reference, batched, {"weight": float, "eps": float, "max_num_iter": int}))
