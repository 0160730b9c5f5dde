"""What a reviewer asks of the cells: the worst case per image over attacks, and gradient-masking flags.

- `worst_case`: per (trial, quant, eps, defense, image set), an image counts as robust only if
  every attack run on it at that eps failed (what AutoAttack reports; its authors ask for it
  instead of a mean over attacks). Scope `oblivious`: the oblivious attacks; scope `adaptive`:
  every attack, oblivious and adaptive (an attacker who knows the defense may also ignore it).
- `masking_flags`: the checks of Carlini et al. 2019 ("On Evaluating Adversarial Robustness")
  and RobustBench's rules, each a row naming the cells that raise it. A flagged cell is shown,
  never dropped. Two cells are compared on their per-image masks (the same images): an exact
  McNemar test on the discordant images, one-sided at alpha = 0.05, over every pair of rows
  of a group; overlapping intervals would miss paired differences and are not used.
"""
from __future__ import annotations

import json
import math
from fractions import Fraction
from functools import partial

import numpy as np
import pandas as pd

from ...attacks import ATTACKS, attack_kind, gradient_step, step_size
from ..evaluate.rows import unpack_mask
from ..evaluate.settings import AttackSetting
from ..evaluate.stats import wilson_interval

CELL_SET = ["trial_id", "quant", "quant_params", "norm", "eps", "defense", "defense_params", "n", "seed", "data_digest"]
ALPHA = 0.05          # the masking checks' significance level (one-sided exact McNemar)


def with_defaults(ev: pd.DataFrame) -> pd.DataFrame:
    fill = {"attack_params": "{}", "threat": "oblivious", "data_digest": "", "quant_params": "{}", "seed": 0,
            "norm": "linf", "broken_by": None}
    ev = ev.assign(**{k: ev[k].astype(object).fillna(v) if k in ev else v for k, v in fill.items()})
    return ev.assign(setting=ev["attack_params"].map(lambda p: json.dumps(AttackSetting.of_json(p).own, sort_keys=True)))


def worst_case(ev: pd.DataFrame) -> pd.DataFrame:
    """Rows shaped like eval rows (attack 'worst_case', attack_source 'any'), one per cell set and
    scope, from the per-image masks. Rows of an earlier release (no masks) are left out."""
    if not len(ev) or "correct_mask" not in ev:
        return ev.iloc[0:0]
    ev = with_defaults(ev[(ev["eps"] > 0) & ev["correct_mask"].notna()])
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

