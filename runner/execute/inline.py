"""The inline executor: every trial, then every evaluation, one after another in this process.
For debuggers and profilers; the tables are the Ray executor's."""
from __future__ import annotations

import os
import socket
import traceback
from pathlib import Path

from ..console import console, progress_bar
from ..evaluate import evaluate_checkpoint
from ..spec import SpecError
from ..train import train
from .sweep import Sweep


def check_inline(sweep: Sweep) -> None:
    """What the inline executor cannot run, refused before anything is written."""
    if sweep.spec.search.algorithm in ("optuna", "hyperopt"):
        raise SpecError(f"search.algorithm: {sweep.spec.search.algorithm} draws trials through Ray Tune's searcher: "
                        "run it with --executor ray (the inline executor runs grids and random searches)")
    if sweep.spec.scheduler.type == "pbt":
        raise SpecError("scheduler.type: pbt pauses, clones and restarts trials through Ray Tune: run it with "
                        "--executor ray (the inline executor trains one trial after another, to the end)")


def run_inline(sweep: Sweep, resume: bool = True) -> None:
    """Train every trial, then evaluate, in this process: the debugger's executor."""
    check_inline(sweep)
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
    """Every shard of every selected checkpoint in turn, each cell written when its last shard is in."""
    store = sweep.store
    sweep.fetch_data()
    ledger = sweep.shard_ledger()
    store.append_eval(ledger.landed_before())      # cells whose last shard landed just before a stop
    checkpoints = sweep.selected_checkpoints()
    where = {"node": socket.gethostname(), "gpu_ids": os.environ.get("CUDA_VISIBLE_DEVICES", "")}
    with progress_bar() as bar:
        cells_job = bar.add_task("evaluate cells", **sweep.eval_progress(ledger.done, checkpoints))
        units = sweep.shards_to_run(ledger, checkpoints)
        shards_job = bar.add_task("shards", total=len(units))

        def land(rows: list[dict]) -> None:
            cells = ledger.add([{**r, **where} for r in rows])
            store.append_eval(cells)
            bar.advance(cells_job, len(cells))
        for trial, shard in units:
            task = sweep.eval_task(trial).for_shard(*shard, ledger.data_digest)
            evaluate_checkpoint(task, ledger.done_in(shard), on_rows=land)
            bar.advance(shards_job, 1)
