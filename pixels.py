"""8-bit pixel levels and [0, 1] floats, with the same bits on every device.

PyTorch on CUDA divides by a Python number as a multiplication by its reciprocal, so `k / 255` there is one
ulp off the CPU's (and OpenCV's) correctly rounded quotient for some levels k: the CUDA suite saw 6e-8 on
an H200 in every batched defense, `none` included. The quotient taken in float64 and rounded once to the
target dtype is the correctly rounded one on any device: k / 255 in binary is k's eight bits repeated, so
it never lies within float64's error of a float32 (or half) rounding tie.
"""
from __future__ import annotations

import torch


def from_levels(levels: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Levels 0..255 (any dtype holding integers) -> [0, 1] in `dtype`, correctly rounded on any device."""
    return (levels.to(torch.float64) / 255).to(dtype)


def to_levels(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats -> their nearest 8-bit levels, as floats (rounded, never truncated)."""
    return torch.round(images.clamp(0, 1) * 255)
