"""The reference pipeline: every cell computed on its own, as the notebooks ran it.

For each cell: make the adversarial images with the cell's source model, defend them one
image at a time through OpenCV / scikit-image, predict. No image set is shared between
cells; only the clean predictions behind the attack-success rate are kept per
(quant, defense), as a plain loop would keep them. It is the oracle the engine is tested
against (same rows, cell by cell) and the baseline `robustgrid bench` measures it by.
"""
from __future__ import annotations

import json
import time
from typing import Any

import torch
import torch.nn as nn

from ...attacks import random_starts, to_8bit_grid
from ..device import ieee_fp32
from ..provenance import images_digest
from ..spec import EvaluateSpec
from .batching import attack_images, defend_images, predict
from .engine import Models, ThroughDefense, split_attack_params
from .plan import plan_cells
from .rows import make_row


def reference_rows(fp32: nn.Module, ev: EvaluateSpec, images: torch.Tensor, labels: torch.Tensor,
                   device: torch.device, meta: dict[str, Any], calibration: torch.Tensor | None = None) -> list[dict]:
    with ieee_fp32():
        return _reference_rows(fp32, ev, images, labels, device, meta, calibration)


def _reference_rows(fp32: nn.Module, ev: EvaluateSpec, images: torch.Tensor, labels: torch.Tensor,
                    device: torch.device, meta: dict[str, Any], calibration: torch.Tensor | None) -> list[dict]:
    m = Models.build(fp32, ev.quant, device, calibration)
    digest = images_digest(images, labels)
    clean_ok: dict[tuple, torch.Tensor] = {}

    def correct(quant: str, imgs: torch.Tensor, defense: str, params: dict) -> torch.Tensor:
        defended = defend_images(defense, params, imgs, "reference", ev.batch_size)
        return predict(m.models[quant], defended, m.devices[quant], ev.batch_size) == labels

    rows = []
    for c in plan_cells(ev):
        t0 = time.perf_counter()
        params = json.loads(c.defense_params)
        if c.eps == 0:
            adv = to_8bit_grid(images)
        else:
            adv = _attack(m, ev, c, params, images, labels)
        ok = correct(c.quant, adv, c.defense, params)
        key = (c.quant, c.defense, c.defense_params)
        if key not in clean_ok:
            clean_ok[key] = ok if c.eps == 0 else correct(c.quant, to_8bit_grid(images), c.defense, params)
        rows.append(make_row(c, ok, clean_ok[key], time.perf_counter() - t0, meta, model_bytes=m.sizes[c.quant],
                             device=m.devices[c.quant], precision=m.precision(c.quant), seed=ev.seed,
                             data_digest=digest))
    return rows


def _attack(m: Models, ev: EvaluateSpec, c, defense_params: dict, images: torch.Tensor,
            labels: torch.Tensor) -> torch.Tensor:
    """The cell's adversarial images, made for it alone; adaptive: through the per-image reference
    defense (OpenCV / scikit-image) in the forward pass, its declared gradient in the backward."""
    model, dev = m.attacker(c.source_model), m.devices[c.source_model]
    params, eot_samples = split_attack_params(c.attack_params)
    if c.threat == "adaptive":
        model = ThroughDefense(model, c.defense, defense_params, "reference", eot_samples)
    starts = None
    if params.get("random_start"):
        unit = random_starts(len(images), tuple(images.shape[1:]), int(params.get("restarts", 1)), ev.seed)
        starts = c.eps * unit.to(images.device)
    return attack_images(model, c.attack, images, labels, c.eps, dev, ev.batch_size, params, starts)