def masking_flags(ev: pd.DataFrame, undefended_floor: float = 0.10, trials: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per raised check: the cell it concerns (FLAGGED_CELL), check, detail. trials: how each model was
    trained (its `adversarial` and `adv_eps` columns), so an adversarially trained model is not flagged for
    being robust where it was trained to be."""
    cols = [*FLAGGED_CELL, "check", "detail"]
    if not len(ev):
        return pd.DataFrame(columns=cols)
    ev = with_defaults(ev)
    if "correct_mask" not in ev:
        ev = ev.assign(correct_mask=None)
    flags = (_adaptive_above_oblivious(ev) + _multistep_weaker(ev) + _transfer_stronger(ev)
             + _rises_with_eps(ev) + _not_broken_at_large_eps(ev, undefended_floor, robust_radii(trials))
             + _dead_gradients(ev)
             + _noise_as_strong(ev) + _black_box_stronger(ev) + _square_component(ev) + _pgd_not_converged(ev))
    return pd.DataFrame(flags, columns=cols)


def mcnemar_greater(a: pd.Series, b: pd.Series) -> float | None:
    """One-sided exact McNemar p-value that a's accuracy exceeds b's, on the same images: of the images the
    two cells judge differently, how unlikely so many are right in a and wrong in b under a fair coin.
    None when either row has no mask (rows of an earlier release)."""
    if not isinstance(a["correct_mask"], bytes) or not isinstance(b["correct_mask"], bytes):
        return None
    n = int(a["n"])
    ma, mb = unpack_mask(a["correct_mask"], n), unpack_mask(b["correct_mask"], n)
    up, down = int((ma & ~mb).sum()), int((~ma & mb).sum())
    return binomial_tail(up, up + down)


def binomial_tail(k: int, n: int) -> float:
    """P(X >= k) for X ~ Binomial(n, 1/2), exactly."""
    if k <= 0:
        return 1.0
    return float(Fraction(sum(math.comb(n, i) for i in range(k, n + 1)), 2 ** n))


def _above(a: pd.Series, b: pd.Series) -> tuple[bool, str]:
    """Whether a's accuracy is significantly above b's (paired), and the p-value as text."""
    p = mcnemar_greater(a, b)
    if p is None:       # no masks: fall back to intervals that do not overlap
        return bool(a["ci_low"] > b["ci_high"]), "intervals apart"
    return p < ALPHA, f"McNemar p = {p:.2g}"


IMAGES = ["n", "seed", "data_digest", "norm"]     # rows compared saw the same images, in the same norm


def _pairs(ev: pd.DataFrame, keys: list[str], split: str, first: str, second: str):
    """Every (first, second) pair of rows of a group: same keys, same images."""
    for _, g in ev.groupby(keys + IMAGES, sort=False):
        a, b = g[g[split] == first], g[g[split] == second]
        for _, ra in a.iterrows():
            for _, rb in b.iterrows():
                yield ra, rb


# the eval columns that name the cell a flag concerns (the tables mark it there)
FLAGGED_CELL = ["trial_id", "quant", "norm", "eps", "defense", "defense_params", "threat", "attack", "attack_params",
                "attack_source", "n", "seed"]


def _flag(r: pd.Series, check: str, detail: str) -> list:
    return [*(r.get(k) for k in FLAGGED_CELL), check, detail]


def _pct(r: pd.Series) -> str:
    return f"{100 * r['accuracy']:.1f} %"


def _checked(pairs, check: str, text) -> list:
    """A flag for each pair (a, b) whose a is significantly above b."""
    out = []
    for a, b in pairs:
        hit, why = _above(a, b)
        if hit:
            out.append(_flag(a, check, f"{text(a, b)} ({why})"))
    return out


def _adaptive_above_oblivious(ev: pd.DataFrame) -> list:
    keys = ["trial_id", "quant", "quant_params", "attack_source", "attack", "setting", "eps", "defense", "defense_params"]
    return _checked(((ad, ob) for ob, ad in _pairs(ev[ev["eps"] > 0], keys, "threat", "oblivious", "adaptive")),
                    "adaptive_above_oblivious",
                    lambda ad, ob: f"{ad['attack']} through the defense {_pct(ad)} > ignoring it {_pct(ob)}: the "
                                   "declared gradient is weaker than none")


def _multistep_weaker(ev: pd.DataFrame) -> list:
    keys = ["trial_id", "quant", "quant_params", "attack_source", "threat", "eps", "defense", "defense_params"]
    multi = ev["setting"].map(lambda p: json.loads(p).get("steps", 1) > 1)
    single = ev["attack"].map(lambda a: _declared(gradient_step, a) is not None)     # FGSM, FGM
    ev = ev.assign(kind=np.where(single, "single", np.where(multi, "multi", "other")))
    return _checked(((m, s) for s, m in _pairs(ev[ev["eps"] > 0], keys, "kind", "single", "multi")),
                    "multistep_weaker_than_single_step",
                    lambda m, s: f"{m['attack']} {_pct(m)} > {s['attack']} {_pct(s)}: the multi-step attack is not "
                                 "converging")


def _transfer_stronger(ev: pd.DataFrame) -> list:
    keys = ["trial_id", "quant", "quant_params", "attack", "setting", "threat", "eps", "defense", "defense_params"]
    return _checked(_pairs(ev[ev["eps"] > 0], keys, "attack_source", "self", "fp32"), "transfer_stronger_than_white_box",
                    lambda wb, tr: f"white-box {_pct(wb)} > transferred from fp32 {_pct(tr)}: the white-box gradient "
                                   "is masked")


def _rises_with_eps(ev: pd.DataFrame) -> list:
    """Every larger eps against every smaller one of the same attack, eps 0 (clean) included."""
    keys = ["trial_id", "quant", "quant_params", "attack_source", "attack", "setting", "threat", "defense",
            "defense_params", *IMAGES]
    clean = ev[ev["eps"] == 0]
    out = []
    for _, g in ev[ev["eps"] > 0].groupby(keys, sort=False):
        r0 = g.iloc[0]
        base = clean[(clean["trial_id"] == r0["trial_id"]) & (clean["quant"] == r0["quant"]) &
                     (clean["quant_params"] == r0["quant_params"]) & (clean["defense"] == r0["defense"]) &
                     (clean["defense_params"] == r0["defense_params"]) & (clean["n"] == r0["n"]) &
                     (clean["seed"] == r0["seed"]) & (clean["data_digest"] == r0["data_digest"])].head(1)
        rows = [r for _, r in pd.concat([base, g]).sort_values("eps").iterrows()]
        pairs = [(hi, lo) for i, lo in enumerate(rows) for hi in rows[i + 1:] if hi["eps"] > lo["eps"]]
        out += _checked(pairs, "accuracy_rises_with_eps",
                        lambda hi, lo: f"{hi['attack']} at eps {hi['eps']:.4g}: {_pct(hi)} > at {lo['eps']:.4g}: {_pct(lo)}")
    return out


LARGE_EPS = 64 / 255     # every defense, attacked adaptively, should fall to ~0 % here


def robust_radii(trials: pd.DataFrame | None) -> dict[str, float]:
    """trial id -> the L-inf radius it was adversarially trained at (trials trained normally are absent). A
    model robustgrid did not train (RobustBench's zoo, a file) may be robustly trained: 8/255, CIFAR-10's radius."""
    if trials is None or not len(trials):
        return {}
    outside = {}
    if "model_source" in trials:
        ext = trials[trials["model_source"].fillna("trial") != "trial"]
        outside = dict.fromkeys(ext["trial_id"], 8 / 255)
    if "adversarial" not in trials:
        return outside
    adv = trials[trials["adversarial"].fillna("none") != "none"]
    eps = adv["adv_eps"] if "adv_eps" in adv else pd.Series(8 / 255, index=adv.index)
    return {**outside, **{t: float(e) if pd.notna(e) else 8 / 255 for t, e in zip(adv["trial_id"], eps)}}


def _not_broken_at_large_eps(ev: pd.DataFrame, floor: float, robust: dict[str, float] | None = None) -> list:
    """The undefended model at eps >= 8/255, and every defense attacked adaptively at eps >= 64/255: the
    strongest white-box attack should leave (nearly) nothing; accuracy whose whole interval lies above
    `floor` means the attack is too weak or its gradient masked. A model adversarially trained at radius r
    is expected to hold up to about r (PGD-AT keeps ~45 % at 8/255 on CIFAR-10): it is held to the defenses'
    64/255, or four times its radius where that is larger."""
    white = ev[ev["attack_source"] == "self"]
    white = white[white["norm"] == "linf"]     # the thresholds are L-inf radii
    robust = robust or {}
    large = np.array([max(LARGE_EPS, 4 * robust[t]) if t in robust else 8 / 255 for t in white["trial_id"]], dtype=float)
    bare = white[(white["defense"] == "none").to_numpy() & (white["eps"].to_numpy(dtype=float) >= large - 1e-9)]
    defended = white[(white["defense"] != "none") & (white["threat"] == "adaptive") & (white["eps"] >= LARGE_EPS - 1e-9)]
    out = []
    for part, what in ((bare, "without a defense"), (defended, "through the defense (adaptive)")):
        for _, g in part.groupby(["trial_id", "quant", "quant_params", "defense", "defense_params", *IMAGES], sort=False):
            top = g[g["eps"] == g["eps"].max()]
            best = top.loc[top["accuracy"].idxmin()]
            if best["ci_low"] > floor:
                check = "undefended_model_not_broken" if what.startswith("without") else "defense_not_broken_at_large_eps"
                out.append(_flag(best, check, f"strongest attack at eps {best['eps']:.4g} leaves {_pct(best)} {what}: "
                                              "the attack is too weak (or its gradient masked)"))
    return out


def _dead_gradients(ev: pd.DataFrame) -> list:
    if "dead_gradients" not in ev:
        return []
    dead = ev[ev["dead_gradients"].fillna(0) > 0]
    return [_flag(r, "zero_or_nan_input_gradients",
                  f"{int(r['dead_gradients'])} of {r['n']} images had an all-zero or NaN input gradient "
                  f"({r['attack']}, {r['threat']})") for _, r in dead.iterrows()]


def _declared(read, attack: str):
    """What a registered attack declares (`read` of the registry: its kind, step size, gradient step); None for
    the zoo's, whose nature robustgrid cannot vouch for, and for names this release does not know."""
    return read(attack) if attack in ATTACKS else None


def _kind(attack: str) -> str | None:
    return _declared(attack_kind, attack)


def _noise_as_strong(ev: pd.DataFrame) -> list:
    """The random-noise baseline (attack `noise`: uniform noise in the same eps-ball): an attack that does
    no better than it (accuracy not significantly below the noise's) is not using its gradient."""
    keys = ["trial_id", "quant", "quant_params", "eps", "defense", "defense_params"]
    ev = ev[ev["eps"] > 0]
    ev = ev.assign(kind=np.where(ev["attack"].map(_kind) == "model-free", "noise", "attack"))
    out = []
    for noise, attack in _pairs(ev, keys, "kind", "noise", "attack"):
        if attack["attack_source"] != "self":
            continue
        stronger, _ = _above(noise, attack)
        if not stronger:
            out.append(_flag(attack, "no_better_than_random_noise",
                             f"{attack['attack']} ({attack['threat']}) {_pct(attack)} is not significantly below uniform "
                             f"noise in the same ball, {_pct(noise)}: the attack is not finding the gradient's direction"))
    return out


SQUARE_ALPHA = 0.002     # AutoAttack's own check (checks.check_square_sr): Square breaking over 0.2 % more


def _black_box_stronger(ev: pd.DataFrame) -> list:
    """A gradient-free attack (Square) significantly stronger than a gradient attack on the same cells: the
    gradient is masked (Carlini et al. 2019, sec. 5.2; Athalye et al. 2018)."""
    keys = ["trial_id", "quant", "quant_params", "attack_source", "threat", "eps", "defense", "defense_params"]
    ev = ev.assign(kind=ev["attack"].map(_kind).map({"gradient": "white", "black-box": "black"}))
    ev = ev[(ev["eps"] > 0) & ev["kind"].notna()]
    return _checked(_pairs(ev, keys, "kind", "white", "black"), "black_box_stronger_than_white_box",
                    lambda wb, bb: f"{wb['attack']} ({wb['threat']}) {_pct(wb)} > gradient-free square {_pct(bb)}: "
                                   "the gradient attack is masked")


def _square_component(ev: pd.DataFrame) -> list:
    """Ensemble rows (AutoAttack) whose gradient-free component (Square: a candidate named after a black-box attack
    of the registry) broke more than 0.2 % of the images every gradient component before it missed (the authors'
    own warning)."""
    out = []
    for _, r in ev[ev["broken_by"].notna()].iterrows():
        black_box = {k: v for k, v in json.loads(r["broken_by"]).items() if _kind(k) == "black-box"}
        broke = sum(black_box.values())
        if broke > SQUARE_ALPHA * r["n"]:
            out.append(_flag(r, "square_broke_what_gradients_missed",
                             f"{r['attack']} ({r['threat']}): {', '.join(black_box).title()} broke {broke} of {r['n']} "
                             "images after APGD, APGD-T and FAB-T failed on them: the gradients are masked there"))
    return out


def _pgd_not_converged(ev: pd.DataFrame) -> list:
    """A fixed-step attack (PGD) significantly above an adaptive-step one (APGD, AutoAttack) on the same cells by
    at least 2 points: the fixed step had not converged, and its number overstates the defense (each attack's
    step size as its registry entry declares it)."""
    keys = ["trial_id", "quant", "quant_params", "attack_source", "threat", "eps", "defense", "defense_params"]
    ev = ev.assign(kind=ev["attack"].map(partial(_declared, step_size)))
    ev = ev[(ev["eps"] > 0) & ev["kind"].notna()]
    pairs = ((p, a) for p, a in _pairs(ev, keys, "kind", "fixed", "adaptive") if p["accuracy"] - a["accuracy"] >= 0.02)
    return _checked(pairs, "pgd_not_converged",
                    lambda p, a: f"{p['attack']} ({json.loads(p['setting']).get('steps')} steps, {p['threat']}) "
                                 f"{_pct(p)} > {a['attack']} {_pct(a)}: {p['attack']} had not converged on this "
                                 f"defense; report {a['attack']}")
