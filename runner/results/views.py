"""Views of a results folder as plain tables (title, columns, rows of strings, notes under them).

Built once, rendered as rich tables (render.py) or as markdown / CSV / JSON for papers, READMEs
and scripts. A view never pools cells that saw different images: pivot tables are split by
(quant, source, attack, n, seed, data digest), each with its own n.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ...defenses import short_name
from ..evaluate.settings import AttackSetting
from ..evaluate.stats import wilson_interval


@dataclass
class View:
    title: str
    columns: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)
    key_columns: int = 1          # repeated in every part when the view is split to fit a width

    def as_dict(self) -> dict:
        return {"title": self.title, "columns": self.columns, "rows": self.rows, "notes": self.notes}


def pct(v) -> str:
    return "-" if v is None or pd.isna(v) else f"{100 * v:.1f}"


def mb(b) -> str:
    return "-" if b is None or pd.isna(b) else f"{b / 1e6:.2f}"


NORM_LABELS = {"linf": "L-inf", "l2": "L2"}


def eps_label(eps: float, norm: str = "linf") -> str:
    """k/255 only where eps * 255 is a whole number (0.01 is not 3/255); an L2 radius as a decimal (RobustBench: 0.5)."""
    if eps == 0:
        return "0"
    if norm == "l2":
        return f"{eps:.4g}"
    k = eps * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 else f"{eps:.4g}"


# --- trials ------------------------------------------------------------------------------------

def sweep_file(root: Path) -> dict:
    """The folder's sweep.yaml as written (empty where there is none)."""
    p = Path(root) / "sweep.yaml"
    return (yaml.safe_load(p.read_text()) or {}) if p.exists() else {}


def grid_axes(root: Path) -> list[str]:
    """The training keys the sweep varies (a grid or a distribution)."""
    return [k for k, v in (sweep_file(root).get("train") or {}).items() if isinstance(v, dict)]


def searched_keys(root: Path) -> dict[str, bool]:
    """A sampled search's keys, each with whether it is drawn on a log scale (none for a grid or PBT, where a
    trial's starting values are not the values it was trained with)."""
    raw = sweep_file(root)
    if (raw.get("search") or {}).get("algorithm", "grid") == "grid" or (raw.get("scheduler") or {}).get("type") == "pbt":
        return {}
    return {k: "loguniform" in v for k, v in (raw.get("train") or {}).items() if isinstance(v, dict)}


def search_metric(root: Path) -> str | None:
    """The trials column a searched sweep ranks by (None for a grid: trials in id order)."""
    raw = sweep_file(root)
    search = raw.get("search") or {}
    pbt = (raw.get("scheduler") or {}).get("type") == "pbt"
    if search.get("algorithm", "grid") == "grid" and not pbt:
        return None
    metric = search.get("metric", "val_accuracy")
    return "best_" + (metric[0] if isinstance(metric, list) else metric)


def clean_accuracy(ev: pd.DataFrame) -> pd.DataFrame:
    """Accuracy without attack or defense, per trial and quant mode, on the largest image set it was measured
    on: never pooled over image sets (a second `eval` on the first 200 images would count them twice)."""
    clean = ev[(ev["eps"] == 0) & (ev["defense"] == "none") & (ev["attack_source"] == "self")]
    if "data_digest" in clean:
        clean = clean.assign(data_digest=clean["data_digest"].fillna(""))
    keys = ["trial_id", "quant"] + [k for k in IMAGE_SET if k in clean]
    per_set = clean.groupby(keys, dropna=False)["correct"].first().reset_index()
    largest = per_set.sort_values("n", kind="stable").groupby(["trial_id", "quant"]).tail(1)
    return largest.assign(acc=largest["correct"] / largest["n"]).set_index(["trial_id", "quant"])["acc"].unstack("quant")


