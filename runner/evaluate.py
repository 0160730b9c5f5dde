"""The evaluation engine: one checkpoint's grid of cells, a plain function of a task dict.

    cell = (quant, attack, attack_source, eps, defense)

Adversarial images are made once per (source model, attack, eps), rounded to the 8-bit
grid once (what an attacker delivers as a file), and reused for every defense and every
model they are transferred to. A Ray task calls `evaluate_checkpoint(task)` unchanged.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn as nn

from attacks import get_attack, to_8bit_grid
from defenses import apply_defense, get_defense
from models import QUANT_MODES, load_checkpoint, quantize, state_dict_bytes

from .data import load_splits, to_float
from .spec import EvaluateSpec
from .stats import wilson_interval
from .train import pick_device

CODE_VERSION = "0.1.0"


@dataclass(frozen=True)
class Cell:
    quant: str
    attack: str
    attack_source: str
    eps: float
    defense: str
    defense_params: str  # canonical JSON of the defense's full parameters

    def key(self, trial_id: str, n: int, seed: int) -> tuple:
        return (trial_id, self.quant, self.attack, self.attack_source, round(self.eps, 10), self.defense,
                self.defense_params, n, seed)


def defense_params_json(name: str, overrides: dict[str, Any]) -> str:
    return json.dumps({**get_defense(name).defaults, **overrides}, sort_keys=True)


def plan_cells(ev: EvaluateSpec) -> list[Cell]:
    """Every meaningful cell of the grid.

    - int8 has no input gradient in torch: no white-box ('self') row for eps > 0, never faked;
    - on the fp32 model, source 'fp32' is the white-box row itself: recorded once, as 'self'.
    """
    cells = []
    for attack in ev.attacks:
        for eps in ev.eps:
            for source in ev.sources:
                for quant in ev.quant:
                    if source == "self" and eps > 0 and not QUANT_MODES[quant].has_input_grad:
                        continue
                    if source == "fp32" and quant == "fp32":
                        continue
                    for name, params in ev.defenses.items():
                        cells.append(Cell(quant, attack, source, float(eps), name, defense_params_json(name, params)))
    return cells


def _predict(model: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            out.append(model(images[i:i + batch_size].to(device)).argmax(1).cpu())
    return torch.cat(out)


def _attack(model: nn.Module, attack: str, images: torch.Tensor, labels: torch.Tensor, eps: float,
            device: torch.device, batch_size: int) -> torch.Tensor:
    fn = get_attack(attack)
    out = []
    for i in range(0, len(images), batch_size):
        xb, yb = images[i:i + batch_size].to(device), labels[i:i + batch_size].to(device)
        out.append(to_8bit_grid(fn(model, xb, yb, eps)).cpu())
    return torch.cat(out)


def _defend(name: str, params: dict, images: torch.Tensor, backend: str, batch_size: int) -> torch.Tensor:
    return torch.cat([apply_defense(name, images[i:i + batch_size], params, backend)
                      for i in range(0, len(images), batch_size)])


class Engine:
    """Holds the models and the caches of one checkpoint's evaluation."""

    def __init__(self, fp32: nn.Module, ev: EvaluateSpec, images: torch.Tensor, labels: torch.Tensor,
                 device: torch.device):
        self.ev, self.images, self.labels, self.device = ev, images, labels, device
        fp32 = fp32.to(device).eval()
        self.models: dict[str, nn.Module] = {}
        self.devices: dict[str, torch.device] = {}
        for q in ev.quant:
            mode = QUANT_MODES[q]
            if mode.needs_cuda and device.type != "cuda":
                raise RuntimeError(f"evaluate.quant: {q} needs a CUDA device (running on {device})")
            qdev = torch.device("cpu") if mode.cpu_only else device
            self.models[q] = quantize(fp32, q)   # a converted copy; int8 lands on the CPU
            self.devices[q] = qdev
        self.models.setdefault("fp32", fp32.to(device))
        self.devices.setdefault("fp32", device)
        self.sizes = {q: state_dict_bytes(m) for q, m in self.models.items()}
        self._adv: dict[tuple, tuple[torch.Tensor, float]] = {}
        self._clean: dict[tuple, torch.Tensor] = {}

    def adversarial(self, source_quant: str, attack: str, eps: float) -> tuple[torch.Tensor, float]:
        """Images for (source model, attack, eps), made once; eps 0 is the clean 8-bit image."""
        key = ("clean",) if eps == 0 else (source_quant, attack, eps)
        if key not in self._adv:
            t0 = time.perf_counter()
            if eps == 0:
                adv = to_8bit_grid(self.images)
            else:
                model = self.models[source_quant]
                adv = _attack(model, attack, self.images, self.labels, eps, self.devices[source_quant], self.ev.batch_size)
            # Keep the clean and the FP32-made images (shared by every model they transfer to);
            # a quant mode's own white-box images serve only its own cells.
            self._adv = {k: v for k, v in self._adv.items() if k[0] in ("clean", "fp32")} | {key: (adv, time.perf_counter() - t0)}
        return self._adv[key]

    def import_adversarials(self, adversarials: dict[tuple[str, float], torch.Tensor]) -> None:
        """FP32-made images from another task (a GPU task hands them to the int8 CPU task)."""
        for (attack, eps), images in adversarials.items():
            self._adv[("fp32", attack, eps)] = (images.to(torch.float32) / 255, 0.0)

    def export_adversarials(self) -> dict[tuple[str, float], torch.Tensor]:
        out = {}
        for attack in self.ev.attacks:
            for eps in self.ev.eps:
                if eps > 0:
                    adv, _ = self.adversarial("fp32", attack, eps)
                    out[(attack, eps)] = torch.round(adv * 255).to(torch.uint8)  # exact: adv is on the 8-bit grid
        return out

    def correct(self, quant: str, images: torch.Tensor, defense: str, params: dict) -> tuple[torch.Tensor, torch.Tensor]:
        defended = _defend(defense, params, images, self.ev.defense_backend, self.ev.batch_size)
        preds = _predict(self.models[quant], defended, self.devices[quant], self.ev.batch_size)
        return preds == self.labels, preds

    def clean_correct(self, quant: str, defense: str, params_json: str) -> torch.Tensor:
        key = (quant, defense, params_json)
        if key not in self._clean:
            clean, _ = self.adversarial("fp32", "none", 0.0)
            self._clean[key] = self.correct(quant, clean, defense, json.loads(params_json))[0]
        return self._clean[key]


