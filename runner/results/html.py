"""One self-contained HTML page of a results folder: the tables `show` prints (sortable), the plots inline,
a summary with provenance. No CDN, no server: it opens anywhere and prints to PDF. Every value from the
folder is escaped by the template engine (jinja2 autoescape)."""
from __future__ import annotations

import base64
from pathlib import Path

import pandas as pd
import yaml

from .views import View


def render_html(views: list[View], title: str = "robustgrid results", description: str = "",
                summary: list[tuple[str, str]] = (), plots: list[Path] = ()) -> str:
    from jinja2 import Environment, PackageLoader, select_autoescape
    env = Environment(loader=PackageLoader("robustgrid.runner.results", "templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True))
    images = [(p.name, base64.b64encode(p.read_bytes()).decode()) for p in plots]
    return env.get_template("report.html.j2").render(title=title, description=description, summary=list(summary),
                                                     views=views, plots=images)


def folder_summary(root: Path, trials: pd.DataFrame, ev: pd.DataFrame) -> tuple[str, str, list[tuple[str, str]]]:
    """(title, description, rows) of a results folder: what ran, where, when, with which code."""
    raw = yaml.safe_load((root / "sweep.yaml").read_text()) if (root / "sweep.yaml").exists() else {}
    raw = raw if isinstance(raw, dict) else {}
    rows = [("folder", str(root)), ("trials", f"{len(trials)} ({(trials['status'] == 'ok').sum() if len(trials) else 0} ok)"),
            ("cells", str(len(ev))), ("runs", ", ".join(sorted(set(ev.get("run_id", pd.Series(dtype=str)).dropna()))) or "-")]
    if len(ev):
        if ev["created_at"].notna().any():
            rows.append(("evaluated", f"{ev['created_at'].min():%Y-%m-%d %H:%M} – {ev['created_at'].max():%Y-%m-%d %H:%M} UTC"))
        for col in ("git_commit", "code_version", "torch_version", "device"):
            if col in ev:
                rows.append((col.replace("_", " "), ", ".join(sorted({str(v) for v in ev[col].dropna()})) or "-"))
        rows.append(("image sets", ", ".join(f"n={n} ({d})" for n, d in
                                             sorted(set(zip(ev["n"], ev["data_digest"].fillna("")))))))
    return f"robustgrid: {raw.get('name', root.name)}", str(raw.get("description", "")), rows
