"""`robustgrid show`: a results folder's views, filtered, in the format asked for."""
from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from ..evaluate.plan import eps_key
from .render import render
from .robustness import masking_flags, worst_case
from .store import ResultStore
from .views import (
    View,
    corruption_views,
    eps_label,
    flags_view,
    grid_axes,
    pivot_views,
    provenance_view,
    search_metric,
    split_corruptions,
    trials_views,
)

# show's filters: option -> eval column (eps compares as a number, n as an integer)
FILTERS = {"quant": "quant", "defense": "defense", "trial": "trial_id", "attack": "attack", "source": "attack_source",
           "threat": "threat", "norm": "norm", "eps": "eps", "n": "n"}


class NothingMatched(ValueError):
    """A filter of `show` that no cell of the folder matches (the message says what the folder holds)."""


def filter_cells(ev, **filters):
    """The cells every given filter admits; NothingMatched (naming the values present) where one admits none."""
    for name, values in filters.items():
        if not values:
            continue
        col = FILTERS[name]
        wanted = {eps_key(v) for v in values} if name == "eps" else {int(v) for v in values} if name == "n" else set(values)
        have = eps_key(ev[col]) if name == "eps" else ev[col]
        kept = ev[have.isin(wanted)]
        if not len(kept):
            label = eps_label if name == "eps" else str     # 16/255, never 0.06274509803921569
            present = [label(v) for v in sorted(set(ev[col].dropna()), key=lambda v: (isinstance(v, str), v))]
            raise NothingMatched(f"no cell matches --{name} {' '.join(label(float(v)) if name == 'eps' else str(v) for v in values)} "
                                 f"(this folder has: {', '.join(present) or 'no cells'})")
        ev = kept
    return ev


def views_of(root: Path, quant: list[str] | None = None, defense: list[str] | None = None,
             trial: list[str] | None = None, **filters) -> list[View]:
    store = ResultStore(root)
    trials, (ev, corrupted) = store.read("trials"), split_corruptions(store.read_eval())
    if trial:
        if not trials["trial_id"].isin(trial).any():
            raise NothingMatched(f"no trial matches --trial {' '.join(trial)} (this folder has: "
                                 f"{', '.join(sorted(trials['trial_id'])) or 'no trials'})")
        trials, ev = trials[trials["trial_id"].isin(trial)], ev[ev["trial_id"].isin(trial)]
        corrupted = corrupted[corrupted["trial_id"].isin(trial)]
    # the models table lists the quant modes asked for (a size and clean accuracy per mode), the rest of the trials table all
    views = trials_views(trials, filter_cells(ev, quant=quant), grid_axes(root), search_metric(root))
    if trial:
        views += [provenance_view(t, trials, ev) for t in trial]
    if len(corrupted):
        views += corruption_views(filter_cells(ev, quant=quant, defense=defense),
                                  filter_cells(corrupted, quant=quant, defense=defense))
    ev = filter_cells(ev, quant=quant, defense=defense, **filters)
    worst = worst_case(ev)
    # shown wherever a cell set has more than one attack setting, source or threat to take the worst of
    several = worst[worst["attack_params"].map(lambda p: len(json.loads(p)["over"]) > 1)] if len(worst) else worst
    flags = masking_flags(ev, trials=trials)
    return views + pivot_views(ev, flags) + (pivot_views(several) if len(several) else []) + flags_view(flags)


def show(root: Path, quant: list[str] | None = None, defense: list[str] | None = None,
         trial: list[str] | None = None, fmt: str = "rich", console: Console | None = None, **filters) -> None:
    text = render(views_of(root, quant, defense, trial, **filters), fmt, console)
    if text is not None:
        print(text, end="")


def write_report(root: Path, out: Path | None = None) -> Path:
    """`robustgrid report`: the folder's tables, plots and provenance as one HTML file (atomic write)."""
    from ...files import atomic_write
    from .html import folder_summary, render_html
    from .plots import plot_all
    root = Path(root)
    store = ResultStore(root)
    trials, ev = store.read("trials"), store.read_eval()
    views = views_of(root) + [provenance_view(t, trials, ev) for t in sorted(trials["trial_id"])]
    title, description, summary = folder_summary(root, trials, ev)
    page = render_html(views, title, description, summary, plot_all(root))
    out = Path(out) if out else root / "report.html"
    with atomic_write(out, "w") as f:
        f.write(page)
    return out
