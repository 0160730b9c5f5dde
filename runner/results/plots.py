"""PNG plots of a results folder: accuracy against eps per trial, example panels like the notebooks'."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ...files import atomic_write
from ..evaluate.plan import through_twin
from .store import ResultStore
from .views import NORM_LABELS


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
    """A panel per (quant, source, attack); a line per defense, dashed where the attacker is adaptive."""
    import matplotlib.pyplot as plt
    ev = ev.assign(threat=ev["threat"].fillna("oblivious"),
                   norm=ev["norm"].astype(object).fillna("linf") if "norm" in ev else "linf")
    panels = list(ev.groupby(["quant", "attack_source", "attack", "norm"], sort=False))   # one norm an axis
    cols = min(4, len(panels))                    # wrap: a quant sweep has two dozen panels
    rows = -(-len(panels) // cols)
    fig, axs = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False, sharey=True)
    axes = list(axs.flat)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax, ((q, src, attack, norm), part) in zip(axes, panels):
        several_n = part["n"].nunique() > 1      # cells that saw different images are separate lines
        colours = {d: f"C{i}" for i, d in enumerate(dict.fromkeys(part["defense"]))}
        for (d, _, n, threat), sub in part.groupby(["defense", "defense_params", "n", "threat"], sort=False):
            sub = sub.sort_values("eps")
            label = d + (" adaptive" if threat == "adaptive" else "") + (f" (n={n})" if several_n else "")
            style = "--" if threat == "adaptive" else "-"
            ax.plot(sub["eps"], 100 * sub["accuracy"], style, marker="o", color=colours[d], label=label)
            ax.fill_between(sub["eps"], 100 * sub["ci_low"], 100 * sub["ci_high"], alpha=0.15, color=colours[d])
        ste = src == "self" and "attack_params" in part and part["attack_params"].map(through_twin).any()
        ax.set_title(f"{attack} {NORM_LABELS[norm]}: {q}, source={src}" + (" (STE twin)" if ste else ""))
        ax.set_xlabel(f"eps, {NORM_LABELS[norm]} radius (pixel scale [0,1])")
        ax.grid(alpha=0.3)
    for row in axs:
        row[0].set_ylabel("accuracy %")
    axes[len(panels) - 1].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / (3.6 * rows)))   # room for the suptitle
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
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
