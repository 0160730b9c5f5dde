"""One cell's row: counts, Wilson interval, attack-success rate, where and how it ran, provenance."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import torch

from ..provenance import software
from .plan import Cell
from .stats import wilson_interval

META_KEYS = ("sweep", "run_id", "trial_id", "model", "dataset")


@dataclass(frozen=True)
class Verdict:
    """How the scored system fared on one image set behind one defense (engine and reference alike)."""
    ok: torch.Tensor        # per image: right under every candidate and every defender draw
    draw_mean: float        # the accuracy averaged over the defender's draws (each draw: every candidate)
    draws: int              # the defender's draws (1 for a deterministic defense)
    candidates: int         # candidates per image the attack delivered (restarts, final and best iterates)
    linf_levels: int        # the largest L-infinity distance of a delivered image from its clean one, in 8-bit levels

    @classmethod
    def of_draws(cls, per_draw: list[torch.Tensor], candidates: int, linf_levels: int) -> Verdict:
        """From each draw's mask (right under every candidate in that draw)."""
        stack = torch.stack(per_draw)
        return cls(stack.all(0), stack.float().mean().item(), len(per_draw), candidates, linf_levels)


def make_row(c: Cell, verdict: Verdict, clean_ok: torch.Tensor, seconds: float, meta: dict, *,
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
        **{k: meta[k] for k in META_KEYS},
        "quant": c.quant, "quant_params": c.quant_params, "model_bytes": model_bytes, "attack": c.attack, "attack_params": c.attack_params,
        "attack_source": c.attack_source, "threat": c.threat,
        "eps": c.eps, "defense": c.defense, "defense_params": c.defense_params, "n": n, "correct": correct,
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
