"""A few images as the notebooks showed them: original, adversarial, each defense, predictions."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...attacks import to_8bit_grid
from ...defenses import apply_defense
from ...files import atomic_write
from ..spec import EvaluateSpec
from .batching import predict
from .engine import Engine
from .plan import CLEAN, ImageSet, attack_setting_of


def save_examples(engine: Engine, ev: EvaluateSpec, classes: list[str], path: Path) -> None:
    """A few images as the notebooks showed them: original, adversarial, each defense, predictions."""
    k = min(ev.examples, len(engine.images))
    eps = max(ev.eps)
    attack = ev.attacks[0]
    cands, _ = engine.adversarial(ImageSet("fp32", attack.name, attack_setting_of(attack), eps) if eps > 0 else CLEAN)
    adv = cands[:k, 0]          # the first candidate (PGD: its first restart's final iterate)
    model, dev = engine.models["fp32"], engine.devices["fp32"]
    panels = {"original": to_8bit_grid(engine.images[:k]), attack.name: adv}    # the plot adds eps as tables say it
    for name, params in ev.defenses.items():
        if name != "none":      # a randomized defense: the defender's first draw for each image
            panels[name] = apply_defense(name, adv, params, ev.defense_backend, engine.index[:k])
    titles = list(panels)
    stack = torch.stack([panels[t].cpu() for t in titles])                # (panels, k, 3, H, W), off the GPU
    preds = torch.stack([predict(model, panels[t], dev, k) for t in titles])
    with atomic_write(path) as f:
        np.savez(f, images=(stack * 255).round().to(torch.uint8).numpy(), preds=preds.numpy(),
                 labels=engine.labels[:k].numpy(), titles=np.array(titles), classes=np.array(classes),
                 eps=np.array(eps), norm=np.array(attack.norm))
