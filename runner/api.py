"""The notebook API, thin over what the CLI does.

    import robustgrid
    res = robustgrid.run("quickstart", overrides=["train.epochs=1"])   # a file, a bundled name, or a dict
    res.eval.pivot_table(index="eps", columns="defense", values="accuracy")
    res = robustgrid.evaluate(my_module, out="results/mine")           # a model robustgrid did not train
    res = robustgrid.load("results/quickstart")                        # an existing results folder
    res.plot()                                                         # PNGs under plots/, their paths
"""
from __future__ import annotations

import copy
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from torch import nn

from .results import ResultStore, plot_all, views_of, write_report
from .results.render import render
from .results.store import results_folder


@dataclass(frozen=True)
class Results:
    """A results folder as tidy DataFrames with the schema's dtypes (pyarrow-backed where pandas has none)."""
    root: Path

    def _store(self) -> ResultStore:
        return ResultStore(self.root)

    @property
    def eval(self) -> pd.DataFrame:
        """One row per cell (see the README's schema)."""
        return self._store().read_eval()

    @property
    def trials(self) -> pd.DataFrame:
        return self._store().read("trials")

    @property
    def epochs(self) -> pd.DataFrame:
        return self._store().read("epochs")

    def table(self, fmt: str = "markdown", **filters) -> str | None:
        """The views `robustgrid show` prints, as markdown / csv / json text (or rich, printed)."""
        return render(views_of(self.root, **filters), fmt)

    def plot(self) -> list[Path]:
        return plot_all(self.root)

    def report(self, out: str | os.PathLike | None = None) -> Path:
        """The folder as one self-contained HTML page (robustgrid report); its path."""
        return write_report(self.root, Path(out) if out else None)

    def __repr__(self) -> str:
        """A summary, not a path: the sweep, its trials and cells, the image sets and runs they came from."""
        trials, ev = self.trials, self._store().read_eval(columns=["run_id", "n", "data_digest", "trial_id"])
        ok = int((trials["status"] == "ok").sum()) if len(trials) else 0
        sets = sorted({f"n={n}" for n in ev["n"]}) if len(ev) else []
        runs = ev["run_id"].nunique() if len(ev) else 0
        return (f"Results({str(self.root)!r}: {len(trials)} trials ({ok} ok), {len(ev)} cells"
                f"{' on ' + ', '.join(sets) if sets else ''}{f' from {runs} runs' if runs > 1 else ''}; "
                ".eval .trials .epochs .table() .plot() .report())")

    def _repr_markdown_(self) -> str:
        return render(views_of(self.root), "markdown")

    def _repr_html_(self) -> str:
        """In a notebook: the tables `show` prints, as HTML."""
        return render(views_of(self.root), "html")


def load(root: str | os.PathLike) -> Results:
    """A results folder, or an s3:// URI (its tables fetched into a working copy)."""
    return Results(results_folder(root))


def run(sweep: str | os.PathLike | dict[str, Any], out: str | os.PathLike | None = None,
        overrides: Iterable[str] = (), executor: str = "ray", address: str | None = None,
        resume: bool = False) -> Results:
    """Run a sweep (a file, a bundled sweep's name, or a dict shaped like a sweep file) as
    `robustgrid run` does, through the same run flow (its checks, the folder's lock); returns its results.
    A bad sweep raises SpecError naming the key path; a folder another run holds raises FolderBusy."""
    from .spec import load_spec, set_override, validate
    if isinstance(sweep, dict):
        raw = copy.deepcopy(sweep)
        for assignment in overrides:
            set_override(raw, assignment)
        spec = validate(raw)
    else:
        from .bundled import resolve_sweep
        spec, raw = load_spec(resolve_sweep(str(sweep)), list(overrides))
    return _run(spec, raw, out, executor, address, resume)


def evaluate(model: nn.Module | str | list, out: str | os.PathLike | None = None, data: dict | None = None,
             evaluate: dict | None = None, overrides: Iterable[str] = (), executor: str = "ray",
             address: str | None = None, name: str = "evaluate") -> Results:
    """Evaluate models robustgrid did not train, as `robustgrid eval --model` does: `model` is an nn.Module
    (taking [0, 1] images, returning logits), a model spec (a .pt2 / TorchScript path, `robustbench:NAME`,
    or a dict as under a sweep file's `models:`), or a list of these. data / evaluate: the sweep file's
    sections (default: CIFAR-10, the default grid)."""
    from .spec import set_override, validate
    given = model if isinstance(model, list) else [model]
    modules = [m for m in given if isinstance(m, nn.Module)]
    raw = {"name": name, "data": dict(data or {}), "models": [m for m in given if not isinstance(m, nn.Module)],
           "evaluate": dict(evaluate or {})}
    for assignment in overrides:
        set_override(raw, assignment)
    return _run(validate(raw), raw, out, executor, address, False, modules)


def _run(spec, raw: dict, out, executor: str, address: str | None, resume: bool, modules: list = ()) -> Results:
    from .execute.run import run_sweep
    if executor == "inline":
        return Results(run_sweep(spec, raw, out, "inline", modules=modules).out)
    import ray
    ours = not ray.is_initialized()       # a Ray the user started in the kernel stays; ours ends with the run
    try:
        return Results(run_sweep(spec, raw, out, "ray", address, resume, modules=modules).out)
    finally:
        if ours and ray.is_initialized():
            ray.shutdown()


def list_sweeps() -> pd.DataFrame:
    """The sweep files that come with robustgrid: name, description, path."""
    from .bundled import bundled_sweeps
    return pd.DataFrame([{"name": n, "description": d, "path": str(p)} for n, (p, d) in bundled_sweeps().items()])
