"""Total-variation denoising (Chambolle); equals skimage.restoration.denoise_tv_chambolle.

skimage turns the uint8 image into float64 in [0,1] and denoises each channel of each
image on its own, stopping when its energy settles. On the CPU each plane runs skimage's
iterations op for op in a compiled loop (numba: the plane stays in L1, one pass for the
divergence and one for the gradient step per iteration, planes split over threads); on other
devices a torch port keeps float64 and a per-plane convergence mask. Both stop every plane at
skimage's iteration; the compiled loop equals skimage bit for bit, the port within 1e-12.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from ..registry import Param
from .base import register_defense, to_uint8


def reference(img: np.ndarray, weight: float = 0.1, eps: float = 2e-4, max_num_iter: int = 200) -> np.ndarray:
    from skimage.restoration import (
        denoise_tv_chambolle,  # imports scipy.stats: 0.8 s a process, so only here
    )
    return denoise_tv_chambolle(img, weight=weight, eps=eps, max_num_iter=max_num_iter, channel_axis=-1)


def chambolle_planes(image: torch.Tensor, weight: float, eps: float, max_num_iter: int) -> torch.Tensor:
    """Denoise (planes, H, W) float64, each plane with its own stopping iteration.

    The arithmetic is skimage's, op for op, in preallocated buffers (in-place ops: about half the
    memory passes of the plain expressions); planes that stop leave the working set in batches.
    """
    planes, h, w = image.shape
    result = image.clone()
    active = torch.arange(planes, device=image.device)    # which planes the working set holds
    img, out = image, image.clone()
    p = torch.zeros((2, planes, h, w), dtype=image.dtype, device=image.device)
    g = torch.zeros_like(p)                                # last row/column stay 0, as np.diff leaves them
    d, norm, sq = torch.zeros_like(image), torch.empty_like(image), torch.empty_like(p)
    tau = 1.0 / 4.0
    e_init = e_prev = None
    live = torch.ones(planes, dtype=torch.bool, device=image.device)   # not yet stopped
    for i in range(max_num_iter):
        if i > 0:
            torch.add(p[0], p[1], out=d)                   # d = -(div p), as skimage's -p.sum(0) + shifts
            d.neg_()
            d[:, 1:, :] += p[0, :, :-1, :]
            d[:, :, 1:] += p[1, :, :, :-1]
            torch.add(img, d, out=out)
        torch.sub(out[:, 1:, :], out[:, :-1, :], out=g[0, :, :-1, :])
        torch.sub(out[:, :, 1:], out[:, :, :-1], out=g[1, :, :, :-1])
        torch.mul(g, g, out=sq)
        torch.add(sq[0], sq[1], out=norm).sqrt_()
        energy = (torch.linalg.vecdot(d.flatten(1), d.flatten(1)) if i > 0 else 0.0) + weight * norm.sum((1, 2))
        energy = energy / float(h * w)
        norm.mul_(tau / weight).add_(1.0)
        p.sub_(g, alpha=tau).div_(norm)                    # tau is a power of two: tau*g is exact either way
        if i == 0:
            e_init = e_prev = energy
            continue
        done = live & ((e_prev - energy).abs() < eps * e_init)
        if done.any():
            result[active[done]] = out[done]
            live &= ~done
            if not live.any():
                return result
            # Shrinking the working set copies every buffer: do it once a quarter has stopped;
            # stopped planes iterate on meanwhile, their results already kept.
            if (~live).sum() * 4 >= live.numel():
                active, img, out, p, g = active[live], img[live], out[live], p[:, live], g[:, live]
                d, norm, sq = d[live], norm[live], sq[:, live]
                e_init, energy, live = e_init[live], energy[live], live[live]
        e_prev = energy
    result[active[live]] = out[live]
    return result


def batched(images: torch.Tensor, weight: float = 0.1, eps: float = 2e-4, max_num_iter: int = 200) -> torch.Tensor:
    n, c, h, w = images.shape
    x = to_uint8(images).to(torch.float64) / 255.0
    planes = x.reshape(n * c, h, w)
    compiled = _compiled_planes() if planes.device.type == "cpu" else None
    out = chambolle_planes(planes, weight, eps, max_num_iter) if compiled is None else compiled(planes, weight, eps, max_num_iter)
    return out.reshape(n, c, h, w).to(torch.float32)


@functools.cache
def _compiled_planes():
    """The compiled per-plane loop, or None where numba is not installed (then the torch port runs)."""
    try:
        from . import tv_kernel  # numba compiles on first use (cached on disk): only where TV runs
    except ImportError:
        return None
    return tv_kernel.chambolle_planes


UNROLLED_ITERATIONS = 20


def unrolled(images: torch.Tensor, weight: float = 0.1, eps: float = 2e-4, max_num_iter: int = 200) -> torch.Tensor:
    """Chambolle's iterations unrolled, differentiable: the adaptive attacker's stand-in for TV.

    The first UNROLLED_ITERATIONS of skimage's updates (without its stop test, in the images' dtype),
    out-of-place so autograd follows them; the forward value stays the real defense's (BPDA).
    """
    n, c, h, w = images.shape
    img = images.reshape(n * c, h, w)
    p0 = p1 = torch.zeros_like(img)   # the dual field's two components, kept apart: no stack per iteration
    out = img
    for i in range(min(UNROLLED_ITERATIONS, max_num_iter)):
        if i > 0:
            d = -p0 - p1
            d = d + F.pad(p0[:, :-1, :], (0, 0, 1, 0)) + F.pad(p1[:, :, :-1], (1, 0))
            out = img + d
        g0 = F.pad(out[:, 1:, :] - out[:, :-1, :], (0, 0, 0, 1))
        g1 = F.pad(out[:, :, 1:] - out[:, :, :-1], (0, 1))
        norm = 1 + (0.25 / weight) * torch.sqrt(g0 * g0 + g1 * g1 + 1e-12)
        p0, p1 = (p0 - 0.25 * g0) / norm, (p1 - 0.25 * g1) / norm
    return out.reshape(n, c, h, w)


DEFENSE = register_defense("tv_denoise", reference, batched, gradient=f"bpda_tv_unrolled{UNROLLED_ITERATIONS}",
                           approx=unrolled, short="tv", params={
    "weight": Param(0.1, float, lambda w: w > 0, "> 0"),
    "eps": Param(2e-4, float, lambda e: e > 0, "> 0 (the relative energy change that stops a plane)"),
    "max_num_iter": Param(200, int, lambda n: n >= 1, ">= 1"),
})
