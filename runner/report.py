"""Views of the Parquet tables: rich tables in the terminal, PNG plots under plots/."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from rich.table import Table

from .console import console
from .stats import wilson_interval
from .store import ResultStore


def _mb(b) -> str:
    return "-" if pd.isna(b) else f"{b / 1e6:.2f}"


def _pct(v) -> str:
    return "-" if pd.isna(v) else f"{100 * v:.2f}"


def clean_accuracy(ev: pd.DataFrame) -> pd.DataFrame:
    """Accuracy without attack or defense, per trial and quant mode."""
    clean = ev[(ev["eps"] == 0) & (ev["defense"] == "none") & (ev["attack_source"] == "self")]
    return clean.groupby(["trial_id", "quant"])["accuracy"].first().unstack("quant")


def trials_table(trials: pd.DataFrame, ev: pd.DataFrame, axes: list[str]) -> Table:
    t = Table(title="trials")
    for col in ["trial", *axes, "status", "epochs", "best val %", "test %", "clean fp32 %", "clean int8 %",
                "fp32 MB", "int8 MB", "device", "seconds"]:
        t.add_column(col, justify="right" if col not in ("trial", "status", "device") else "left")
    clean = clean_accuracy(ev) if len(ev) else pd.DataFrame()
    for r in trials.sort_values("trial_id").to_dict("records"):
        c = clean.loc[r["trial_id"]] if r["trial_id"] in clean.index else {}
        t.add_row(r["trial_id"], *[str(r.get(a, "")) for a in axes], r["status"] if r["status"] == "ok" else f"[red]{r['status']}[/red]",
                  str(r.get("epochs_run") or "-"), _pct(r.get("best_val_accuracy")), _pct(r.get("test_accuracy")),
                  _pct(c.get("fp32", np.nan)), _pct(c.get("dynamic_int8", np.nan)),
                  _mb(r.get("fp32_bytes")), _mb(r.get("int8_bytes")), str(r.get("device") or "-"),
                  "-" if pd.isna(r.get("seconds")) else f"{r['seconds']:.0f}")
    return t


def pivot_table(ev: pd.DataFrame, title: str) -> Table:
    """eps x defense: the trials' test images pooled (sum of correct / sum of n, equal to the
    mean accuracy when every trial saw the same n) with the Wilson 95 % interval of that pool.
    The interval covers test-set sampling only, not trial-to-trial spread, shown as a range."""
    g = ev.groupby(["eps", "defense"], sort=True)
    pooled = g.agg(correct=("correct", "sum"), n=("n", "sum"), lo=("accuracy", "min"), hi=("accuracy", "max"),
                   trials=("trial_id", "nunique"))
    defenses = list(dict.fromkeys(ev["defense"]))
    t = Table(title=title)
    t.add_column("eps", justify="right")
    for d in defenses:
        t.add_column(f"{d} %", justify="right")
    for eps in sorted(ev["eps"].unique()):
        cells = []
        for d in defenses:
            if (eps, d) not in pooled.index:
                cells.append("-")
                continue
            r = pooled.loc[(eps, d)]
            lo, hi = wilson_interval(int(r["correct"]), int(r["n"]))
            spread = f" [dim]range {100 * r['lo']:.1f}–{100 * r['hi']:.1f}[/dim]" if r["trials"] > 1 else ""
            cells.append(f"{100 * r['correct'] / r['n']:.1f} [dim]({100 * lo:.1f}–{100 * hi:.1f})[/dim]{spread}")
        t.add_row(f"{eps:.4f} ({eps * 255:.0f}/255)" if eps else "0", *cells)
    return t


def show(root: Path, quant: list[str] | None = None, defense: list[str] | None = None,
         trial: list[str] | None = None) -> None:
    store = ResultStore(root)
    trials, ev = store.read("trials"), store.read_eval()
    if trial:
        trials, ev = trials[trials["trial_id"].isin(trial)], ev[ev["trial_id"].isin(trial)]
    axes = grid_axes(root)
    console.print(trials_table(trials, ev, axes))
    if quant:
        ev = ev[ev["quant"].isin(quant)]
    if defense:
        ev = ev[ev["defense"].isin(defense)]
    n_trials = ev["trial_id"].nunique()
    for (q, src), part in ev.groupby(["quant", "attack_source"], sort=False):
        for attack, sub in part.groupby("attack"):
            n = int(sub["n"].iloc[0])
            console.print(pivot_table(sub, f"{attack} accuracy, quant={q}, source={src}, n={n} images, "
                                           f"{n_trials} trial(s) pooled; 95 % Wilson CI" + (", range over trials" if n_trials > 1 else "")))


def grid_axes(root: Path) -> list[str]:
    import yaml
    p = Path(root) / "sweep.yaml"
    if not p.exists():
        return []
    raw = yaml.safe_load(p.read_text()) or {}
    return [k for k, v in (raw.get("train") or {}).items() if isinstance(v, dict)]


# --- plots ----------------------------------------------------------------------------------

def plot_all(root: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    store = ResultStore(root)
    ev = store.read_eval()
    out = []
    plots = Path(root) / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    for trial_id, part in ev.groupby("trial_id"):
        out.append(plot_accuracy_vs_eps(part, plots / f"accuracy_vs_eps_{trial_id}.png", trial_id))
    for npz in sorted((Path(root) / "examples").glob("*.npz")):
        out.append(plot_examples(npz, plots / f"examples_{npz.stem}.png"))
    return out


def plot_accuracy_vs_eps(ev: pd.DataFrame, path: Path, title: str) -> Path:
    import matplotlib.pyplot as plt
    panels = list(ev.groupby(["quant", "attack_source"], sort=False))
    fig, axs = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False, sharey=True)
    for ax, ((q, src), part) in zip(axs[0], panels):
        for d, sub in part.groupby("defense", sort=False):
            sub = sub.sort_values("eps")
            ax.plot(sub["eps"], 100 * sub["accuracy"], marker="o", label=d)
            ax.fill_between(sub["eps"], 100 * sub["ci_low"], 100 * sub["ci_high"], alpha=0.15)
        ax.set_title(f"{q}, source={src}")
        ax.set_xlabel("FGSM eps (pixel scale [0,1])")
        ax.grid(alpha=0.3)
    axs[0][0].set_ylabel("accuracy %")
    axs[0][-1].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
    return path


def plot_examples(npz: Path, path: Path) -> Path:
    import matplotlib.pyplot as plt
    d = np.load(npz)
    images, preds, labels, titles, classes = d["images"], d["preds"], d["labels"], d["titles"], d["classes"]
    p, k = images.shape[:2]
    fig, axs = plt.subplots(k, p, figsize=(1.9 * p, 2.0 * k), squeeze=False)
    for j in range(k):
        for i in range(p):
            ax = axs[j][i]
            ax.imshow(images[i, j].transpose(1, 2, 0), interpolation="nearest")
            ok = preds[i, j] == labels[j]
            ax.set_title(f"{titles[i]}\n{classes[preds[i, j]]}" if j == 0 else str(classes[preds[i, j]]),
                         fontsize=7, color="green" if ok else "red")
            ax.axis("off")
    fig.suptitle(f"predictions of the FP32 model (true: {', '.join(str(classes[l]) for l in labels)})", fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    return path


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
