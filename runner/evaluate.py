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

from attacks import get_attack, gradient_step, input_gradient, to_8bit_grid
from defenses import apply_defense, get_defense
from models import QUANT_MODES, load_checkpoint, quantize, state_dict_bytes

from .data import load_splits, to_float
from .spec import EvaluateSpec
from .device import clock, fp32_precision, ieee_fp32, pick_device
from .stats import wilson_interval

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


def _to_model(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    # channels_last: the CPU convolutions and pools run ~2.5x faster on 32x32 images, CUDA's too
    return x.to(device).contiguous(memory_format=torch.channels_last)


def _predict(model: nn.Module, images: torch.Tensor, device: torch.device, batch_size: int) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            out.append(model(_to_model(images[i:i + batch_size], device)).argmax(1).cpu())
    return torch.cat(out)


def _over_batches(fn: Callable, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                  device: torch.device, batch_size: int) -> torch.Tensor:
    """fn(model, images, labels) batch by batch on `device`; results gathered where the images live.
    Attacks and gradients share these batches, so a step from a gradient is bit-identical."""
    out = []
    for i in range(0, len(images), batch_size):
        xb, yb = _to_model(images[i:i + batch_size], device), labels[i:i + batch_size].to(device)
        out.append(fn(model, xb, yb).to(images.device))
    return torch.cat(out).contiguous()


def _attack(model: nn.Module, attack: str, images: torch.Tensor, labels: torch.Tensor, eps: float,
            device: torch.device, batch_size: int) -> torch.Tensor:
    fn = get_attack(attack)
    return _over_batches(lambda m, x, y: to_8bit_grid(fn(m, x, y, eps)), model, images, labels, device, batch_size)


def _defend(name: str, params: dict, images: torch.Tensor, backend: str, batch_size: int) -> torch.Tensor:
    return torch.cat([apply_defense(name, images[i:i + batch_size], params, backend)
                      for i in range(0, len(images), batch_size)])


@dataclass
class Models:
    """The models of one checkpoint under evaluation, one per quant mode, where each runs."""
    models: dict[str, nn.Module]
    devices: dict[str, torch.device]
    sizes: dict[str, int]

    @classmethod
    def build(cls, fp32: nn.Module, quants: Iterable[str], device: torch.device) -> "Models":
        fp32 = fp32.to(device, memory_format=torch.channels_last).eval()
        models, devices = {"fp32": fp32}, {"fp32": device}
        for q in quants:
            mode = QUANT_MODES[q]
            if mode.needs_cuda and device.type != "cuda":
                raise RuntimeError(f"evaluate.quant: {q} needs a CUDA device (running on {device})")
            models[q] = quantize(fp32, q)   # a converted copy; int8 lands on the CPU
            devices[q] = torch.device("cpu") if mode.cpu_only else device
        return cls(models, devices, {q: state_dict_bytes(m) for q, m in models.items()})

    def precision(self, quant: str) -> str:
        """The arithmetic behind a quant mode's predictions (fp32 on a GPU: IEEE unless TF32 is on)."""
        return QUANT_MODES[quant].precision or fp32_precision(self.devices[quant])


def image_key(c: Cell) -> tuple:
    """Which images a cell is scored on: the clean ones at eps 0, else (source model, attack, eps)."""
    if c.eps == 0:
        return ("clean",)
    return (c.quant if c.attack_source == "self" else "fp32", c.attack, c.eps)


class Engine:
    """One checkpoint's evaluation: every image set made once, every defended set made once.

    Adversarial images are cached per (source model, attack, eps); within one such set each
    defense runs once and its output is scored by every model that set is shown to (the FP32
    model white-box, int8 by transfer); clean scores are kept for the attack-success rate.
    """

    def __init__(self, fp32: nn.Module, ev: EvaluateSpec, images: torch.Tensor, labels: torch.Tensor,
                 device: torch.device):
        # Images stay on the device (defenses run there); labels stay on the CPU, with the predictions.
        self.ev, self.images, self.labels, self.device = ev, images.to(device), labels.cpu(), device
        self.built = Models.build(fp32, ev.quant, device)
        self.models, self.devices, self.sizes = self.built.models, self.built.devices, self.built.sizes
        self.precision = self.built.precision
        self._adv: dict[tuple, tuple[torch.Tensor, float]] = {}
        self._grad: dict[str, torch.Tensor] = {}   # source model -> input gradients
        self._correct: dict[tuple, torch.Tensor] = {}    # (quant, image key, defense, params) -> right or not

    def adversarial(self, key: tuple) -> tuple[torch.Tensor, float]:
        """Images for image_key (made once) and the seconds it took to make them."""
        if key not in self._adv:
            t0 = clock(self.device)
            if key == ("clean",):
                adv = to_8bit_grid(self.images)
            else:
                source, attack, eps = key
                adv = self._make_adversarial(source, attack, eps)
            # Keep the clean and the FP32-made images (shared by every model they transfer to);
            # a quant mode's own white-box images serve only its own cells.
            seconds = clock(self.device, *self.devices.values()) - t0
            self._adv = {k: v for k, v in self._adv.items() if k[0] in ("clean", "fp32")} | {key: (adv, seconds)}
        return self._adv[key]

    def _make_adversarial(self, source: str, attack: str, eps: float) -> torch.Tensor:
        model, dev, bs = self.models[source], self.devices[source], self.ev.batch_size
        step = gradient_step(attack)
        if step is None:
            return _attack(model, attack, self.images, self.labels, eps, dev, bs)
        if source not in self._grad:      # single-step attack: one gradient serves every eps
            self._grad = {source: _over_batches(input_gradient, model, self.images, self.labels, dev, bs)}
        return to_8bit_grid(step(self.images, self._grad[source], eps))

    def import_adversarials(self, adversarials: dict[tuple[str, float], torch.Tensor]) -> None:
        """FP32-made images from another task (a GPU task hands them to the int8 CPU tasks)."""
        for (attack, eps), images in adversarials.items():
            self._adv[("fp32", attack, eps)] = (images.to(self.device, torch.float32) / 255, 0.0)

    def export_adversarials(self, which: Iterable[tuple[str, float]]) -> dict[tuple[str, float], torch.Tensor]:
        """FP32-made images {(attack, eps): uint8} for other tasks; exact, as they lie on the 8-bit grid."""
        return {(attack, eps): torch.round(self.adversarial(("fp32", attack, eps))[0] * 255).to(torch.uint8).cpu()
                for attack, eps in which}

    def defend(self, images: torch.Tensor, defense: str, params_json: str) -> torch.Tensor:
        return _defend(defense, json.loads(params_json), images, self.ev.defense_backend, self.ev.batch_size)

    def correct(self, quant: str, key: tuple, defense: str, params_json: str,
                defended: torch.Tensor | None = None) -> torch.Tensor:
        """Which images `quant` gets right of image set `key` under a defense, computed once (the clean
        scores serve every attack-success rate; int8 'self' and 'fp32' at eps 0 are one image set)."""
        memo = (quant, key, defense, params_json)
        if memo not in self._correct:
            if defended is None:
                defended = self.defend(self.adversarial(key)[0], defense, params_json)
            preds = _predict(self.models[quant], defended, self.devices[quant], self.ev.batch_size)
            self._correct[memo] = preds == self.labels
        return self._correct[memo]


def run_cells(engine: Engine, cells: list[Cell], meta: dict[str, Any],
              on_rows: Callable[[list[dict]], None] | None = None, progress: Callable[[int], None] | None = None) -> list[dict]:
    """Compute cells grouped by their images, then by defense; hand rows over one image set at a time."""
    with ieee_fp32():     # "fp32" cells are IEEE fp32 on a GPU too
        return _run_cells(engine, cells, meta, on_rows, progress)


def _run_cells(engine: Engine, cells: list[Cell], meta: dict[str, Any], on_rows, progress) -> list[dict]:
    groups: dict[tuple, dict[tuple, list[Cell]]] = {}
    for c in sorted(cells, key=lambda c: c.eps):          # clean first: its scores serve the success rates
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
                                     engine.sizes[c.quant], engine.devices[c.quant], engine.ev.seed,
                                     engine.precision(c.quant)))
        all_rows += rows
        if on_rows:
            on_rows(rows)
        if progress:
            progress(len(rows))
    return all_rows


