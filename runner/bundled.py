"""Sweep files that ship inside the package: listed by `robustgrid sweeps`, run by name."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml

from .spec import SpecError


def bundled_sweeps() -> dict[str, tuple[Path, str]]:
    """name -> (path, one-line description), from the sweep files' `name` and `description`."""
    folder = resources.files("robustgrid.sweeps")
    out = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            raw = yaml.safe_load(entry.read_text()) or {}
            out[entry.name.removesuffix(".yaml")] = (Path(str(entry)), str(raw.get("description", "")))
    return out


def resolve_sweep(arg: str) -> Path:
    """A path to a sweep file, or the name of one that comes with robustgrid ('quickstart')."""
    path = Path(arg).expanduser()
    if path.exists():
        return path
    bundled = bundled_sweeps()
    name = path.name.removesuffix(".yaml")
    # 'quickstart', 'quickstart.yaml' or the README's 'sweeps/quickstart.yaml' outside the checkout
    if path.parent in (Path("."), Path("sweeps")) and name in bundled:
        return bundled[name][0]
    raise SpecError(f"{arg}: sweep file not found (and no bundled sweep of that name; "
                    f"bundled: {', '.join(bundled)}; `robustgrid sweeps` lists them)")
