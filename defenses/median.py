"""Median filter on the 8-bit image; equals cv2.medianBlur(ksize)."""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..pixels import from_levels
from .base import odd, register_defense, to_uint8


def reference(img: np.ndarray, ksize: int = 3) -> np.ndarray:
    return cv2.medianBlur(img, ksize).astype(np.float64) / 255.0


def batched(images: torch.Tensor, ksize: int = 3) -> torch.Tensor:
    if ksize == 3:
        return _median3(images)
    if ksize != 5:
        # OpenCV only accepts ksize > 5 for uint8 through another algorithm; use the reference.
        from .base import apply_reference
        return apply_reference(DEFENSE, images, ksize=ksize)
    x = to_uint8(images).to(torch.float32)
    n, c, h, w = x.shape
    r = ksize // 2
    x = F.pad(x.reshape(n * c, 1, h, w), (r, r, r, r), mode="replicate")  # OpenCV: replicate borders
    windows = F.unfold(x, ksize)                                            # (nc, k*k, h*w)
    out = windows.median(dim=1).values                                      # k*k odd: the true median
    return from_levels(out).reshape(n, c, h, w)


def _sort2(a: torch.Tensor, b: torch.Tensor):
    return torch.minimum(a, b), torch.maximum(a, b)


def _median3(images: torch.Tensor) -> torch.Tensor:
    """3x3 median as a 19-exchange selection network over the 9 shifted planes (Paeth / Devillard's
    opt_med9): exact, and far cheaper than sorting unfolded windows."""
    x = to_uint8(images).to(torch.float32)
    n, c, h, w = x.shape
    p = F.pad(x.reshape(n * c, 1, h, w), (1, 1, 1, 1), mode="replicate")
    v = [p[:, 0, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)]
    for i, j in [(1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3), (5, 8),
                 (4, 7), (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2)]:
        v[i], v[j] = _sort2(v[i], v[j])
    return from_levels(v[4]).reshape(n, c, h, w)


def window_median(images: torch.Tensor, ksize: int = 3) -> torch.Tensor:
    """The median filter in floats, differentiable: its subgradient flows to each window's median pixel."""
    n, c, h, w = images.shape
    r = ksize // 2
    x = F.pad(images.reshape(n * c, 1, h, w), (r, r, r, r), mode="replicate")
    return F.unfold(x, ksize).median(dim=1).values.reshape(n, c, h, w)


DEFENSE = register_defense("median", reference, batched, {"ksize": odd(3)},   # cv2.medianBlur: odd, > 1
                           gradient="bpda_median", approx=window_median)