def trials_views(trials: pd.DataFrame, ev: pd.DataFrame, axes: list[str], rank_by: str | None = None) -> list[View]:
    """Two narrow tables rather than one wide one: training, then each evaluated model's size and
    clean accuracy (one row per trial and quant mode); where trials were searched, ranked by the search's
    metric (rank_by), and where they have robust validation accuracy, the clean-robust Pareto front."""
    outside = trials["model_source"].fillna("trial") != "trial" if "model_source" in trials else None
    external = trials[outside] if outside is not None else trials.iloc[:0]
    all_trials, trials = trials, trials[~outside] if outside is not None else trials
    robust = "best_robust_val_accuracy" in trials and trials["best_robust_val_accuracy"].notna().any()
    trials = trials.sort_values([rank_by, "trial_id"], ascending=[False, True], na_position="last") if rank_by \
        else trials.sort_values("trial_id")
    train_rows = []
    for r in trials.to_dict("records"):
        train_rows.append([r["trial_id"], *[_value(r.get(a)) for a in axes], str(r["status"]),
                           _int(r.get("epochs_run")), pct(r.get("best_val_accuracy")),
                           *([pct(r.get("best_robust_val_accuracy"))] if robust else []), pct(r.get("test_accuracy")),
                           "-" if pd.isna(r.get("seconds")) else f"{r['seconds']:.0f}"])
    failed = [f"{r['trial_id']}: {r['error']}" for r in trials.to_dict("records")
              if r["status"] != "ok" and isinstance(r.get("error"), str)]
    ranked = [f"ranked by {rank_by.removeprefix('best_')} (the search's metric)"] if rank_by else []
    runs = sorted(set(ev["run_id"].dropna())) if "run_id" in ev else []
    if len(runs) > 1:      # several grids in one folder: each run's sweep is kept, none describes them all
        ranked.append(f"this folder holds the cells of {len(runs)} runs ({', '.join(runs)}): each run's sweep is "
                      "runs/<run id>.yaml; the tables below keep their image sets apart")
    views = [
        View("trials", ["trial", *axes, "status", "ep", "val %", *(["robust val %"] if robust else []), "test %", "s"],
             train_rows, ["ep: epochs run; val: best validation accuracy; test: test accuracy of the best epoch; "
                          "s: seconds of the whole trial"
                          + ("; robust val: PGD-10 accuracy on the validation subset (adversarial training)" if robust else ""),
                          *ranked, *failed]),
    ] if len(trials) else []
    if len(external):
        views.append(View("models robustgrid did not train", ["trial", "source", "model", "architecture", "M params", "sha256"],
                          [[r["trial_id"], str(r["model_source"]), str(r["model"]), str(r.get("architecture") or "-"),
                            "-" if pd.isna(r.get("n_params")) else f"{r['n_params'] / 1e6:.2f}", str(r["model_sha256"])[:12]]
                           for r in external.sort_values("trial_id").to_dict("records")],
                          [("source: file (torch.export / TorchScript), robustbench (RobustBench's zoo), python (a "
                            "module handed to robustgrid.evaluate); sha256: of the file, or of the module's weights")]))
    views += [
        View("models", ["trial", "quant", "device", "MB", "clean %"], _model_rows(all_trials, ev),
             [("MB: bytes of what the mode ships (torch.save; measured); clean: accuracy without attack or "
               "defense on the evaluation images (the largest set evaluated, never several pooled)")]),
    ]
    front = pareto_front(trials)
    if len(front) > 0 and trials["best_robust_val_accuracy"].notna().sum() > 1:
        views.append(View("clean-robust Pareto front", ["trial", *axes, "val %", "robust val %"],
                          [[r["trial_id"], *[_value(r.get(a)) for a in axes], pct(r["best_val_accuracy"]),
                            pct(r["best_robust_val_accuracy"])] for r in front.to_dict("records")],
                          [("the trials no other trial beats on both validation accuracy and robust validation "
                            "accuracy, by clean accuracy; every other trial is worse on one without being better on the other")]))
    lineage = lineage_rows(trials)
    if lineage:
        views.append(View("PBT lineage", ["trial", "epoch", "clone ← source", "then"], lineage,
                          [("population-based training: each trial's final weights traced back, oldest step first: after "
                            "`epoch` the clone took the source's weights (and optimizer state) and went on with `then` "
                            "(the source's values, perturbed); the trials table shows each trial's starting values")],
                          key_columns=2))
    return views


