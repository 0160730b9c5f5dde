"""Gaussian blur on the 8-bit image; equals cv2.GaussianBlur(ksize=k, sigma=0)."""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..pixels import from_levels
from ..registry import Param
from .base import odd, register_defense, to_uint8


def reference(img: np.ndarray, ksize: int = 3, sigma: float = 0.0) -> np.ndarray:
    return cv2.GaussianBlur(img, (ksize, ksize), sigma).astype(np.float64) / 255.0


def batched(images: torch.Tensor, ksize: int = 3, sigma: float = 0.0) -> torch.Tensor:
    if ksize != 3 or sigma != 0:
        # Only OpenCV's fixed 3x3 kernel is ported bit-exactly; other sizes use the reference.
        from .base import apply_reference
        return apply_reference(DEFENSE, images, ksize=ksize, sigma=sigma)
    # ksize 3, sigma 0: OpenCV's fixed [1,2,1]/4 kernel, separable, reflect-101 borders, integer
    # arithmetic with round-half-up at the end: (sum + 8) >> 4. Shifted integer adds, never a
    # float convolution: exact on any device whatever algorithm cuDNN would pick.
    x = to_uint8(images).to(torch.int32)
    n, c, h, w = x.shape
    x = F.pad(x.reshape(n * c, 1, h, w).float(), (1, 1, 1, 1), mode="reflect").to(torch.int32)  # reflect-101
    x = x[..., :, :-2] + 2 * x[..., :, 1:-1] + x[..., :, 2:]          # rows: [1, 2, 1]
    x = x[..., :-2, :] + 2 * x[..., 1:-1, :] + x[..., 2:, :]          # columns: [1, 2, 1]
    out = (x + 8) >> 4
    return from_levels(out).reshape(n, c, h, w)

def smooth(images: torch.Tensor, ksize: int = 3, sigma: float = 0.0) -> torch.Tensor:
    """The blur in floats, differentiable: OpenCV's separable kernel, reflect-101 borders, no rounding.
    Its gradient is the blur's exact gradient (the final rounding to 8 bits passed straight through).
    Shifted, weighted adds rather than a convolution: a one-channel conv2d on CPU takes ~30x longer
    forward and backward, and every adaptive step pays it."""
    k = cv2.getGaussianKernel(ksize, sigma).ravel().tolist()
    n, c, h, w = images.shape
    r = ksize // 2
    x = F.pad(images.reshape(n * c, h, w), (r, r, r, r), mode="reflect")
    x = sum(x[:, :, j:j + w] * k[j] for j in range(ksize))            # rows
    x = sum(x[:, i:i + h, :] * k[i] for i in range(ksize))            # columns
    return x.reshape(n, c, h, w)


DEFENSE = register_defense("gaussian_blur", reference, batched, gradient="exact", approx=smooth, short="blur", params={
    "ksize": odd(1),                                           # OpenCV: a positive odd kernel size
    "sigma": Param(0.0, float, lambda s: s >= 0, ">= 0 (0: OpenCV derives it from ksize)"),
})
