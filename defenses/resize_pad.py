"""Random resize and pad (Xie et al., ICLR 2018, "Mitigating Adversarial Effects Through Randomization").

Each image is shrunk to a random s x s, s in [min_size, min(H, W)] (nearest neighbour: source row
(i * H) // s) and placed at a random offset in a zero H x W frame. Randomized: an image's draw comes from its 8-bit pixels,
the defense's `seed` and a draw index, in integer arithmetic, so it is the same in whatever batch
the image lands and in the per-image reference. Scoring uses draw 0; an adaptive attacker
averages its gradient over draws 1..eot_samples (EOT, Athalye et al. 2018).
"""
from __future__ import annotations

import numpy as np
import torch

from ..registry import Param
from .base import register_defense, to_uint8

_P = 2_147_483_647                      # 2**31 - 1: every product below stays inside int64
_A, _B, _C = 48_271, 69_621, 40_692


def _weights(n: int) -> np.ndarray:
    return np.random.default_rng(20180222).integers(1, 1 << 20, size=n, dtype=np.int64)


def _mix(v, k: int):
    return (v * _A + k * _B + _C) % _P


def draws_numpy(img: np.ndarray, seed: int, draw: int, min_size: int) -> tuple[int, int, int]:
    """(size, top, left) for one uint8 HWC image (the reference's draw)."""
    chw = np.ascontiguousarray(img.transpose(2, 0, 1)).astype(np.int64).ravel()
    h = int((chw * _weights(chw.size)).sum() % _P)
    v = _mix(_mix(h, seed), draw)
    side = min(img.shape[:2])
    lo = min(min_size, side)
    size = lo + v % (side - lo + 1)
    v = _mix(v, 1)
    top = v % (img.shape[0] - size + 1)
    v = _mix(v, 2)
    return size, top, v % (img.shape[1] - size + 1)


def draws_torch(x_uint8: torch.Tensor, seed: int, draw: int, min_size: int):
    """(size, top, left), each (n,), for a uint8 NCHW batch: the same integers as draws_numpy."""
    n, c, h, w = x_uint8.shape
    weights = torch.from_numpy(_weights(c * h * w)).to(x_uint8.device)
    v = (x_uint8.reshape(n, -1).to(torch.int64) * weights).sum(1) % _P
    v = _mix(_mix(v, seed), draw)
    side = min(h, w)
    lo = min(min_size, side)
    size = lo + v % (side - lo + 1)
    v = _mix(v, 1)
    top = v % (h - size + 1)
    v = _mix(v, 2)
    return size, top, v % (w - size + 1)


def reference(img: np.ndarray, min_size: int = 26, seed: int = 0, draw: int = 0) -> np.ndarray:
    h, w = img.shape[:2]
    size, top, left = draws_numpy(img, seed, draw, min_size)
    rows = (np.arange(size) * h) // size
    cols = (np.arange(size) * w) // size
    out = np.zeros_like(img)
    out[top:top + size, left:left + size] = img[rows][:, cols]
    return out.astype(np.float64) / 255.0


def _place(x: torch.Tensor, size, top, left) -> torch.Tensor:
    """Gather each image's shrunk copy into its frame (x any float NCHW; differentiable)."""
    n, c, h, w = x.shape
    i = torch.arange(h, device=x.device).view(1, h) - top.view(n, 1)          # row inside the shrunk image
    j = torch.arange(w, device=x.device).view(1, w) - left.view(n, 1)
    inside = ((i >= 0) & (i < size.view(n, 1))).view(n, h, 1) & ((j >= 0) & (j < size.view(n, 1))).view(n, 1, w)
    src_r = (i.clamp(min=0) * h) // size.view(n, 1)
    src_c = (j.clamp(min=0) * w) // size.view(n, 1)
    idx = (src_r.clamp(max=h - 1).view(n, h, 1) * w + src_c.clamp(max=w - 1).view(n, 1, w)).view(n, 1, h * w)
    out = x.reshape(n, c, h * w).gather(2, idx.expand(n, c, h * w)).view(n, c, h, w)
    return out * inside.view(n, 1, h, w).to(x.dtype)


def batched(images: torch.Tensor, min_size: int = 26, seed: int = 0, draw: int = 0) -> torch.Tensor:
    x = to_uint8(images)
    out = _place(x.to(torch.float32), *draws_torch(x, seed, draw, min_size))
    return out / 255


def placed(images: torch.Tensor, min_size: int = 26, seed: int = 0, draw: int = 0) -> torch.Tensor:
    """The same transform on floats: differentiable (a gather), the gradient an adaptive attacker takes."""
    return _place(images, *draws_torch(to_uint8(images.detach()), seed, draw, min_size))


DEFENSE = register_defense("random_resize_pad", reference, batched, {
    "min_size": Param(26, int, lambda s: 1 <= s <= 32, "an integer in [1, 32] (the smallest side drawn)"),
    "seed": Param(0, int),
}, gradient="exact", approx=placed, randomized=True)
