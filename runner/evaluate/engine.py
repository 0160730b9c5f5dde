"""The evaluation engine: one checkpoint's grid of cells, every image set and defended set made once.

    cell = (quant, attack, attack_source, eps, defense)

Adversarial images are made once per (source model, attack, eps), delivered on the 8-bit grid
inside their eps-ball once (what an attacker delivers as a file), and reused for every defense
and every model they are transferred to. An image set holds candidates per image (an attack's
restarts, final and best iterates); the attacker's model steered them, the scored system
judges them: an image is robust in a cell only if no candidate fools the real model of the
mode behind the real defense, under every one of the defender's draws.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...attacks import (
    attack_kind,
    deliver,
    draws_globally,
    gradient_step,
    input_gradient,
    input_gradients_only,
    norm_of,
    random_starts,
    seed_salt,
    start_streams,
    takes_image_keys,
    takes_judge,
    to_8bit_grid,
)
from ...attacks.judge import Judge
from ...defenses import defend_differentiably, is_randomized
from ...models import fake_quant_twin, quant_mode, quantize, shipped_bytes
from ...pixels import from_levels
from ...rng import hash_draws
from ..device import clock, fp32_precision, ieee_fp32
from ..provenance import images_digest
from ..spec import EvaluateSpec
from .batching import attack_images, defend_images, over_batches, predict, zoo_images
from .plan import CLEAN, Cell, ImageSet, image_key, plan_cells
from .rows import Verdict, delivered_distances, make_row
from .settings import DefenseSetting


@dataclass
class Models:
    """The models of one checkpoint under evaluation, one per quant mode, where each runs, what each
    weighs as shipped, and the fake-quant twins white-box attacks on the int8 modes differentiate.
    A mode the task does not score but whose cells judge its images (the judge) is built on first use."""
    models: dict[str, nn.Module]
    devices: dict[str, torch.device]
    sizes: dict[str, int]
    twins: dict[str, nn.Module]
    device: torch.device | None = None
    calibration: torch.Tensor | None = None

    @classmethod
    def build(cls, fp32: nn.Module, quants: Iterable[str], device: torch.device,
              calibration: torch.Tensor | None = None) -> Models:
        fp32 = fp32.to(device, memory_format=torch.channels_last).eval()
        built = cls({"fp32": fp32}, {"fp32": device}, {}, {}, device, calibration)
        for q in ("fp32", *quants):
            built.model(q)
        return built

    def model(self, q: str) -> nn.Module:
        """The model of quant mode q, converted from the fp32 one on first use (int8 lands on the CPU)."""
        if q not in self.models:
            mode = quant_mode(q)
            if mode.needs_cuda and self.device.type != "cuda":
                raise RuntimeError(f"evaluate.quant: {q} needs a CUDA device (running on {self.device})")
            fp32 = self.models["fp32"]
            self.models[q] = quantize(fp32, q, self.calibration)
            self.devices[q] = torch.device("cpu") if mode.cpu_only else self.device
            if not mode.has_input_grad and mode.twin is not None:
                self.twins[q] = fake_quant_twin(fp32, self.models[q], q).to(self.devices[q])
        self.sizes.setdefault(q, shipped_bytes(self.models[q]))
        return self.models[q]

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

    def __init__(self, fp32: nn.Module | None, ev: EvaluateSpec, images: torch.Tensor, labels: torch.Tensor,
                 device: torch.device, calibration: torch.Tensor | None = None, first_index: int = 0,
                 data_digest: str | None = None, built: Models | None = None, grid: EvaluateSpec | None = None):
        # Images stay on the device (defenses run there); labels stay on the CPU, with the predictions.
        self.ev, self.images, self.labels, self.device = ev, images.to(device), labels.cpu(), device
        # the whole grid, of which ev may be one task's share: the judge of an image set asks every cell of it
        self.grid = grid or ev
        # each image's place in the test split: the defender's draws come from it, never from pixels
        self.index = torch.arange(first_index, first_index + len(images))
        # which test images every row saw: a shard is handed the digest of its whole image set
        self.data_digest = data_digest or images_digest(images, labels)
        # built: the same checkpoint's models, already quantized, for another image set of it (corrupted images)
        self.built = built if built is not None else Models.build(fp32, ev.quant, device, calibration)
        self.models, self.devices, self.sizes = self.built.models, self.built.devices, self.built.sizes
        self.precision = self.built.precision
        self._adv: dict[ImageSet, tuple[torch.Tensor, float]] = {}
        self._grad: dict[tuple, torch.Tensor] = {}   # (source model[, adaptive defense]) -> clean input gradients
        self._dead: dict[tuple, int] = {}            # the same key -> images whose clean input gradient is dead
        self._start_memo, self._start_cache = None, None
        self.dead_gradients: dict[ImageSet, int] = {}   # image key -> images whose input gradient was all 0 / NaN
        self._verdicts: dict[tuple, Verdict] = {}    # (quant, image key, defense, params) -> the judgement
        self._facts: dict[ImageSet, tuple[torch.Tensor, tuple]] = {}   # image key -> (fresh candidates, distances)
        # image key -> {(defense, setting): quant modes} of every cell of the whole grid judging it
        self._judges: dict[ImageSet, dict] | None = None

    def adversarial(self, key: ImageSet) -> tuple[torch.Tensor, float]:
        """Candidates (N, K, C, H, W) for image_key (made once) and the seconds it took to make them."""
        if key not in self._adv:
            t0 = clock(self.device)
            adv = to_8bit_grid(self.images).unsqueeze(1) if key.is_clean else self._make_adversarial(key)
            seconds = clock(self.device, *self.devices.values()) - t0
            # Keep the clean and the FP32-made oblivious images (shared by every defense and every model
            # they transfer to); a quant mode's white-box images and an adaptive set serve one group of cells.
            self._adv = {k: v for k, v in self._adv.items() if k.shared} | {key: (adv, seconds)}
        return self._adv[key]

    def _make_adversarial(self, key: ImageSet) -> torch.Tensor:
        # the attacker differentiates the mode's twin (STE) where the mode has no gradient; black-box attacks and
        # an ensemble's black-box members query the scored model itself (attack_inputs says who gets which)
        gradient, scored = self.built.attacker(key.source), self.built.models[key.source]
        with input_gradients_only(gradient) as gradient, input_gradients_only(scored) as scored:
            return self._attack(key, gradient, scored)

    def _attack(self, key: ImageSet, gradient: nn.Module, scored: nn.Module) -> torch.Tensor:
        source, attack, eps = key.source, key.attack, key.eps
        params = copy.deepcopy(key.attack_setting.own)    # an attack may fill in its dict: not the key's
        dev, bs = self.devices[source], self.ev.batch_size
        zoo = draws_globally(attack)
        if key.adaptive:          # adaptive: the attacker differentiates (and queries) model o defense (BPDA, EOT)
            through = lambda m: ThroughDefense(m, key.defense, key.defense_setting.params, self.ev.defense_backend,
                                               key.attack_setting.eot_draws, fresh_per_call=zoo)
            wrapped = through(gradient)
            gradient, scored = wrapped, (wrapped if scored is gradient else through(scored))
        step = gradient_step(attack)
        grad_key = key.gradient_source
        if step is not None:      # single-step attack: one gradient serves every eps
            if grad_key not in self._grad:
                self._grad = {grad_key: self._clean_gradient(grad_key, gradient, dev, bs)}
            self.dead_gradients[key] = self._dead[grad_key]
            return deliver(step(self.images, self._grad[grad_key], eps), self.images, eps, norm_of(params)).unsqueeze(1)
        if attack_kind(attack) not in ("model-free", "black-box"):      # a gradient to follow: is it dead?
            if grad_key not in self._dead:      # no FGSM of this grid computed it already
                self._clean_gradient(grad_key, gradient, dev, bs)
            self.dead_gradients[key] = self._dead[grad_key]
            if zoo:
                return zoo_images(gradient, attack, self.images, self.labels, eps, dev, params, self.ev.seed,
                                  int(self.index[0]))
        judge = self.judge_of(key) if takes_judge(attack) else None
        return attack_images(gradient, scored, attack, self.images, self.labels, eps, dev, bs, params,
                             self._per_image(attack, params, eps), judge)

    def _clean_gradient(self, grad_key: tuple, model: nn.Module, dev: torch.device, bs: int) -> torch.Tensor:
        """The input gradient at the clean images, and (kept per source and defense) how many images have an
        all-zero or NaN one: there a multi-step attack has nothing to follow either."""
        grad = over_batches(input_gradient, model, self.images, self.labels, dev, bs)
        self._dead[grad_key] = int((~(torch.isfinite(grad) & (grad != 0)).flatten(1).any(1)).sum())
        return grad

    def judge_of(self, key: ImageSet) -> Judge:
        """The judge of image set `key` (attacks/judge.py): one cell per (defense, defender draw, quant mode) of every
        cell of the whole grid (not this task's share) scored on these images, each the real model of the mode
        behind the real defense. An attack asks it which images are still worth its work."""
        if self._judges is None:      # planned once per engine, not once per image set
            self._judges = {}
            for c in plan_cells(self.grid):
                self._judges.setdefault(image_key(c), {}).setdefault((c.defense, c.defense_setting), set()).add(c.quant)
        views = []
        for (defense, setting), quants in self._judges.get(key, {}).items():
            for d in range(setting.n_draws):
                views.append((self._defended_view(defense, setting.for_draw(d)),
                              [self._predictor(q) for q in sorted(quants)]))
        return Judge.of_cells(self.labels, key.eps, norm_of(key.attack_setting.own), views)

    def _defended_view(self, defense: str, params: dict) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        return lambda x, positions: self.defend(x.to(self.device), defense, params, self.index[positions])

    def _predictor(self, quant: str) -> Callable[[torch.Tensor], torch.Tensor]:
        model, device = self.built.model(quant), self.built.devices[quant]
        return lambda x: predict(model, x, device, self.ev.batch_size)

    def _per_image(self, attack: str, params: dict, eps: float) -> dict[str, torch.Tensor]:
        """What the attack draws per image, the same on any batch size or shard: its random starts (each image's
        place in the evaluation seed's streams) and, for attacks with draws of their own, each image's key."""
        out = {}
        streams = start_streams(attack, params)
        if streams is not None:
            out["starts"] = self._starts(attack, eps, *streams)
        if takes_image_keys(attack):
            out["image_keys"] = torch.from_numpy(hash_draws(self.index.numpy(), self.ev.seed ^ IMAGE_KEY_SALT).view("int64"))
        return out

    def _starts(self, attack: str, eps: float, streams: int, kind: str) -> torch.Tensor:
        """Random starts per image for the whole set, drawn from the evaluation seed and each stream."""
        seed = self.ev.seed ^ seed_salt(attack)
        memo = (streams, kind, eps, seed)
        if self._start_memo != memo:    # a shard's images: their places in the whole set's stream
            first = int(self.index[0])
            self._start_cache = random_starts(first + len(self.images), tuple(self.images.shape[1:]), streams,
                                              seed, eps, kind)[first:]
            self._start_memo = memo
        return self._start_cache

    def import_adversarials(self, adversarials: dict[ImageSet, torch.Tensor]) -> None:
        """FP32-made candidates from another task (a GPU task hands them to the int8 CPU tasks)."""
        for key, images in adversarials.items():
            self._adv[key] = (from_levels(images.to(self.device)), 0.0)

    def export_adversarials(self, keys: Iterable[ImageSet]) -> dict[ImageSet, torch.Tensor]:
        """FP32-made candidates {image key: uint8} for other tasks; exact, as they lie on the 8-bit grid."""
        return {key: torch.round(self.adversarial(key)[0] * 255).to(torch.uint8).cpu() for key in keys}

    def defend(self, images: torch.Tensor, defense: str, params: dict, index: torch.Tensor) -> torch.Tensor:
        return defend_images(defense, params, images, self.ev.defense_backend, self.ev.batch_size, index)

    def judge(self, key: ImageSet, defense: str, setting: DefenseSetting, quants: Iterable[str]) -> dict[str, Verdict]:
        """Each quant mode's verdict on image set `key` behind a defense, computed once: per image, right
        under every candidate and every defender draw (the clean verdicts serve every attack-success rate)."""
        todo = [q for q in dict.fromkeys(quants) if (q, key, defense, setting) not in self._verdicts]
        if todo:
            cands = self.adversarial(key)[0]
            fresh, distances = self._candidate_facts(key)
            per_draw = [self._judge_draw(cands, fresh, defense, setting.for_draw(d), todo)
                        for d in range(setting.n_draws)]
            for q in todo:
                self._verdicts[(q, key, defense, setting)] = Verdict.of_draws(
                    [ok[q] for ok, _ in per_draw], [first[q] for _, first in per_draw], int(cands.shape[1]), distances)
        return {q: self._verdicts[(q, key, defense, setting)] for q in quants}

    def _judge_draw(self, cands: torch.Tensor, fresh: torch.Tensor, defense: str, params: dict,
                    quants: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """One defender draw: each candidate defended once for all the modes (only where it differs from the
        image's earlier candidates), predicted per mode only where every earlier candidate failed. Returns per
        mode which images stayed right, and the first candidate that fooled each image (-1: none)."""
        ok = {q: torch.ones(len(cands), dtype=torch.bool) for q in quants}
        first = {q: torch.full((len(cands),), -1, dtype=torch.long) for q in quants}
        for k in range(cands.shape[1]):
            idx = fresh[:, k].nonzero().squeeze(1)
            if not len(idx):
                continue
            defended = self.defend(cands[idx.to(cands.device), k], defense, params, self.index[idx])
            for q in quants:
                alive = ok[q][idx]
                if alive.any():
                    at = idx[alive]
                    preds = predict(self.models[q], defended[alive.to(defended.device)], self.devices[q],
                                    self.ev.batch_size)
                    ok[q][at] = preds == self.labels[at]
                    first[q][at[preds != self.labels[at]]] = k
        return ok, first

    def _candidate_facts(self, key: ImageSet) -> tuple[torch.Tensor, tuple[int, float]]:
        """Of image set `key`, once: which candidates differ from each image's earlier ones, and the largest
        distances delivered (L-inf in 8-bit levels, L2)."""
        if key not in self._facts:
            cands = self.adversarial(key)[0]
            self._facts[key] = (_fresh_candidates(cands), delivered_distances(cands, self.images))
        return self._facts[key]


def _fresh_candidates(cands: torch.Tensor) -> torch.Tensor:
    """(N, K) bool: candidate k of an image differs from all its earlier candidates (only those are judged)."""
    n, k = cands.shape[:2]
    fresh = torch.ones(n, k, dtype=torch.bool)
    for i in range(1, k):
        for j in range(i):
            fresh[:, i] &= (cands[:, i] != cands[:, j]).flatten(1).any(1).cpu()
    return fresh


IMAGE_KEY_SALT = 0x5EED_5A0A      # attacks' own per-image draws (Square's) are apart from every other stream


class ThroughDefense(nn.Module):
    """model o defense for an adaptive attacker: the real defense forward, its declared gradient backward.
    Through a randomized defense the attacker averages its gradient over draws 1..eot_samples of its own
    stream of the defense's randomness (EOT; input_gradient reads `eot_draws`): drawn from the pixels it
    is differentiating, never the defender's draws, which come from each image's index and are scored."""

    def __init__(self, model: nn.Module, defense: str, params: dict, backend: str, eot_samples: int = 1,
                 fresh_per_call: bool = False):
        super().__init__()
        self.model, self.defense, self.params, self.backend = model, defense, params, backend
        self.randomized = is_randomized(defense)
        # fresh_per_call: an attack of the torchattacks zoo, which knows nothing of eot_draws, gets a new draw
        # at every forward call (its own EOT, if it has one, then averages over fresh draws)
        self.fresh_per_call = fresh_per_call and self.randomized
        self.eot_draws = list(range(1, eot_samples + 1)) if self.randomized and not self.fresh_per_call else None
        self.draw = 1

    def restart_draws(self) -> None:
        """Back to the first draw: a zoo attack's chunk then sees the same draws whatever ran before it."""
        self.draw = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = {**self.params, "draw": self.draw} if self.randomized else self.params
        if self.fresh_per_call:
            self.draw += 1
        return self.model(defend_differentiably(self.defense, x, params, self.backend))


def run_cells(engine: Engine, cells: list[Cell], meta: dict[str, Any],
              on_rows: Callable[[list[dict]], None] | None = None, progress: Callable[[int], None] | None = None) -> list[dict]:
    """Compute cells grouped by their images, then by defense; hand rows over one image set at a time."""
    with ieee_fp32():     # "fp32" cells are IEEE fp32 on a GPU too
        return _run_cells(engine, cells, meta, on_rows, progress)


def _run_cells(engine: Engine, cells: list[Cell], meta: dict[str, Any], on_rows, progress) -> list[dict]:
    groups: dict[ImageSet, dict[tuple, list[Cell]]] = {}
    for c in sorted(cells, key=lambda c: image_key(c).run_order):
        groups.setdefault(image_key(c), {}).setdefault((c.defense, c.defense_setting), []).append(c)
    all_rows = []
    for key, by_defense in groups.items():
        _, attack_seconds = engine.adversarial(key)
        n_cells = sum(len(g) for g in by_defense.values())
        rows = []
        for (defense, params), group in by_defense.items():
            quants = [c.quant for c in group]
            t0 = clock(engine.device)
            verdicts = engine.judge(key, defense, params, quants)
            clean = engine.judge(CLEAN, defense, params, quants)
            # predictions come back to the CPU (.cpu() waits for the device): the clock is honest
            shared = (clock(engine.device) - t0) / len(group) + attack_seconds / n_cells
            for c in group:
                v = verdicts[c.quant]
                rows.append(make_row(c, v, clean[c.quant].ok, shared, meta,
                                     model_bytes=engine.sizes[c.quant], device=engine.devices[c.quant],
                                     precision=engine.precision(c.quant), seed=engine.ev.seed,
                                     data_digest=engine.data_digest, dead_gradients=engine.dead_gradients.get(key)))
        all_rows += rows
        if on_rows:
            on_rows(rows)
        if progress:
            progress(len(rows))
    return all_rows
