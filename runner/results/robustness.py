"""What a reviewer asks of the cells: the worst case per image over attacks, and gradient-masking flags.

- `worst_case`: per (trial, quant, eps, defense, image set), an image counts as robust only if
  every attack run on it at that eps failed (what AutoAttack reports; its authors ask for it
  instead of a mean over attacks). Scope `oblivious`: the oblivious attacks; scope `adaptive`:
  every attack, oblivious and adaptive (an attacker who knows the defense may also ignore it).
- `masking_flags`: the checks of Carlini et al. 2019 ("On Evaluating Adversarial Robustness")
  and RobustBench's rules, each a row naming the cells that raise it. A flagged cell is shown,
  never dropped.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from ..evaluate.plan import attack_setting
from ..evaluate.rows import unpack_mask
from ..evaluate.stats import wilson_interval

CELL_SET = ["trial_id", "quant", "eps", "defense", "defense_params", "n", "seed", "data_digest"]


def _prepared(ev: pd.DataFrame) -> pd.DataFrame:
    fill = {"attack_params": "{}", "threat": "oblivious", "data_digest": ""}
    ev = ev.assign(**{k: ev[k].fillna(v) if k in ev else v for k, v in fill.items()})
    return ev.assign(setting=ev["attack_params"].map(lambda p: json.dumps(attack_setting(p), sort_keys=True)))


def worst_case(ev: pd.DataFrame) -> pd.DataFrame:
    """Rows shaped like eval rows (attack 'worst_case', attack_source 'any'), one per cell set and
    scope, from the per-image masks. Rows of an earlier release (no masks) are left out."""
    if not len(ev) or "correct_mask" not in ev:
        return ev.iloc[0:0]
    ev = _prepared(ev[(ev["eps"] > 0) & ev["correct_mask"].notna()])
    out = []
    for _, cells in ev.groupby(CELL_SET, sort=False):
        for scope in ("oblivious", "adaptive"):
            used = cells if scope == "adaptive" else cells[cells["threat"] == "oblivious"]
            if not len(used) or (scope == "adaptive" and not (cells["threat"] == "adaptive").any()):
                continue
            out.append(_worst_row(used, scope))
    return pd.DataFrame(out) if out else ev.iloc[0:0]


def _worst_row(cells: pd.DataFrame, scope: str) -> dict:
    n = int(cells["n"].iloc[0])
    robust = np.logical_and.reduce([unpack_mask(m, n) for m in cells["correct_mask"]])
    correct = int(robust.sum())
    lo, hi = wilson_interval(correct, n)
    attacks = sorted(f"{r.attack} {r.setting} {r.attack_source} {r.threat}" for r in cells.itertuples())
    return {**cells.iloc[0].to_dict(), "attack": "worst_case", "attack_params": json.dumps({"over": attacks}),
            "attack_source": "any", "threat": scope, "correct": correct, "accuracy": correct / n, "ci_low": lo,
            "ci_high": hi, "attack_success_rate": float("nan"), "seconds": float(cells["seconds"].sum()),
            "correct_mask": np.packbits(robust).tobytes(), "dead_gradients": None}


# --- gradient-masking flags ------------------------------------------------------------------------

def masking_flags(ev: pd.DataFrame, undefended_floor: float = 0.10) -> pd.DataFrame:
    """One row per raised check: trial_id, quant, eps, defense, check, detail."""
    cols = ["trial_id", "quant", "eps", "defense", "check", "detail"]
    if not len(ev):
        return pd.DataFrame(columns=cols)
    ev = _prepared(ev)
    flags = (_adaptive_above_oblivious(ev) + _multistep_weaker(ev) + _transfer_stronger(ev)
             + _rises_with_eps(ev) + _undefended_not_broken(ev, undefended_floor) + _dead_gradients(ev))
    return pd.DataFrame(flags, columns=cols)


def _beyond(a: pd.Series, b: pd.Series) -> bool:
    """a's accuracy above b's beyond both Wilson intervals."""
    return a["ci_low"] > b["ci_high"]


def _pairs(ev: pd.DataFrame, keys: list[str], split: str, first: str, second: str):
    for _, g in ev.groupby(keys, sort=False):
        a, b = g[g[split] == first], g[g[split] == second]
        if len(a) and len(b):
            yield a.iloc[0], b.iloc[0]


def _flag(r: pd.Series, check: str, detail: str) -> list:
    return [r["trial_id"], r["quant"], r["eps"], r["defense"], check, detail]


def _pct(r: pd.Series) -> str:
    return f"{100 * r['accuracy']:.1f} % ({100 * r['ci_low']:.1f}–{100 * r['ci_high']:.1f})"


def _adaptive_above_oblivious(ev: pd.DataFrame) -> list:
    keys = ["trial_id", "quant", "attack_source", "attack", "setting", "eps", "defense", "defense_params", "n"]
    return [_flag(ad, "adaptive_above_oblivious",
                  f"{ad['attack']} through the defense {_pct(ad)} > ignoring it {_pct(ob)}: the declared gradient "
                  "is weaker than none")
            for ob, ad in _pairs(ev[ev["eps"] > 0], keys, "threat", "oblivious", "adaptive") if _beyond(ad, ob)]


def _multistep_weaker(ev: pd.DataFrame) -> list:
    keys = ["trial_id", "quant", "attack_source", "threat", "eps", "defense", "defense_params", "n"]
    multi = ev["setting"].map(lambda p: json.loads(p).get("steps", 1) > 1)
    ev = ev.assign(kind=np.where(ev["attack"] == "fgsm", "single", np.where(multi, "multi", "other")))
    return [_flag(m, "multistep_weaker_than_single_step",
                  f"{m['attack']} {_pct(m)} > fgsm {_pct(s)}: the multi-step attack is not converging")
            for s, m in _pairs(ev[ev["eps"] > 0], keys, "kind", "single", "multi") if _beyond(m, s)]


def _transfer_stronger(ev: pd.DataFrame) -> list:
    keys = ["trial_id", "quant", "attack", "setting", "threat", "eps", "defense", "defense_params", "n"]
    return [_flag(tr, "transfer_stronger_than_white_box",
                  f"transferred from fp32 {_pct(tr)} < white-box {_pct(wb)}: the white-box gradient is masked")
            for wb, tr in _pairs(ev[ev["eps"] > 0], keys, "attack_source", "self", "fp32") if _beyond(wb, tr)]


def _rises_with_eps(ev: pd.DataFrame) -> list:
    keys = ["trial_id", "quant", "attack_source", "attack", "setting", "threat", "defense", "defense_params", "n"]
    out = []
    for _, g in ev[ev["eps"] > 0].groupby(keys, sort=False):
        g = g.sort_values("eps")
        for (_, lo_eps), (_, hi_eps) in zip(g.iterrows(), list(g.iterrows())[1:]):
            if _beyond(hi_eps, lo_eps):
                out.append(_flag(hi_eps, "accuracy_rises_with_eps",
                                 f"{hi_eps['attack']} at eps {hi_eps['eps']:.4g}: {_pct(hi_eps)} > at "
                                 f"{lo_eps['eps']:.4g}: {_pct(lo_eps)}"))
    return out


def _undefended_not_broken(ev: pd.DataFrame, floor: float) -> list:
    bare = ev[(ev["defense"] == "none") & (ev["eps"] >= 8 / 255 - 1e-9) & (ev["attack_source"] == "self")]
    out = []
    for _, g in bare.groupby(["trial_id", "quant", "n"], sort=False):
        top = g[g["eps"] == g["eps"].max()]
        best = top.loc[top["accuracy"].idxmin()]
        if best["ci_low"] > floor:
            out.append(_flag(best, "undefended_model_not_broken",
                             f"strongest attack at eps {best['eps']:.4g} leaves {_pct(best)} without a defense: "
                             "the attack is too weak (or its gradient masked)"))
    return out


def _dead_gradients(ev: pd.DataFrame) -> list:
    if "dead_gradients" not in ev:
        return []
    dead = ev[ev["dead_gradients"].fillna(0) > 0]
    return [_flag(r, "zero_or_nan_input_gradients",
                  f"{int(r['dead_gradients'])} of {r['n']} images had an all-zero or NaN input gradient "
                  f"({r['attack']}, {r['threat']})") for _, r in dead.iterrows()]
