"""Shared base of the defenses: `defense(images, **params) -> images`, batched, [0,1] in and out.

Each defense has a reference (per image, through the library the notebooks used, OpenCV
or scikit-image) and a batched torch version that tests prove equal to it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..registry import Param, Registry

ReferenceFn = Callable[..., np.ndarray]     # (uint8 HWC RGB image, **params) -> float HWC in [0,1]
BatchedFn = Callable[..., torch.Tensor]     # (float NCHW in [0,1], **params) -> float NCHW in [0,1]


@dataclass(frozen=True)
class Defense:
    name: str
    reference: ReferenceFn
    batched: BatchedFn


DEFENSES = Registry("defense")


def register_defense(name: str, reference: ReferenceFn, batched: BatchedFn,
                     params: dict[str, Param] | None = None, *, gradient: str = "bpda_identity",
                     approx: BatchedFn | None = None, randomized: bool = False, short: str | None = None) -> Defense:
    """A defense with its parameters, their defaults and valid domains (the spec checks them), and
    the gradient an adaptive attacker takes through it: `exact`, `bpda_identity`, or `bpda_<name>`
    with `approx(images, **params)`, a differentiable stand-in whose gradient replaces the real one.
    A randomized defense takes `draw=k` (its k-th draw of randomness) and `index` (each image's place in
    the test split: the defender's draws come from it, never from the pixels the attacker controls;
    without it the draw is the attacker's EOT draw). short: its name in a table's column header."""
    defense = Defense(name, reference, batched)
    DEFENSES.add(name, defense, params, gradient=gradient, approx=approx, randomized=randomized, short=short or name)
    return defense


def odd(minimum: int) -> Param:
    return Param(3, int, lambda k: k >= minimum and k % 2 == 1, f"an odd integer >= {minimum}")


def defense_names() -> list[str]:
    return DEFENSES.names()


def short_name(name: str) -> str:
    """A defense's column header (a name results hold that this release does not know: itself)."""
    return DEFENSES.get(name).extras["short"] if name in DEFENSES else name


def get_defense(name: str) -> Defense:
    return DEFENSES.get(name).obj


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[0,1] float -> uint8 values, rounded (never truncated)."""
    return torch.round(images.clamp(0, 1) * 255).to(torch.uint8)


def apply_reference(defense: Defense, images: torch.Tensor, **params) -> torch.Tensor:
    """One image at a time through the reference library, as the notebooks did (a randomized defense's
    `index` is split per image)."""
    hwc = to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()
    index = params.pop("index", None)
    per_image = [{} if index is None else {"index": int(i)} for i in (index if index is not None else [None] * len(hwc))]
    out = np.stack([defense.reference(np.ascontiguousarray(img), **params, **extra) for img, extra in zip(hwc, per_image)])
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(torch.float32).contiguous().to(images.device)


def apply_defense(name: str, images: torch.Tensor, params: dict[str, Any] | None = None,
                  backend: str = "batched", index: torch.Tensor | None = None) -> torch.Tensor:
    """`index` (each image's place in the test split) reaches randomized defenses only: their draws."""
    defense = get_defense(name)
    kwargs = {**DEFENSES.get(name).defaults, **(params or {})}
    if index is not None and is_randomized(name):
        kwargs["index"] = index
    if backend == "reference":
        return apply_reference(defense, images, **kwargs)
    if backend == "batched":
        return defense.batched(images, **kwargs)
    raise ValueError(f"unknown defense backend {backend!r}; known: reference, batched")


def defense_gradient(name: str) -> str:
    return DEFENSES.get(name).extras["gradient"]


def defend_differentiably(name: str, images: torch.Tensor, params: dict[str, Any] | None = None,
                          backend: str = "batched") -> torch.Tensor:
    """BPDA (Athalye et al. 2018): the forward pass is the real defense (on the 8-bit grid, exactly
    what is scored), the backward pass the gradient of the defense's declared approximation (the
    identity where it declares none)."""
    entry = DEFENSES.get(name)
    return _BPDA.apply(images, name, {**entry.defaults, **(params or {})}, backend)


class _BPDA(torch.autograd.Function):
    @staticmethod
    def forward(ctx, images, name, kwargs, backend):
        ctx.save_for_backward(images)
        ctx.name, ctx.kwargs = name, kwargs
        return apply_defense(name, images, kwargs, backend)

    @staticmethod
    def backward(ctx, grad_out):
        (images,) = ctx.saved_tensors
        approx = DEFENSES.get(ctx.name).extras.get("approx")
        if approx is None:
            return grad_out, None, None, None
        with torch.enable_grad():
            x = images.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(approx(x, **ctx.kwargs), x, grad_out)
        return grad, None, None, None


def is_randomized(name: str) -> bool:
    return DEFENSES.get(name).extras["randomized"]