def run_cells(engine: Engine, cells: list[Cell], meta: dict[str, Any],
              on_rows: Callable[[list[dict]], None] | None = None, progress: Callable[[int], None] | None = None) -> list[dict]:
    """Compute cells grouped by their adversarial images; hand rows over one group at a time."""
    groups: dict[tuple, list[Cell]] = {}
    for c in cells:
        source_model = c.quant if c.attack_source == "self" else "fp32"
        groups.setdefault((source_model, c.attack, c.eps), []).append(c)
    all_rows = []
    for (source_model, attack, eps), group in groups.items():
        adv, attack_seconds = engine.adversarial(source_model, attack, eps)
        rows = []
        for c in group:
            t0 = time.perf_counter()
            ok, _ = engine.correct(c.quant, adv, c.defense, json.loads(c.defense_params))
            seconds = time.perf_counter() - t0 + attack_seconds / len(group)
            clean_ok = engine.clean_correct(c.quant, c.defense, c.defense_params) if eps > 0 else ok
            rows.append(make_row(c, ok, clean_ok, seconds, engine, meta))
        all_rows += rows
        if on_rows:
            on_rows(rows)
        if progress:
            progress(len(group))
    return all_rows


def make_row(c: Cell, ok: torch.Tensor, clean_ok: torch.Tensor, seconds: float, engine: Engine, meta: dict) -> dict:
    n, correct = len(ok), int(ok.sum())
    lo, hi = wilson_interval(correct, n)
    base = int(clean_ok.sum())
    flipped = int((clean_ok & ~ok).sum())
    return {
        **{k: meta[k] for k in ("sweep", "run_id", "trial_id", "model", "dataset")},
        "quant": c.quant, "model_bytes": engine.sizes[c.quant], "attack": c.attack, "attack_source": c.attack_source,
        "eps": c.eps, "defense": c.defense, "defense_params": c.defense_params, "n": n, "correct": correct,
        "accuracy": correct / n, "ci_low": lo, "ci_high": hi,
        "attack_success_rate": flipped / base if base else float("nan"),
        "seconds": seconds, "device": str(engine.devices[c.quant]), "seed": engine.ev.seed,
        "created_at": datetime.now(timezone.utc), "code_version": CODE_VERSION, "torch_version": torch.__version__,
    }


