"""Batch-by-batch helpers shared by the engine and the reference pipeline: predict, attack, defend."""
from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import nn

from ...attacks import ZOO_CHUNK, Judge, as_candidates, attack_inputs, deliver, get_attack, norm_of, start_seed
from ...defenses import apply_defense


def to_model(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    # channels_last: the CPU convolutions and pools run ~2.5x faster on 32x32 images, CUDA's too
    return x.to(device).contiguous(memory_format=torch.channels_last)


def predict(model: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int) -> torch.Tensor:
    """Predicted classes, on the CPU (the copy back waits for the device: a clock after it is honest)."""
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            out.append(model(to_model(images[i:i + batch_size], device)).argmax(1).cpu())
    return torch.cat(out)


def over_batches(fn: Callable, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 device: torch.device, batch_size: int, per_image: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """fn(model, images, labels, **per_image) batch by batch on `device`; results gathered where the images
    live. `per_image` tensors (random starts, draw keys) are sliced with the images. Attacks and gradients
    share these batches, so a step from a gradient is bit-identical."""
    out = []
    for i in range(0, len(images), batch_size):
        xb, yb = to_model(images[i:i + batch_size], device), labels[i:i + batch_size].to(device)
        kw = {k: v[i:i + batch_size].to(device) for k, v in (per_image or {}).items()}
        out.append(fn(model, xb, yb, **kw).to(images.device))
    return torch.cat(out).contiguous()


def attack_images(model: nn.Module, scored: nn.Module, attack: str, images: torch.Tensor, labels: torch.Tensor,
                  eps: float, device: torch.device, batch_size: int, params: dict | None = None,
                  per_image: dict[str, torch.Tensor] | None = None, judge: Judge | None = None) -> torch.Tensor:
    """Candidates (N, K, C, H, W) on the 8-bit grid inside the eps-ball of the attack's norm (what an attacker
    delivers as files). model: what the attacker differentiates; scored: what a black-box attack queries
    (attack_inputs decides who gets which). per_image: `starts`, `image_keys`, sliced per batch; judge: the image
    set's judge, handed to each batch for its images."""
    fn, params = get_attack(attack), params or {}
    norm = norm_of(params)
    positions = {"positions": torch.arange(len(images))}

    def run(_, x, y, positions, **kw):
        m, options = attack_inputs(attack, model, scored, judge.subset(positions) if judge is not None else None)
        return deliver(as_candidates(fn(m, x, y, eps, **params, **kw, **options), x), x, eps, norm)
    return over_batches(run, model, images, labels, device, batch_size, {**(per_image or {}), **positions})


def zoo_images(model: nn.Module, attack: str, images: torch.Tensor, labels: torch.Tensor, eps: float,
               device: torch.device, params: dict, seed: int, first_index: int = 0) -> torch.Tensor:
    """An attack of the torchattacks zoo, which draws its random starts (and APGD's, Square's...) from the
    global RNG: run on fixed chunks of ZOO_CHUNK images of the test split, the RNG seeded from (seed, the
    chunk's first index) before each, so a cell does not depend on the batch size, the cell order or how
    the cells were split into tasks."""
    fn, out = get_attack(attack), []
    cuts = sorted({0, len(images)} | {c - first_index for c in range(0, first_index + len(images), ZOO_CHUNK)
                                      if first_index < c < first_index + len(images)})
    for a, b in itertools.pairwise(cuts):
        torch.manual_seed(start_seed(seed, first_index + a))      # a stream per chunk, as per restart
        if hasattr(model, "restart_draws"):      # an attacker through a randomized defense: its draws restart too
            model.restart_draws()
        x, y = to_model(images[a:b], device), labels[a:b].to(device)
        out.append(deliver(as_candidates(fn(model, x, y, eps, **params), x), x, eps, norm_of(params)).to(images.device))
    return torch.cat(out).contiguous()


def defend_images(name: str, params: dict, images: torch.Tensor, backend: str, batch_size: int,
                  index: torch.Tensor | None = None) -> torch.Tensor:
    """index: each image's place in the test split (a randomized defense's draws come from it)."""
    return torch.cat([apply_defense(name, images[i:i + batch_size], params, backend,
                                    None if index is None else index[i:i + batch_size])
                      for i in range(0, len(images), batch_size)])
