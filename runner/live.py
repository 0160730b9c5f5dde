"""A live rich view of the Tune trials, and the place where each finished trial is recorded."""
from __future__ import annotations

from typing import Any

from ray.tune import Callback
from rich.live import Live
from rich.table import Table

from .console import console


class LiveTrials(Callback):
    """Shows running / finished / failed trials with their best metric while the sweep runs;
    writes each trial's row to trials.parquet the moment it ends (a crash loses no finished trial)."""

    def __init__(self, sweep):
        self.sweep = sweep
        self.rows: dict[str, dict[str, Any]] = {}
        self.live = self._new_live()

    def __getstate__(self):  # Tune pickles its callbacks with the experiment state
        return {k: v for k, v in self.__dict__.items() if k != "live"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.live = self._new_live()

    def _new_live(self) -> Live:
        return Live(self._table(), console=console, refresh_per_second=2, transient=False)

    def __enter__(self):
        self.live.__enter__()
        return self

    def __exit__(self, *exc):
        self.live.update(self._table())
        return self.live.__exit__(*exc)

    # --- Tune callbacks (run in the driver) ---
    def on_trial_start(self, iteration, trials, trial, **info):
        self._set(trial, status="running")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if not result.get("final"):
            self._set(trial, status="running", epoch=result.get("epoch"), val=result.get("best_val_accuracy"))

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._set(trial, status="retrying")

    def on_trial_complete(self, iteration, trials, trial, **info):
        from .tune import record_result
        metrics = trial.last_result or {}
        record_result(self.sweep, trial.config["trial"], metrics, None)
        self._set(trial, status="finished" if metrics.get("final") else "stopped", test=metrics.get("test_accuracy"))

    def on_trial_error(self, iteration, trials, trial, **info):
        from .tune import record_result
        err = getattr(trial, "error_msg", None) or "failed"
        record_result(self.sweep, trial.config["trial"], None, str(err).strip().splitlines()[-1][:500])
        self._set(trial, status="failed")

    # --- view ---
    def _set(self, trial, **values):
        tid = trial.config["trial"]["trial_id"]
        row = self.rows.setdefault(tid, {})
        row.update({k: v for k, v in values.items() if v is not None})
        self.live.update(self._table())

    def _table(self) -> Table:
        t = Table(title=f"trials of {self.sweep.spec.name}")
        for col in ("trial", "status", "epoch", "best val %", "test %"):
            t.add_column(col)
        colour = {"running": "cyan", "finished": "green", "failed": "red", "retrying": "yellow", "stopped": "yellow"}
        for tid, r in sorted(self.rows.items()):
            s = r.get("status", "")
            t.add_row(tid, f"[{colour.get(s, 'white')}]{s}[/]", str(r.get("epoch", "-")),
                      "-" if r.get("val") is None else f"{100 * r['val']:.2f}",
                      "-" if r.get("test") is None else f"{100 * r['test']:.2f}")
        return t
