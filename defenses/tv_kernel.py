"""skimage's Chambolle iterations (`_denoise_tv_chambolle_nd` on a 2-D plane) as a compiled loop.

The same float64 operations in the same order per pixel, so every plane is bit-equal to skimage's
(tests/test_defenses.py); the energy's sums run in row order where numpy sums pairwise, which can
move a plane's stop only where its energy change sits within an ulp of the threshold. Per
iteration the plane is read twice (divergence and new image; gradient, norm and dual step) instead
of numpy's dozen array passes; planes are split over threads (the loop releases the GIL).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from numba import njit


@njit(cache=True, nogil=True)
def _planes(image, weight, eps, max_num_iter, out):          # (planes, H, W) float64 in and out
    for k in range(image.shape[0]):
        _plane(image[k], weight, eps, max_num_iter, out[k])


@njit(cache=True, nogil=True)
def _plane(img, weight, eps, max_num_iter, out):
    h, w = img.shape
    p0, p1 = np.zeros((h, w)), np.zeros((h, w))               # the dual field, skimage's p[0] and p[1]
    tau = 0.25                                                 # 1 / (2 ndim)
    e_init = e_prev = 0.0
    for i in range(max_num_iter):
        d2 = 0.0
        if i == 0:
            out[:, :] = img
        else:
            for r in range(h):
                for c in range(w):
                    d = -(p0[r, c] + p1[r, c])                 # d = -p.sum(0), then the shifted p added
                    if r > 0:
                        d += p0[r - 1, c]
                    if c > 0:
                        d += p1[r, c - 1]
                    out[r, c] = img[r, c] + d
                    d2 += d * d
        norm_sum = 0.0
        for r in range(h):
            for c in range(w):
                g0 = out[r + 1, c] - out[r, c] if r < h - 1 else 0.0     # np.diff, 0 on the last row / column
                g1 = out[r, c + 1] - out[r, c] if c < w - 1 else 0.0
                norm = np.sqrt(g0 * g0 + g1 * g1)
                norm_sum += norm
                norm = norm * (tau / weight) + 1.0
                p0[r, c] = (p0[r, c] - tau * g0) / norm
                p1[r, c] = (p1[r, c] - tau * g1) / norm
        energy = (d2 + weight * norm_sum) / float(h * w)
        if i == 0:
            e_init = e_prev = energy
        elif abs(e_prev - energy) < eps * e_init:
            return
        else:
            e_prev = energy


def chambolle_planes(image: torch.Tensor, weight: float, eps: float, max_num_iter: int) -> torch.Tensor:
    """(planes, H, W) float64 on the CPU, each plane to its own stop; torch's thread count in threads."""
    x = np.ascontiguousarray(image.numpy())
    out = np.empty_like(x)
    parts = max(1, min(torch.get_num_threads(), len(x)))
    args = (float(weight), float(eps), int(max_num_iter))
    with ThreadPoolExecutor(parts) as pool:     # array_split gives views: each thread writes its planes of `out`
        list(pool.map(lambda io: _planes(io[0], *args, io[1]), zip(np.array_split(x, parts), np.array_split(out, parts))))
    return torch.from_numpy(out)