def make_row(c: Cell, ok: torch.Tensor, clean_ok: torch.Tensor, seconds: float, meta: dict,
             model_bytes: int, device: torch.device, seed: int, precision: str) -> dict:
    n, correct = len(ok), int(ok.sum())
    lo, hi = wilson_interval(correct, n)
    base = int(clean_ok.sum())
    flipped = int((clean_ok & ~ok).sum())
    return {
        **{k: meta[k] for k in ("sweep", "run_id", "trial_id", "model", "dataset")},
        "quant": c.quant, "model_bytes": model_bytes, "attack": c.attack, "attack_source": c.attack_source,
        "eps": c.eps, "defense": c.defense, "defense_params": c.defense_params, "n": n, "correct": correct,
        "accuracy": correct / n, "ci_low": lo, "ci_high": hi,
        "attack_success_rate": flipped / base if base else float("nan"),
        "seconds": seconds, "device": str(device), "precision": precision, "seed": seed,
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


def _plan(task: dict[str, Any], done: Iterable[tuple]):
    ev = EvaluateSpec.model_validate(task["evaluate"])
    if task.get("threads"):
        torch.set_num_threads(int(task["threads"]))
    torch.manual_seed(ev.seed)
    images, labels, classes = test_images(task, ev.n_images)
    done = set(done)
    cells = [c for c in plan_cells(ev) if c.key(task["trial_id"], len(images), ev.seed) not in done]
    return ev, images, labels, classes, cells


def evaluate_checkpoint(task: dict[str, Any], done: Iterable[tuple] = (),
                        on_rows: Callable[[list[dict]], None] | None = None,
                        progress: Callable[[int], None] | None = None,
                        adversarials: dict | None = None) -> list[dict]:
    """Evaluate one checkpoint over the grid in task['evaluate'], skipping cells in `done`.

    task: {checkpoint, trial_id, sweep, run_id, model, dataset, data: {...}, evaluate: {...},
           threads?, examples_path?}
    adversarials: FP32-made images {(attack, eps): uint8} made elsewhere (make_adversarials),
    used instead of making them again.
    """
    ev, images, labels, classes, cells = _plan(task, done)
    if not cells:
        return []
    engine = Engine(load_checkpoint(task["checkpoint"]), ev, images, labels, pick_device(ev.device))
    if adversarials:
        engine.import_adversarials(adversarials)
    rows = run_cells(engine, cells, task, on_rows, progress)
    if task.get("examples_path") and ev.examples and "fp32" in engine.models:
        with ieee_fp32():
            save_examples(engine, ev, classes, Path(task["examples_path"]))
    return rows


def make_adversarials(task: dict[str, Any], done: Iterable[tuple] = ()) -> dict[tuple[str, float], torch.Tensor]:
    """The FP32-made adversarial images {(attack, eps): uint8} of the cells still to do, for other
    tasks to share (an attack task on the GPU feeds the int8 CPU tasks and the GPU cells task)."""
    ev, images, labels, _, cells = _plan(task, done)
    wanted = {(c.attack, c.eps) for c in cells if image_key(c)[0] == "fp32"}
    if not wanted:
        return {}
    engine = Engine(load_checkpoint(task["checkpoint"]), ev.model_copy(update={"quant": ["fp32"]}), images, labels,
                    pick_device(ev.device))
    with ieee_fp32():
        return engine.export_adversarials(sorted(wanted))


def count_cells(ev: EvaluateSpec) -> int:
    return len(plan_cells(ev))


def save_examples(engine: Engine, ev: EvaluateSpec, classes: list[str], path: Path) -> None:
    """A few images as the notebooks showed them: original, adversarial, each defense, predictions."""
    k = min(ev.examples, len(engine.images))
    eps = max(ev.eps)
    attack = ev.attacks[0]
    adv, _ = engine.adversarial(("fp32", attack, eps) if eps > 0 else ("clean",))
    model, dev = engine.models["fp32"], engine.devices["fp32"]
    panels = {"original": to_8bit_grid(engine.images[:k]), f"{attack} eps={eps:.4f}": adv[:k]}
    for name, params in ev.defenses.items():
        if name != "none":
            panels[name] = apply_defense(name, adv[:k], params, ev.defense_backend)
    titles = list(panels)
    stack = torch.stack([panels[t].cpu() for t in titles])                # (panels, k, 3, H, W), off the GPU
    preds = torch.stack([_predict(model, panels[t], dev, k) for t in titles])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, images=(stack * 255).round().to(torch.uint8).numpy(), preds=preds.numpy(),
             labels=engine.labels[:k].numpy(), titles=np.array(titles), classes=np.array(classes))
    tmp.replace(path)
