"""The inline executor: every trial, then every evaluation, one after another in this process.
For debuggers and profilers; the tables are the Ray executor's."""
from __future__ import annotations

import os
import traceback
from pathlib import Path

from ..console import console, progress_bar
from ..evaluate import evaluate_checkpoint
from ..train import train
from .sweep import Sweep


def run_inline(sweep: Sweep, resume: bool = True) -> None:
    """Train every trial, then evaluate, in this process: the debugger's executor."""
    done = sweep.finished_trials() if resume else {}
    sweep.fetch_data()
    for trial in sweep.trials():
        if trial["trial_id"] in done:
            console.print(f"[dim]{trial['trial_id']}: already trained, skipped[/dim]")
            continue
        cfg = trial["config"]
        resume_from = Path(cfg["out_dir"]) / "last.pt"
        with progress_bar() as bar:
            task = bar.add_task(f"train {trial['trial_id']} lr={cfg['lr']:g}", total=cfg["epochs"])

            def on_epoch(epoch, total, row, task=task, tid=trial["trial_id"]):
                bar.update(task, completed=epoch, description=f"train {tid} val={row['val_accuracy']:.3f}")
            try:
                result = train(cfg, progress=on_epoch, resume_from=resume_from if resume and resume_from.exists() else None)
                sweep.record_trial(trial, result, where={"node_ip": "", "gpu_ids": "",
                                                         "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)")})
            except Exception as e:  # a failed trial is recorded; the sweep goes on
                sweep.record_trial(trial, None, error=f"{type(e).__name__}: {e}")
                console.print(f"[red]{trial['trial_id']} failed:[/red] {e}\n{traceback.format_exc(limit=3)}")
    evaluate_inline(sweep)


def evaluate_inline(sweep: Sweep) -> None:
    store = sweep.store
    sweep.fetch_data()
    done = store.eval_keys()
    checkpoints = sweep.selected_checkpoints()
    with progress_bar() as bar:
        task = bar.add_task("evaluate cells", **sweep.eval_progress(done, checkpoints))
        for trial in checkpoints:
            evaluate_checkpoint(sweep.eval_task(trial), done, on_rows=store.append_eval,
                                progress=lambda n: bar.advance(task, n))
