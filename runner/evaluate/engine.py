"""The evaluation engine: one checkpoint's grid of cells, every image set and defended set made once.

    cell = (quant, attack, attack_source, eps, defense)

Adversarial images are made once per (source model, attack, eps), rounded to the 8-bit
grid once (what an attacker delivers as a file), and reused for every defense and every
model they are transferred to.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn

from ...attacks import gradient_step, input_gradient, input_gradients_only, random_starts, to_8bit_grid
from ...defenses import defend_differentiably, is_randomized
from ...models import fake_quant_twin, quant_mode, quantize, shipped_bytes
from ..device import clock, fp32_precision, ieee_fp32
from ..provenance import images_digest
from ..spec import EvaluateSpec
from .batching import attack_images, defend_images, over_batches, predict
from .plan import Cell, attack_setting, image_key, parse_params
from .rows import make_row


@dataclass
class Models:
    """The models of one checkpoint under evaluation, one per quant mode, where each runs, what each
    weighs as shipped, and the fake-quant twins white-box attacks on the int8 modes differentiate."""
    models: dict[str, nn.Module]
    devices: dict[str, torch.device]
    sizes: dict[str, int]
    twins: dict[str, nn.Module]

    @classmethod
    def build(cls, fp32: nn.Module, quants: Iterable[str], device: torch.device,
              calibration: torch.Tensor | None = None) -> "Models":
        fp32 = fp32.to(device, memory_format=torch.channels_last).eval()
        models, devices, twins = {"fp32": fp32}, {"fp32": device}, {}
        for q in quants:
            mode = quant_mode(q)
            if mode.needs_cuda and device.type != "cuda":
                raise RuntimeError(f"evaluate.quant: {q} needs a CUDA device (running on {device})")
            models[q] = quantize(fp32, q, calibration)   # a converted copy; int8 lands on the CPU
            devices[q] = torch.device("cpu") if mode.cpu_only else device
            if not mode.has_input_grad and mode.twin is not None:
                twins[q] = fake_quant_twin(fp32, models[q], q).to(devices[q])
        return cls(models, devices, {q: shipped_bytes(m) for q, m in models.items()}, twins)

    def attacker(self, source: str) -> nn.Module:
        """The model an attacker differentiates for `source`: itself, or its fake-quant twin (STE)."""
        return self.twins.get(source, self.models[source])

    def precision(self, quant: str) -> str:
        """The arithmetic behind a quant mode's predictions (fp32 on a GPU: IEEE unless TF32 is on)."""
        return quant_mode(quant).precision or fp32_precision(self.devices[quant])


class Engine:
    """One checkpoint's evaluation: every image set made once, every defended set made once.

    Adversarial images are cached per (source model, attack, eps); within one such set each
    defense runs once and its output is scored by every model that set is shown to (the FP32
    model white-box, int8 by transfer); clean scores are kept for the attack-success rate.
    """

    def __init__(self, fp32: nn.Module, ev: EvaluateSpec, images: torch.Tensor, labels: torch.Tensor,
                 device: torch.device, calibration: torch.Tensor | None = None):
        # Images stay on the device (defenses run there); labels stay on the CPU, with the predictions.
        self.ev, self.images, self.labels, self.device = ev, images.to(device), labels.cpu(), device
        self.data_digest = images_digest(images, labels)       # which test images every row saw
        self.built = Models.build(fp32, ev.quant, device, calibration)
        self.models, self.devices, self.sizes = self.built.models, self.built.devices, self.built.sizes
        self.precision = self.built.precision
        self._adv: dict[tuple, tuple[torch.Tensor, float]] = {}
        self._grad: dict[tuple, tuple] = {}   # (source model[, adaptive defense]) -> (input gradients, dead images)
        self._unit_starts: torch.Tensor | None = None
        self.dead_gradients: dict[tuple, int] = {}   # image key -> images whose input gradient was all 0 / NaN
        self._correct: dict[tuple, torch.Tensor] = {}    # (quant, image key, defense, params) -> right or not

    def adversarial(self, key: tuple) -> tuple[torch.Tensor, float]:
        """Images for image_key (made once) and the seconds it took to make them."""
        if key not in self._adv:
            t0 = clock(self.device)
            adv = to_8bit_grid(self.images) if key == ("clean",) else self._make_adversarial(key)
            seconds = clock(self.device, *self.devices.values()) - t0
            # Keep the clean and the FP32-made oblivious images (shared by every defense and every model
            # they transfer to); a quant mode's white-box images and an adaptive set serve one group of cells.
            self._adv = {k: v for k, v in self._adv.items() if _shared(k)} | {key: (adv, seconds)}
        return self._adv[key]

    def _make_adversarial(self, key: tuple) -> torch.Tensor:
        with input_gradients_only(self.built.attacker(key[0])) as model:
            return self._attack(key, model)

    def _attack(self, key: tuple, model: nn.Module) -> torch.Tensor:
        source, attack, params_json, eps = key[:4]
        params, eot_samples = split_attack_params(params_json)
        dev, bs = self.devices[source], self.ev.batch_size
        if len(key) > 4:          # adaptive: the attacker differentiates model o defense (BPDA, EOT)
            model = ThroughDefense(model, key[5], json.loads(key[6]), self.ev.defense_backend, eot_samples)
        step = gradient_step(attack)
        if step is None:
            starts = self._starts(params, eps)
            return attack_images(model, attack, self.images, self.labels, eps, dev, bs, params, starts)
        grad_key = (source,) + key[4:]
        if grad_key not in self._grad:      # single-step attack: one gradient serves every eps
            grad = over_batches(input_gradient, model, self.images, self.labels, dev, bs)
            dead = ~(torch.isfinite(grad) & (grad != 0)).flatten(1).any(1)   # no usable gradient at all
            self._grad = {grad_key: (grad, int(dead.sum()))}
        grad, self.dead_gradients[key] = self._grad[grad_key]
        return to_8bit_grid(step(self.images, grad, eps))

    def _starts(self, params: dict, eps: float) -> torch.Tensor | None:
        """Random starts per image for the whole set (the same on any batch size), shared by every
        source, defense and eps (scaled by eps); None for attacks that take none."""
        if not params.get("random_start"):
            return None
        restarts = int(params.get("restarts", 1))
        if self._unit_starts is None or self._unit_starts.shape[1] != restarts:
            self._unit_starts = random_starts(len(self.images), tuple(self.images.shape[1:]), restarts,
                                              self.ev.seed).to(self.device)
        return eps * self._unit_starts

    def import_adversarials(self, adversarials: dict[tuple, torch.Tensor]) -> None:
        """FP32-made images from another task (a GPU task hands them to the int8 CPU tasks)."""
        for key, images in adversarials.items():
            self._adv[key] = (images.to(self.device, torch.float32) / 255, 0.0)

    def export_adversarials(self, keys: Iterable[tuple]) -> dict[tuple, torch.Tensor]:
        """FP32-made images {image key: uint8} for other tasks; exact, as they lie on the 8-bit grid."""
        return {key: torch.round(self.adversarial(key)[0] * 255).to(torch.uint8).cpu() for key in keys}

    def defend(self, images: torch.Tensor, defense: str, params_json: str) -> torch.Tensor:
        return defend_images(defense, json.loads(params_json), images, self.ev.defense_backend, self.ev.batch_size)

    def correct(self, quant: str, key: tuple, defense: str, params_json: str,
                defended: torch.Tensor | None = None) -> torch.Tensor:
        """Which images `quant` gets right of image set `key` under a defense, computed once (the clean
        scores serve every attack-success rate; int8 'self' and 'fp32' at eps 0 are one image set)."""
        memo = (quant, key, defense, params_json)
        if memo not in self._correct:
            if defended is None:
                defended = self.defend(self.adversarial(key)[0], defense, params_json)
            preds = predict(self.models[quant], defended, self.devices[quant], self.ev.batch_size)
            self._correct[memo] = preds == self.labels
        return self._correct[memo]


