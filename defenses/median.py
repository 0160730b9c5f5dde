"""Median filter on the 8-bit image; equals cv2.medianBlur(ksize)."""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .base import Defense, register_defense, to_uint8


def reference(img: np.ndarray, ksize: int = 3) -> np.ndarray:
    return cv2.medianBlur(img, ksize).astype(np.float64) / 255.0


def batched(images: torch.Tensor, ksize: int = 3) -> torch.Tensor:
    if ksize not in (3, 5):
        # OpenCV only accepts ksize > 5 for uint8 through another algorithm; use the reference.
        from .base import apply_reference
        return apply_reference(DEFENSE, images, ksize=ksize)
    x = to_uint8(images).to(torch.float32)
    n, c, h, w = x.shape
    r = ksize // 2
    x = F.pad(x.reshape(n * c, 1, h, w), (r, r, r, r), mode="replicate")  # OpenCV: replicate borders
    windows = F.unfold(x, ksize)                                            # (nc, k*k, h*w)
    out = windows.median(dim=1).values                                      # k*k odd: the true median
    return (out / 255).reshape(n, c, h, w)


DEFENSE = register_defense(Defense("median", {"ksize": 3}, reference, batched, {"ksize": int}))
