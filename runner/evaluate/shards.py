"""Evaluation shards: fixed index ranges of the test images, and a cell as the exact sum of its shards.

A shard computes every cell of its grid on its images and returns one row per cell (its counts and
mask, plus what the merge needs: the clean count, the flipped count, where it ran). Random starts, EOT
draws and the defender's draws come from each image's index, so a shard's images are judged exactly
as in the whole set; the merge adds counts, concatenates masks in image order and computes the
interval once, on the sum.
"""
from __future__ import annotations

import json
import math

import numpy as np

from ..provenance import SOFTWARE_FIELDS
from .rows import unpack_mask
from .stats import wilson_interval

# What a shard row carries beyond a cell row: the whole cell's image count, its range, the counts the
# attack-success rate needs, where it ran.
SHARD_FIELDS = ("cell_n", "shard_start", "shard_stop", "clean_correct", "flipped", "node", "gpu_ids")


def shard_ranges(n: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) of each shard of n images: fixed by the sweep's shard_images, whatever runs them."""
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def merge_shards(rows: list[dict]) -> dict:
    """One cell's row from the rows of its shards (each shard once, any order): exact, as if unsharded."""
    rows = sorted(rows, key=lambda r: r["shard_start"])
    _check_cover(rows)
    first = rows[0]
    n, correct = sum(int(r["n"]) for r in rows), sum(int(r["correct"]) for r in rows)
    base, flipped = sum(int(r["clean_correct"]) for r in rows), sum(int(r["flipped"]) for r in rows)
    draws = int(first["defense_draws"])
    # each shard's draw mean is an exact ratio of counts (rows.Verdict): recover the counts, add them
    draw_right = sum(round(float(r["accuracy_draw_mean"]) * draws * int(r["n"])) for r in rows)
    lo, hi = wilson_interval(correct, n)
    mask = np.concatenate([unpack_mask(r["correct_mask"], int(r["n"])) for r in rows])
    dead = [int(r["dead_gradients"]) for r in rows if _present(r.get("dead_gradients"))]
    row = {k: v for k, v in first.items() if k not in SHARD_FIELDS}
    row.update(
        n=n, correct=correct, accuracy=correct / n, ci_low=lo, ci_high=hi,
        accuracy_draw_mean=draw_right / (draws * n),
        candidates=max(int(r["candidates"]) for r in rows),
        delivered_linf=max(float(r["delivered_linf"]) for r in rows),
        delivered_l2=max(float(r["delivered_l2"]) for r in rows),
        broken_by=_sum_broken_by([r.get("broken_by") for r in rows]),
        attack_success_rate=flipped / base if base else float("nan"),
        seconds=sum(float(r["seconds"]) for r in rows),
        device=",".join(sorted({str(r["device"]) for r in rows})),
        created_at=max(r["created_at"] for r in rows),
        correct_mask=np.packbits(mask).tobytes(),
        dead_gradients=sum(dead) if dead else None,
        shards=json.dumps([{"images": [int(r["shard_start"]), int(r["shard_stop"])], "node": r.get("node") or "",
                            "gpus": r.get("gpu_ids") or ""} for r in rows]),
        **_software_of(rows),
    )
    return row


def _software_of(rows: list[dict]) -> dict:
    """What made the cell: where its shards' code differs (a node on another checkout, a tree edited mid-run),
    every value, never the first shard's alone; git_dirty if any shard's tree was."""
    out = {}
    for k in SOFTWARE_FIELDS:
        values = {r.get(k) for r in rows}
        if len(values) > 1:
            out[k] = any(bool(v) for v in values) if k == "git_dirty" else ",".join(sorted(str(v) for v in values))
    return out


def _check_cover(rows: list[dict]) -> None:
    """The shards tile [0, cell_n) exactly: no gap, no overlap (a merge of anything else is not the cell)."""
    at = 0
    for r in rows:
        if int(r["shard_start"]) != at or int(r["shard_stop"]) - at != int(r["n"]):
            raise ValueError(f"shards do not tile the cell's images: {[(r['shard_start'], r['shard_stop']) for r in rows]}")
        at = int(r["shard_stop"])
    if at != int(rows[0]["cell_n"]):
        raise ValueError(f"shards cover {at} of the cell's {rows[0]['cell_n']} images")


def _present(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _sum_broken_by(values: list) -> str | None:
    """AutoAttack's per-component counts of the shards, added (None where the attack names no components)."""
    if not all(isinstance(v, str) and v for v in values):
        return None
    total: dict[str, int] = {}
    for v in values:
        for name, count in json.loads(v).items():
            total[name] = total.get(name, 0) + int(count)
    return json.dumps(total)

