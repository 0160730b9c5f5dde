"""PNG plots of a results folder: accuracy against eps per trial, example panels like the notebooks'."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ...files import atomic_write
from ..evaluate.settings import AttackSetting
from .store import ResultStore
from .views import NORM_LABELS, eps_label, grid_axes, pareto_front, search_metric, searched_keys, split_corruptions


def plot_all(root: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    store = ResultStore(root)
    ev = split_corruptions(store.read_eval())[0]      # the plots draw the test images' cells
    out = []
    plots = Path(root) / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    trials = store.read("trials").set_index("trial_id")
    axes = grid_axes(root)
    for trial_id, part in ev.groupby("trial_id"):
        out.append(plot_accuracy_vs_eps(part, plots / f"accuracy_vs_eps_{trial_id}.png", _trial_title(trial_id, trials, axes)))
    if ev["trial_id"].nunique() > 1:
        out.append(plot_pooled(ev, plots / "accuracy_vs_eps_pooled.png"))
    if "training" in ev and ev["training"].fillna("none").nunique() > 1:
        out.append(plot_training_methods(ev, plots / "robust_accuracy_by_training.png"))
    trials = trials.reset_index()
    if "best_robust_val_accuracy" in trials and trials["best_robust_val_accuracy"].notna().sum() > 1:
        out.append(plot_pareto(trials, plots / "pareto_clean_robust.png"))
    keys, metric = searched_keys(root), search_metric(root)
    if keys and metric in trials and trials[metric].notna().sum() > 1:
        out.append(plot_search(trials, keys, metric, plots / "search_metric_by_key.png"))
    for npz in sorted((Path(root) / "examples").glob("*.npz")):
        out.append(plot_examples(npz, plots / f"examples_{npz.stem}.png"))
    return out


def _trial_title(trial_id: str, trials: pd.DataFrame, axes: list[str]) -> str:
    """What sets the trial apart (the sweep's varied keys, its model and training method), then its id."""
    if trial_id not in trials.index:
        return trial_id
    row = trials.loc[trial_id]
    keys = list(dict.fromkeys(["model", *axes, *(["adversarial"] if row.get("adversarial") not in (None, "none") else [])]))
    return ", ".join(f"{k}={row[k]:g}" if isinstance(row[k], float) else f"{k}={row[k]}" for k in keys if k in row) + f"  ({trial_id})"


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
        ste = src == "self" and "attack_params" in part and part["attack_params"].map(lambda p: AttackSetting.of_json(p).through_twin).any()
        ax.set_title(f"{attack} {NORM_LABELS[norm]}: {q}, source={src}" + (" (STE twin)" if ste else ""))
        ticks = sorted(part["eps"].unique())
        ax.set_xticks(ticks, [eps_label(e, norm) for e in ticks], fontsize=7)   # as the tables say it: k/255
        ax.set_xlabel(f"eps, {NORM_LABELS[norm]} radius")
        ax.grid(alpha=0.3)
    for row in axs:
        row[0].set_ylabel("accuracy %")
    labels = {}     # one legend for the figure, below the panels, each line once
    for ax in axes[:len(panels)]:
        for h, lb in zip(*ax.get_legend_handles_labels()):
            labels.setdefault(lb, h)
    fig.legend(list(labels.values()), list(labels), loc="lower center", ncol=min(6, len(labels)), fontsize=7)
    fig.suptitle(title)
    legend_rows = -(-len(labels) // 6)
    fig.tight_layout(rect=(0, 0.3 * legend_rows / (3.6 * rows), 1, 1 - 0.45 / (3.6 * rows)))   # room for both
    _save(fig, path)
    return path


TRAINING_ORDER = ("none", "fgsm_rs", "pgd", "trades")     # standard first, then the cheap to the costly


def plot_pooled(ev: pd.DataFrame, path: Path) -> Path:
    """Every trial pooled: per (quant, source, attack, norm) panel and (defense, threat) line, the mean of the
    trials' accuracies with a band from the lowest to the highest trial (no interval over pooled trials).
    The largest image set only, so lines never mix image sets."""
    import matplotlib.pyplot as plt
    ev = ev.assign(threat=ev["threat"].fillna("oblivious"), norm=ev["norm"].astype(object).fillna("linf"))
    ev = ev[ev["n"] == ev["n"].max()]
    panels = list(ev.groupby(["quant", "attack_source", "attack", "norm"], sort=False))
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axs = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False, sharey=True)
    axes = list(axs.flat)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    labels = {}
    for ax, ((q, src, attack, norm), part) in zip(axes, panels):
        colours = {d: f"C{i}" for i, d in enumerate(dict.fromkeys(part["defense"]))}
        for (d, threat), sub in part.groupby(["defense", "threat"], sort=False):
            stats = sub.groupby("eps")["accuracy"].agg(["mean", "min", "max"]) * 100
            label = d + (" adaptive" if threat == "adaptive" else "")
            (line,) = ax.plot(stats.index, stats["mean"], "--" if threat == "adaptive" else "-", marker="o",
                              color=colours[d], label=label)
            ax.fill_between(stats.index, stats["min"], stats["max"], alpha=0.15, color=colours[d])
            labels.setdefault(label, line)
        ticks = sorted(part["eps"].unique())
        ax.set_xticks(ticks, [eps_label(e, norm) for e in ticks], fontsize=7)
        ax.set_title(f"{attack} {NORM_LABELS[norm]}: {q}, source={src}", fontsize=9)
        ax.grid(alpha=0.3)
    for row in axs:
        row[0].set_ylabel("accuracy %")
    fig.legend(list(labels.values()), list(labels), loc="lower center", ncol=min(6, len(labels)), fontsize=7)
    fig.suptitle(f"mean over {ev['trial_id'].nunique()} trials (band: the lowest to the highest trial), "
                 f"n={ev['n'].max()} images")
    legend_rows = -(-len(labels) // 6)
    fig.tight_layout(rect=(0, 0.3 * legend_rows / (3.6 * rows), 1, 1 - 0.45 / (3.6 * rows)))
    _save(fig, path)
    return path


def training_bars(ev: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """What plot_training_methods draws: per panel (attack, norm, quant, source, threat at its largest eps; the
    largest image set) a table of accuracy, ci_low, ci_high with a row per defense and a column group per trial,
    the trial labelled with its training method (and its id where two trials share a method)."""
    ev = ev.assign(training=ev["training"].astype(object).fillna("none"), threat=ev["threat"].fillna("oblivious"),
                   norm=ev["norm"].astype(object).fillna("linf"))
    ev = ev[(ev["n"] == ev["n"].max()) & (ev["eps"] > 0)]
    ev = ev[ev["eps"] == ev.groupby("norm")["eps"].transform("max")]
    ev = ev.assign(**{c: ev[c].fillna("{}") if c in ev else "{}" for c in ("attack_params", "defense_params")})
    method = ev.groupby("trial_id")["training"].first()
    shared = method.map(method.value_counts()) > 1
    label = {t: m + (f" ({t})" if shared[t] else "") for t, m in method.items()}
    order = {m: i for i, m in enumerate(TRAINING_ORDER)}
    labels = sorted(label.values(), key=lambda lb: (order.get(lb.split(" ")[0], len(order)), lb))
    ev = ev.assign(label=ev["trial_id"].map(label))
    out = {}
    panels = ["attack", "attack_params", "norm", "quant", "attack_source", "threat"]
    for (attack, params, norm, q, src, threat), part in ev.groupby(panels, sort=False):
        many = ev[ev["attack"] == attack]["attack_params"].nunique() > 1
        title = (f"{attack}{' ' + params if many else ''} {NORM_LABELS[norm]} {eps_label(part['eps'].iloc[0], norm)}: "
                 f"{q}, source={src}, {threat}")
        # a bar is one cell: two settings of a defense are two rows, never their mean
        settings = part.groupby("defense")["defense_params"].transform("nunique") > 1
        part = part.assign(defense=part["defense"].where(~settings, part["defense"] + " " + part["defense_params"]))
        if part.duplicated(["defense", "label"]).any():
            raise ValueError(f"{title}: two cells for one bar")
        out[title] = part.pivot_table(index="defense", columns="label", values=["accuracy", "ci_low", "ci_high"],
                                      sort=False, aggfunc="first").reindex(columns=labels, level=1)
    return out


def plot_training_methods(ev: pd.DataFrame, path: Path) -> Path:
    """Training methods side by side: a group of bars per defense, a bar per trial, its Wilson interval as the
    error bar (per trial: never pooled)."""
    import matplotlib.pyplot as plt
    panels = training_bars(ev)
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axs = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False, sharey=True)
    for ax in list(axs.flat)[len(panels):]:
        ax.set_visible(False)
    for ax, (title, table) in zip(axs.flat, panels.items()):
        labels = list(table["accuracy"].columns)
        width = 0.8 / len(labels)
        x = np.arange(len(table))
        for i, label in enumerate(labels):
            acc = 100 * table["accuracy"][label].to_numpy(float)
            err = np.vstack([acc - 100 * table["ci_low"][label].to_numpy(float),
                             100 * table["ci_high"][label].to_numpy(float) - acc])
            ax.bar(x + i * width, acc, width, yerr=err, capsize=2, color=f"C{i}", label=label)
        ax.set_title(title, fontsize=9)
        ax.set_xticks(x + 0.4 - width / 2, list(table.index), rotation=30, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    for row in axs:
        row[0].set_ylabel("robust accuracy %")
    handles, labels = axs.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.suptitle("robust accuracy by training method (bars: Wilson 95 % per trial)")
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    _save(fig, path)
    return path


def plot_pareto(trials: pd.DataFrame, path: Path) -> Path:
    """Clean against robust validation accuracy, a point per trial (marked by training method), the
    Pareto front joined."""
    import matplotlib.pyplot as plt
    t = trials[trials["best_val_accuracy"].notna() & trials["best_robust_val_accuracy"].notna()]
    method = t["adversarial"].astype(object).fillna("none") if "adversarial" in t else pd.Series("none", index=t.index)
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for i, (m, part) in enumerate(t.groupby(method, sort=False)):
        ax.scatter(100 * part["best_val_accuracy"], 100 * part["best_robust_val_accuracy"], color=f"C{i}", label=m, zorder=3)
    front = pareto_front(t).sort_values("best_val_accuracy")
    ax.plot(100 * front["best_val_accuracy"], 100 * front["best_robust_val_accuracy"], "k--", lw=1, label="Pareto front")
    ax.set_xlabel("validation accuracy % (clean)")
    ax.set_ylabel("robust validation accuracy % (PGD-10)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(f"clean vs robust, {len(t)} trials")
    fig.tight_layout()
    _save(fig, path)
    return path


def plot_search(trials: pd.DataFrame, keys: dict[str, bool], metric: str, path: Path) -> Path:
    """The search's metric against each searched key, a point per finished trial (log axes where the key was
    drawn log-uniformly; a choice of labels as categories), the best trial ringed."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter
    t = trials[trials[metric].notna()]
    fig, axs = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.4), squeeze=False, sharey=True)
    best = t[metric].idxmax()
    for ax, (key, log) in zip(axs[0], keys.items()):
        x = t[key] if pd.api.types.is_numeric_dtype(t[key]) else t[key].astype(str)
        ax.scatter(x, 100 * t[metric], color="C0", zorder=3)
        ax.scatter([x.loc[best]], [100 * t.loc[best, metric]], s=160, facecolors="none", edgecolors="C3", zorder=4,
                   label="best")
        if log:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())     # minor labels overlap within a decade
        ax.set_xlabel(key)
        ax.grid(alpha=0.3)
    axs[0][0].set_ylabel(metric.removeprefix("best_").replace("_", " ") + " %")
    fig.legend(*axs[0][0].get_legend_handles_labels(), loc="lower center", ncol=1, fontsize=8, frameon=False)
    fig.suptitle(f"{metric.removeprefix('best_').replace('_', ' ')} of {len(t)} searched trials", fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    _save(fig, path)
    return path


def plot_examples(npz: Path, path: Path) -> Path:
    import matplotlib.pyplot as plt
    d = np.load(npz)
    images, preds, labels, titles, classes = d["images"], d["preds"], d["labels"], list(d["titles"]), d["classes"]
    if "eps" in d and len(titles) > 1:      # older files carry eps in the title already
        titles[1] = f"{titles[1]} {eps_label(float(d['eps']), str(d['norm']))}"
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
    fig.text(0.5, 0.005, "label colour: green = predicted right, red = wrong", ha="center", fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    _save(fig, path)
    return path


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