def folder_models_view(trials: pd.DataFrame) -> View:
    """`robustgrid models --results DIR`: every model the folder holds, trained here or brought."""
    rows = []
    for r in trials.sort_values("trial_id").to_dict("records"):
        source = r.get("model_source") if isinstance(r.get("model_source"), str) else "trial"
        params = r.get("n_params")
        arch = r.get("architecture")
        rows.append([r["trial_id"], source, str(r.get("model")), arch if isinstance(arch, str) else str(r.get("model")),
                     "-" if params is None or pd.isna(params) else f"{params / 1e6:.2f}",
                     str(r.get("model_sha256"))[:8] if isinstance(r.get("model_sha256"), str) else "-"])
    return View("models in this folder", ["trial", "source", "model", "architecture", "M params", "sha256"], rows,
                [("source: trial (trained here), file (torch.export / TorchScript), robustbench (RobustBench's zoo), "
                  "python (a module handed to robustgrid.evaluate); sha256 of a trial's checkpoint: its rows' model_sha256")])


def lineage_rows(trials: pd.DataFrame) -> list[list[str]]:
    """One row per clone in each trial's lineage (trials.parquet's JSON column), its changed values as old→new."""
    rows = []
    for r in trials.to_dict("records"):
        if not isinstance(r.get("lineage"), str):
            continue
        for step in json.loads(r["lineage"]):
            changed = [f"{k} {_short(step['from_config'].get(k))}→{_short(v)}" for k, v in step["config"].items()
                       if step["from_config"].get(k) != v]
            rows.append([r["trial_id"], str(step["epoch"]), f"{step.get('to', '?')} ← {step['from']}",
                         ", ".join(changed) or "the same values"])
    return rows


def pareto_front(trials: pd.DataFrame, x: str = "best_val_accuracy", y: str = "best_robust_val_accuracy") -> pd.DataFrame:
    """The trials that no other trial dominates (at least as good on x and y, better on one), sorted by x."""
    if y not in trials:
        return trials.iloc[:0]
    pts = trials[trials[x].notna() & trials[y].notna()]
    if not len(pts):
        return pts
    keep = [not ((pts[x] >= r[x]) & (pts[y] >= r[y]) & ((pts[x] > r[x]) | (pts[y] > r[y]))).any()
            for r in pts.to_dict("records")]
    return pts[keep].sort_values(x, ascending=False)


def _model_rows(trials: pd.DataFrame, ev: pd.DataFrame) -> list[list[str]]:
    clean = clean_accuracy(ev) if len(ev) else pd.DataFrame()
    quants = list(dict.fromkeys(ev["quant"])) if len(ev) else ["fp32"]
    sizes = ev.groupby(["trial_id", "quant"])["model_bytes"].first() if "model_bytes" in ev else pd.Series(dtype=float)
    devices = ev.groupby(["trial_id", "quant"])["device"].first() if "device" in ev else pd.Series(dtype=object)
    rows = []
    for r in trials.to_dict("records"):
        tid = r["trial_id"]
        c = clean.loc[tid] if tid in clean.index else {}
        for q in quants:
            if (tid, q) not in sizes.index and q != "fp32":
                continue
            size = sizes.get((tid, q), r.get("fp32_bytes") if q == "fp32" else np.nan)
            rows.append([tid, q, str(devices.get((tid, q), r.get("device")) or "-"), mb(size), pct(c.get(q, np.nan))])
    return rows


def _value(v) -> str:
    return "-" if v is None or (isinstance(v, float) and pd.isna(v)) else f"{v:g}" if isinstance(v, float) else str(v)


