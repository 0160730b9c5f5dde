"""A live rich view of the trials while a sweep runs. It displays the rows it is handed, nothing more."""
from __future__ import annotations

from typing import Any

from rich.table import Table

from ..console import LiveDisplay, console

COLOUR = {"running": "cyan", "finished": "green", "failed": "red", "retrying": "yellow", "stopped": "yellow"}


class LiveTrials:
    """`with LiveTrials(name) as live: live.update(trial_id, status=..., epoch=..., val=..., test=...)`."""

    def __init__(self, sweep_name: str):
        self.sweep_name = sweep_name
        self.rows: dict[str, dict[str, Any]] = {}
        self._said: dict[str, str] = {}
        self.live = LiveDisplay(self._table(), console=console, refresh_per_second=2, transient=False)

    def __enter__(self):
        self.live.__enter__()
        return self

    def __exit__(self, *exc):
        self.live.update(self._table())
        return self.live.__exit__(*exc)

    def update(self, trial_id: str, **values) -> None:
        self.rows.setdefault(trial_id, {}).update({k: v for k, v in values.items() if v is not None})
        self.live.update(self._table())
        if not (console.is_terminal or console.is_jupyter):     # piped to a file: the live table shows only at the end, so a line per change
            line = self._line(trial_id)
            if self._said.get(trial_id) != line:
                self._said[trial_id] = line
                console.print(line, highlight=False, soft_wrap=True)

    def _line(self, trial_id: str) -> str:
        r = self.rows[trial_id]
        parts = [trial_id, r.get("status", "")]
        if r.get("epoch") is not None:
            parts.append(f"epoch {r['epoch']}")
        if r.get("val") is not None:
            parts.append(f"best val {100 * r['val']:.2f} %")
        if r.get("test") is not None:
            parts.append(f"test {100 * r['test']:.2f} %")
        return "  ".join(parts)

    def _table(self) -> Table:
        t = Table(title=f"trials of {self.sweep_name}")
        for col in ("trial", "status", "epoch", "best val %", "test %"):
            t.add_column(col, no_wrap=True)
        for tid, r in sorted(self.rows.items()):
            s = r.get("status", "")
            t.add_row(tid, f"[{COLOUR.get(s, 'white')}]{s}[/]", str(r.get("epoch", "-")),
                      "-" if r.get("val") is None else f"{100 * r['val']:.2f}",
                      "-" if r.get("test") is None else f"{100 * r['test']:.2f}")
        return t
