"""One cell's row: counts, Wilson interval, attack-success rate, where and how it ran, provenance."""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import torch

from ...attacks import candidate_names, norm_of
from ..provenance import software
from .plan import Cell
from .stats import wilson_interval

META_KEYS = ("sweep", "run_id", "trial_id", "model", "dataset", "training", "model_source", "model_sha256")


@dataclass(frozen=True)
class Verdict:
    """How the scored system fared on one image set behind one defense (engine and reference alike)."""
    ok: torch.Tensor        # per image: right under every candidate and every defender draw
    draw_mean: float        # the accuracy averaged over the defender's draws (each draw: every candidate)
    draws: int              # the defender's draws (1 for a deterministic defense)
    candidates: int         # candidates per image the attack delivered (restarts, final and best iterates)
    linf_levels: int        # the largest L-infinity distance of a delivered image from its clean one, in 8-bit levels
    l2: float = 0.0         # the largest L2 distance of a delivered image from its clean one ([0,1] pixel scale)
    broken_by: tuple[int, ...] = ()   # per candidate: the images it was the first to fool (in any draw)

    @classmethod
    def of_draws(cls, per_draw: list[torch.Tensor], first: list[torch.Tensor], candidates: int,
                 distances: tuple[int, float]) -> Verdict:
        """From each draw's mask (right under every candidate in that draw) and first fooling candidate (-1: none)."""
        stack = torch.stack(per_draw)
        firsts = torch.stack(first)
        earliest = torch.where(firsts < 0, candidates, firsts).amin(0)
        broken = torch.bincount(earliest[earliest < candidates], minlength=candidates)
        # the mean as an exact ratio of counts: a sum of shards gives the same float as the whole set
        return cls(stack.all(0), int(stack.sum()) / stack.numel(), len(per_draw), candidates, distances[0], distances[1],
                   tuple(int(b) for b in broken))


def delivered_distances(cands: torch.Tensor, images: torch.Tensor) -> tuple[int, float]:
    """(largest L-inf distance in 8-bit levels, largest L2 distance) of candidates (N, K, C, H, W) from their images."""
    if not cands.numel():
        return 0, 0.0
    d = cands - images.unsqueeze(1)
    levels = torch.round(d * 255).double()       # exact: both lie on the 8-bit grid
    return int(levels.abs().amax().item()), float(levels.flatten(2).norm(dim=2).amax().item() / 255)


def make_row(c: Cell, verdict: Verdict, clean_ok: torch.Tensor, seconds: float, meta: dict, *,
             model_bytes: int, device: torch.device, precision: str, seed: int, data_digest: str,
             dead_gradients: int | None = None) -> dict:
    """verdict: the scored system's judgement of the cell's images; clean_ok: which it gets right without attack
    (same defense, every draw)."""
    return {**_row(c, verdict, clean_ok, seconds, meta, model_bytes=model_bytes, device=device, precision=precision,
                   seed=seed, data_digest=data_digest, dead_gradients=dead_gradients),
            "norm": norm_of(c.attack_setting.own), "delivered_l2": verdict.l2,
            "broken_by": _broken_by(c, verdict),
            # what a merge of shards needs beyond the row (runner/evaluate/shards.py)
            "clean_correct": int(clean_ok.sum()), "flipped": int((clean_ok & ~verdict.ok).sum())}


def _broken_by(c: Cell, verdict: Verdict) -> str | None:
    """JSON {candidate name: images it broke first} for attacks that name their candidates (AutoAttack's components;
    a component's candidates, APGD-T's per target, add up under its name)."""
    names = candidate_names(c.attack, c.attack_setting.own) if c.eps > 0 else None
    if not names or len(names) != len(verdict.broken_by):
        return None
    counts: dict[str, int] = {}
    for name, broken in zip(names, verdict.broken_by):
        counts[name] = counts.get(name, 0) + broken
    return json.dumps(counts)


def _row(c: Cell, verdict: Verdict, clean_ok: torch.Tensor, seconds: float, meta: dict, *,
         model_bytes: int, device: torch.device, precision: str, seed: int, data_digest: str,
         dead_gradients: int | None = None) -> dict:
    """verdict: the scored system's judgement of the cell's images; clean_ok: which it gets right without attack
    (same defense, every draw)."""
    ok = verdict.ok
    n, correct = len(ok), int(ok.sum())
    lo, hi = wilson_interval(correct, n)
    base = int(clean_ok.sum())
    flipped = int((clean_ok & ~ok).sum())
    return {
        **{k: meta.get(k) for k in META_KEYS},
        "quant": c.quant, "quant_params": c.quant_params, "model_bytes": model_bytes, "attack": c.attack,
        "attack_params": c.attack_setting.to_json(),
        "attack_source": c.attack_source, "threat": c.threat,
        "eps": c.eps, "defense": c.defense, "defense_params": c.defense_setting.to_json(), "corruption": c.corruption,
        "severity": c.severity, "n": n, "correct": correct,
        "accuracy": correct / n, "ci_low": lo, "ci_high": hi,
        "accuracy_draw_mean": verdict.draw_mean, "defense_draws": verdict.draws, "candidates": verdict.candidates,
        "delivered_linf": verdict.linf_levels / 255,
        "attack_success_rate": flipped / base if base else float("nan"),
        "seconds": seconds, "device": str(device), "precision": precision, "seed": seed,
        "created_at": datetime.now(timezone.utc), "data_digest": data_digest, **software(),
        "correct_mask": pack_mask(ok),
        "dead_gradients": dead_gradients,   # images with an all-zero / NaN input gradient
    }


def pack_mask(ok: torch.Tensor) -> bytes:
    """Which images the cell got right, one bit an image in test-set order (numpy's packbits)."""
    return np.packbits(ok.cpu().numpy().astype(bool)).tobytes()


def unpack_mask(mask: bytes, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(mask, dtype=np.uint8), count=n).astype(bool)