def _shared(key: tuple) -> bool:
    return key == ("clean",) or (key[0] == "fp32" and len(key) == 4)


def _order(c: Cell) -> tuple:
    """Clean first (its scores serve the success rates); then per (source, attack, threat, defense)
    every eps in a row, so one single-step gradient (per defense, adaptive) serves them all."""
    k = image_key(c)
    return (c.eps > 0, k[:3], k[4:], c.eps)


class ThroughDefense(nn.Module):
    """model o defense for an adaptive attacker: the real defense forward, its declared gradient backward.
    Through a randomized defense the attacker averages its gradient over draws 1..eot_samples of the
    defense's randomness (EOT; input_gradient reads `eot_draws`); draw 0 is the defender's, used to score."""

    def __init__(self, model: nn.Module, defense: str, params: dict, backend: str, eot_samples: int = 1):
        super().__init__()
        self.model, self.defense, self.params, self.backend = model, defense, params, backend
        self.randomized = is_randomized(defense)
        self.eot_draws = list(range(1, eot_samples + 1)) if self.randomized else None
        self.draw = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = {**self.params, "draw": self.draw} if self.randomized else self.params
        return self.model(defend_differentiably(self.defense, x, params, self.backend))


def split_attack_params(params_json: str) -> tuple[dict, int]:
    """(the attack's own parameters, EOT samples) of a cell's attack_params."""
    return attack_setting(params_json), int(parse_params(params_json).get("eot_samples", 1))


def run_cells(engine: Engine, cells: list[Cell], meta: dict[str, Any],
              on_rows: Callable[[list[dict]], None] | None = None, progress: Callable[[int], None] | None = None) -> list[dict]:
    """Compute cells grouped by their images, then by defense; hand rows over one image set at a time."""
    with ieee_fp32():     # "fp32" cells are IEEE fp32 on a GPU too
        return _run_cells(engine, cells, meta, on_rows, progress)


def _run_cells(engine: Engine, cells: list[Cell], meta: dict[str, Any], on_rows, progress) -> list[dict]:
    groups: dict[tuple, dict[tuple, list[Cell]]] = {}
    for c in sorted(cells, key=_order):
        groups.setdefault(image_key(c), {}).setdefault((c.defense, c.defense_params), []).append(c)
    all_rows = []
    for key, by_defense in groups.items():
        adv, attack_seconds = engine.adversarial(key)
        n_cells = sum(len(g) for g in by_defense.values())
        rows = []
        for (defense, params), group in by_defense.items():
            t0 = clock(engine.device)
            defended = engine.defend(adv, defense, params)
            shared = (clock(engine.device) - t0) / len(group) + attack_seconds / n_cells
            for c in group:
                t1 = clock(engine.device)
                ok = engine.correct(c.quant, key, defense, params, defended)
                clean_ok = engine.correct(c.quant, ("clean",), defense, params)
                # predictions come back to the CPU (.cpu() waits for the device): the clock is honest
                rows.append(make_row(c, ok, clean_ok, time.perf_counter() - t1 + shared, meta,
                                     model_bytes=engine.sizes[c.quant], device=engine.devices[c.quant],
                                     precision=engine.precision(c.quant), seed=engine.ev.seed,
                                     data_digest=engine.data_digest, dead_gradients=engine.dead_gradients.get(key)))
        all_rows += rows
        if on_rows:
            on_rows(rows)
        if progress:
            progress(len(rows))
    return all_rows