def test_images(task: dict[str, Any], n_images: int | None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    d = task["data"]
    splits = load_splits(d["dataset"], d.get("root"), d.get("path"), d.get("val_size", 5000), d.get("split_seed", 0),
                         None, (d.get("synthetic_train", 2000), d.get("synthetic_test", 500)))
    x, y = splits.test_x, splits.test_y
    if n_images:
        x, y = x[:n_images], y[:n_images]  # the first N test images: the same subset everywhere
    return to_float(x), y, splits.classes


def evaluate_checkpoint(task: dict[str, Any], done: Iterable[tuple] = (),
                        on_rows: Callable[[list[dict]], None] | None = None,
                        progress: Callable[[int], None] | None = None,
                        adversarials: dict | None = None, export_adversarials: dict | None = None) -> list[dict]:
    """Evaluate one checkpoint over the grid in task['evaluate'], skipping cells in `done`.

    task: {checkpoint, trial_id, sweep, run_id, model, dataset, data: {...}, evaluate: {...},
           threads?, examples_path?}
    adversarials: FP32-made images {(attack, eps): uint8} made elsewhere, used instead of making them;
    export_adversarials: a dict to fill with this task's FP32-made images for another task.
    """
    ev = EvaluateSpec.model_validate(task["evaluate"])
    if task.get("threads"):
        torch.set_num_threads(int(task["threads"]))
    torch.manual_seed(ev.seed)
    images, labels, classes = test_images(task, ev.n_images)
    done = set(done)
    cells = [c for c in plan_cells(ev) if c.key(task["trial_id"], len(images), ev.seed) not in done]
    if not cells and export_adversarials is None:
        return []
    device = pick_device(ev.device)
    engine = Engine(load_checkpoint(task["checkpoint"]), ev, images, labels, device)
    if adversarials:
        engine.import_adversarials(adversarials)
    rows = run_cells(engine, cells, task, on_rows, progress)
    if export_adversarials is not None:
        export_adversarials.update(engine.export_adversarials())
    if task.get("examples_path") and ev.examples and "fp32" in engine.models:
        save_examples(engine, ev, classes, Path(task["examples_path"]))
    return rows


def count_cells(ev: EvaluateSpec) -> int:
    return len(plan_cells(ev))


def save_examples(engine: Engine, ev: EvaluateSpec, classes: list[str], path: Path) -> None:
    """A few images as the notebooks showed them: original, adversarial, each defense, predictions."""
    k = min(ev.examples, len(engine.images))
    eps = max(ev.eps)
    attack = ev.attacks[0]
    adv, _ = engine.adversarial("fp32", attack, eps) if eps > 0 else engine.adversarial("fp32", attack, 0.0)
    model, dev = engine.models["fp32"], engine.devices["fp32"]
    panels = {"original": to_8bit_grid(engine.images[:k]), f"{attack} eps={eps:.4f}": adv[:k]}
    for name, params in ev.defenses.items():
        if name != "none":
            panels[name] = apply_defense(name, adv[:k], params, ev.defense_backend)
    titles = list(panels)
    stack = torch.stack([panels[t] for t in titles])                      # (panels, k, 3, H, W)
    preds = torch.stack([_predict(model, panels[t], dev, k) for t in titles])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, images=(stack * 255).round().to(torch.uint8).numpy(), preds=preds.numpy(),
             labels=engine.labels[:k].numpy(), titles=np.array(titles), classes=np.array(classes))
    tmp.replace(path)