def _short(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else _value(v)


def _int(v) -> str:
    return "-" if v is None or pd.isna(v) else str(int(v))


# --- eval pivots ---------------------------------------------------------------------------------

IMAGE_SET = ["n", "seed", "data_digest"]


def _setting_json(params: str) -> str:
    """The attack's own setting: the same in every defense's column (an adaptive cell's parameters also
    name its defense's gradient; a worst-case row lists the attacks it is over)."""
    p = AttackSetting.of_json(params).own
    p.pop("over", None)
    return json.dumps(p, sort_keys=True)


def pivot_views(ev: pd.DataFrame, flags: pd.DataFrame | None = None) -> list[View]:
    """eps x defense per (quant, source, attack) and per image set: the trials pooled; with both
    threat models, each defense's oblivious and adaptive columns side by side. A cell that a gradient-masking
    flag concerns carries its number (flags: masking_flags' rows, numbered from 1 as the warning table)."""
    if not len(ev):
        return []
    ev = ev.assign(flag_numbers=_flag_numbers(ev, flags))
    ev = ev.assign(data_digest=ev["data_digest"].fillna("") if "data_digest" in ev else "",
                   attack_params=ev["attack_params"].fillna("{}") if "attack_params" in ev else "{}",
                   threat=ev["threat"].fillna("oblivious") if "threat" in ev else "oblivious",
                   norm=ev["norm"].astype(object).fillna("linf") if "norm" in ev else "linf",
                   training=ev["training"].astype(object).fillna("none") if "training" in ev else "none")
    ev = ev.assign(attack_setting=ev["attack_params"].map(_setting_json))
    views = []
    # never two norms in one table; each training method its own table
    keys = ["training", "norm", "quant", "attack_source", "attack", "attack_setting", *IMAGE_SET]
    several_digests = ev.groupby(["n", "seed"])["data_digest"].nunique().max() > 1
    for (training, norm, q, src, attack, setting, n, seed, digest), part in ev.groupby(keys, sort=False):
        what = (f"worst case over every {NORM_LABELS[norm]} attack" if attack == "worst_case"
                else f"{attack}{_setting(setting)}")
        if src == "self" and part["attack_params"].map(lambda p: AttackSetting.of_json(p).through_twin).any():
            src = "self (white-box through its fake-quant twin, STE)"
        title = f"{what} accuracy %, {NORM_LABELS[norm]}, quant={q}, source={src}, n={n} images"
        if training != "none":
            title += f", trained {training}"
        if several_digests and digest:
            title += f" (images {digest[:8]})"
        views.append(pivot_view(part, title))
    return views


def _flag_numbers(ev: pd.DataFrame, flags: pd.DataFrame | None) -> list[tuple[int, ...]]:
    """Per eval row, the numbers of the flags raised on it."""
    from .robustness import FLAGGED_CELL, with_defaults
    if flags is None or not len(flags):
        return [()] * len(ev)
    numbers: dict[tuple, list[int]] = {}
    for i, r in enumerate(flags[FLAGGED_CELL].itertuples(index=False)):
        numbers.setdefault(tuple(map(str, r)), []).append(i + 1)
    rows = with_defaults(ev)[FLAGGED_CELL].itertuples(index=False)
    return [tuple(numbers.get(tuple(map(str, r)), ())) for r in rows]


def flags_view(flags: pd.DataFrame) -> list[View]:
    """The gradient-masking checks that fired, as a warning table (nothing when none did)."""
    if not len(flags):
        return []
    rows = [[str(i + 1), r["trial_id"], r["quant"], eps_label(r["eps"], r.get("norm", "linf")), r["defense"], r["check"]]
            for i, r in enumerate(flags.to_dict("records"))]
    notes = [f"[{i + 1}] {d}" for i, d in enumerate(flags["detail"])]
    notes.append("checks of Carlini et al. 2019, 'On Evaluating Adversarial Robustness': two cells are compared on "
                 "the same images, an exact one-sided McNemar test on the images they judge differently (alpha 0.05); "
                 "a flagged cell may overstate robustness; it is shown, never dropped")
    return [View(f"WARNING: {len(flags)} gradient-masking flag(s)", ["#", "trial", "quant", "eps", "defense", "check"],
                 rows, notes)]


def _setting(params: str) -> str:
    p = json.loads(params)
    shown = ", ".join(f"{k}={'auto' if v is None else v}" for k, v in p.items())
    return f" ({shown})" if p else ""


def pivot_view(ev: pd.DataFrame, title: str) -> View:
    """Each cell, one trial: its accuracy and its Wilson 95 % interval (over the cell's images) on a second
    line. Several trials: the mean of their accuracies and, on a second line, their min–max. A Wilson
    interval over the trials' images pooled would count the same test images once per model as if they
    were independent draws (too narrow), so none is drawn; each trial's own is in `show --trial`."""
    if "threat" not in ev:
        ev = ev.assign(threat="oblivious")
    columns = _defense_columns(ev)
    g = ev.groupby(["eps", "defense", "defense_params", "threat"], sort=True)
    stats = g.agg(correct=("correct", "sum"), n=("n", "sum"), mean=("accuracy", "mean"), lo=("accuracy", "min"),
                  hi=("accuracy", "max"), trials=("trial_id", "nunique"), rows=("accuracy", "size"))
    marks = g["flag_numbers"].agg(lambda s: sorted({k for t in s for k in t})) if "flag_numbers" in ev else None
    rows = []
    for eps in sorted(ev["eps"].unique()):
        cells = []
        for col in columns:
            if (eps, *col) not in stats.index:
                cells.append("-")
                continue
            r = stats.loc[(eps, *col)]
            flagged = marks.loc[(eps, *col)] if marks is not None else []
            mark = (" " + FLAG_MARK + ",".join(map(str, flagged))) if flagged else ""
            if r["rows"] == 1:
                lo, hi = wilson_interval(int(r["correct"]), int(r["n"]))
                cells.append(f"{100 * r['correct'] / r['n']:.1f}{mark}\n{100 * lo:.1f}–{100 * hi:.1f}")
            else:
                cells.append(f"{100 * r['mean']:.1f}{mark}\nr {100 * r['lo']:.1f}–{100 * r['hi']:.1f}")
        rows.append([eps_label(eps, ev["norm"].iloc[0] if "norm" in ev else "linf"), *cells])
    n_trials = ev["trial_id"].nunique()
    notes = ["each cell: accuracy %, then its Wilson 95 % interval over the cell's images" if n_trials == 1 else
             f"each cell: the mean accuracy % of {n_trials} trials, then r: their min–max (no interval over pooled "
             "trials: they share their test images; each trial's interval: show --trial ID)"]
    if "broken_by" in ev and ev["broken_by"].notna().any():
        notes.append("AutoAttack's components, in order, each on the images not yet broken in every cell that "
                     "scores them; the images each broke first (summed over the column's cells): " + _broken_by_note(ev))
    if "candidates" in ev and (ev["candidates"].fillna(1) > 1).any():
        notes.append("an image counts as robust only if none of the attack's candidates (each restart's and "
                     "target's) fools the real model behind the real defense")
    if "defense_draws" in ev and (ev["defense_draws"].fillna(1) > 1).any():
        notes.append("a randomized defense's cell counts an image only if it is right under every one of the "
                     "defender's draws (defense_params draws); the mean over draws is the column accuracy_draw_mean")
    if (ev["threat"] == "adaptive").any():
        notes.append("/a: adaptive, the attacker differentiates model o defense (BPDA); plain: oblivious, "
                     "the attacker ignores the defense")
    notes += _defense_notes(list(dict.fromkeys((d, p) for d, p, _ in columns)))
    if marks is not None and any(len(m) for m in marks):
        notes.append(f"{FLAG_MARK}k: gradient-masking flag k (the WARNING table) concerns this cell: it may overstate "
                     "robustness")
    notes.append(provenance_note(ev))
    return View(title, ["eps", *[_column_label(d, p, t, columns) for d, p, t in columns]], rows, notes)


FLAG_MARK = "⚑"


def provenance_note(ev: pd.DataFrame) -> str:
    """What made a table's cells, in one line: code (and whether its tree was dirty), torch, devices, runs, when."""
    def seen(col, fmt=str):
        return ", ".join(dict.fromkeys(fmt(v) for v in ev[col].dropna())) if col in ev and ev[col].notna().any() else "-"
    commits = seen("git_commit", lambda c: ",".join(part[:10] for part in str(c).split(",")))   # a mixed cell: each
    dirty = " (uncommitted changes)" if "git_dirty" in ev and ev["git_dirty"].fillna(False).astype(bool).any() else ""
    when = "-"
    if "created_at" in ev and ev["created_at"].notna().any():
        first, last = ev["created_at"].min(), ev["created_at"].max()
        when = f"{first:%Y-%m-%d %H:%M}–{last.strftime('%H:%M' if last.date() == first.date() else '%Y-%m-%d %H:%M')} UTC"
    return (f"made by robustgrid {seen('code_version')}, git {commits}{dirty}, torch {seen('torch_version')}, "
            f"on {seen('device')}; run {seen('run_id')}; {when}")


def _broken_by_note(ev: pd.DataFrame) -> str:
    totals: dict[str, int] = {}
    for b in ev["broken_by"].dropna():
        for k, v in json.loads(b).items():
            totals[k] = totals.get(k, 0) + v
    return ", ".join(f"{k} {v}" for k, v in totals.items())


def _defense_columns(ev: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(defense, params, threat), each defense's threats side by side (oblivious first)."""
    cols = list(dict.fromkeys(zip(ev["defense"], ev["defense_params"], ev["threat"])))
    order = {d: i for i, d in enumerate(dict.fromkeys((d, p) for d, p, _ in cols))}
    return sorted(cols, key=lambda c: (order[(c[0], c[1])], c[2] != "oblivious"))


def _column_label(defense: str, params: str, threat: str, columns: list[tuple[str, str, str]]) -> str:
    label = short_name(defense)
    if len({p for d, p, _ in columns if d == defense}) > 1:   # the same defense at two settings: say which
        label += " " + ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in json.loads(params).values())
    return label + ("/a" if threat == "adaptive" else "")


def _defense_notes(columns: list[tuple[str, str]]) -> list[str]:
    out = []
    for d, params in columns:
        p = json.loads(params)
        if p:
            out.append(f"{short_name(d)}: {d} " + " ".join(f"{k}={v}" for k, v in p.items()))
    return ["; ".join(out)] if out else []


# --- provenance ----------------------------------------------------------------------------------

PROVENANCE_COLUMNS = ["code_version", "git_commit", "git_dirty", "data_digest", "torch_version", "torchvision_version",
                      "opencv_version", "skimage_version", "ray_version"]


def provenance_view(trial_id: str, trials: pd.DataFrame, ev: pd.DataFrame) -> View:
    """What made a trial's rows: for training (its trials row) and for its eval cells (every value seen)."""
    t = trials[trials["trial_id"] == trial_id]
    cells = ev[ev["trial_id"] == trial_id]
    rows = []
    for col in PROVENANCE_COLUMNS:
        train = _values(t, col)
        evals = _values(cells, col)
        rows.append([col, train, evals])
    return View(f"provenance of {trial_id}", ["field", "training", "evaluation"], rows,
                ["data_digest: sha256 of the images and labels (training: the training split; evaluation: "
                 "the test images the cells saw); -: not recorded (results of an earlier release)"])


def _values(df: pd.DataFrame, col: str) -> str:
    if col not in df or not len(df):
        return "-"
    vals = [str(v) for v in dict.fromkeys(df[col].tolist()) if v is not None and not (isinstance(v, float) and pd.isna(v))]
    return "\n".join(vals) if vals else "-"


# --- CIFAR-10-C -------------------------------------------------------------------------------

def split_corruptions(ev: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(cells on the test images, cells on their CIFAR-10-C corruptions): every other view reads the first."""
    if "corruption" not in ev or not len(ev):
        return ev, ev.iloc[:0]
    corrupted = ev["corruption"].fillna("none") != "none"
    return ev[~corrupted], ev[corrupted]


def corruption_views(ev: pd.DataFrame, corrupted: pd.DataFrame) -> list[View]:
    """RobustBench's common-corruptions figure (the accuracy averaged over corruptions and severities) per trial,
    quant mode and defense, beside its accuracy on the uncorrupted images; then accuracy per corruption and
    severity."""
    if not len(corrupted):
        return []
    # one image set a group: its n and seed are part of the key, for the corrupted rows and the clean one beside them
    group = ["trial_id", "quant", "defense", "defense_params", "n", "seed"]
    clean = ev[ev["eps"] == 0].drop_duplicates(group).set_index(group)["accuracy"] if len(ev) else pd.Series(dtype=float)
    summary, tables = [], []
    for key, part in corrupted.groupby(group, sort=True):
        trial_id, quant, defense = key[:3]
        by_name = part.groupby("corruption")["accuracy"].mean()
        summary.append([trial_id, quant, defense, pct(clean.get(key)), pct(part["accuracy"].mean()),
                        f"{by_name.idxmin()} {pct(by_name.min())}", str(part["severity"].nunique()),
                        str(int(part["n"].iloc[0]))])
        sev = sorted(part["severity"].unique())
        grid = part.pivot_table(index="corruption", columns="severity", values="accuracy", aggfunc="first")
        rows = [[name] + [pct(grid.loc[name].get(s)) for s in sev] + [pct(by_name[name])] for name in grid.index]
        rows.append(["mean"] + [pct(part[part["severity"] == s]["accuracy"].mean()) for s in sev]
                    + [pct(part["accuracy"].mean())])
        tables.append(View(f"CIFAR-10-C accuracy %, {trial_id}, quant={quant}, defense={defense}, n={int(part['n'].iloc[0])}",
                           ["corruption"] + [f"severity {s}" for s in sev] + ["mean"], rows,
                           ["each cell: the accuracy on the first n test images under that corruption and severity"]))
    head = View("common corruptions (CIFAR-10-C)", ["trial", "quant", "defense", "clean %", "corruptions %",
                                                     "worst corruption %", "severities", "n"], summary,
                [("corruptions: the accuracy averaged over every corruption and severity evaluated (RobustBench's "
                  "figure with all 15 at severities 1-5); clean: the same model and defense on the uncorrupted images")],
                key_columns=3)
    return [head, *tables]


def quant_sizes_view(sizes: dict[str, tuple[int, dict[str, tuple[int, float]]]]) -> View:
    """`robustgrid models`: per model its parameters and, per quant mode, the MB it ships (its int8 share)."""
    from ...models import quant_mode
    modes = list(next(iter(sizes.values()))[1]) if sizes else []
    rows = [[name, f"{params:,}", *[f"{b / 1e6:.2f}" + (f"\n({share:.1%})" if share else "") for b, share in per.values()]]
            for name, (params, per) in sizes.items()]
    columns = ["model", "parameters", *[q + (" (notebook)" if quant_mode(q).notebook else "") for q in modes]]
    return View("models: MB shipped per quant mode (int8 share of the parameters)", columns, rows,
                ["int8_static (PT2E) quantizes convolutions, linears and residual adds; the Linear-only modes "
                 "(dynamic_int8, int8_dynamic, int8_weight_only) reach only a ResNet's classifier: a share near 0 % "
                 "means the mode does not apply to that model"])
