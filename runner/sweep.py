"""A sweep, start to end: spec -> trials -> checkpoints -> eval cells -> Parquet -> views.

The executors differ only in *where* `train(config)` and `evaluate_checkpoint(task)` run:
`inline` calls them one after another in this process (for debuggers and profilers),
`ray` schedules them as Tune trials and Ray tasks (runner/tune.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .console import console, progress_bar
from .evaluate import count_cells, evaluate_checkpoint
from .spec import SweepSpec
from .store import TRIAL_KEY, ResultStore
from .train import train

IGNORED_IN_TRIAL_ID = ("out_dir", "threads")


def trial_id_of(config: dict[str, Any]) -> str:
    """Stable across runs: the same configuration is the same trial (resume, re-evaluation)."""
    key = {k: v for k, v in sorted(config.items()) if k not in IGNORED_IN_TRIAL_ID}
    return "t" + hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]


@dataclass
class Sweep:
    spec: SweepSpec
    raw: dict[str, Any]
    out: Path
    run_id: str = field(default_factory=lambda: time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6])

    @property
    def store(self) -> ResultStore:
        return ResultStore(self.out)

    def trials(self) -> list[dict[str, Any]]:
        out = []
        data = self.data()
        for cfg in self.spec.trial_configs():
            tid = trial_id_of(cfg)
            cfg["out_dir"] = str(self.out / "checkpoints" / tid)   # absolute: Ray runs trials elsewhere
            cfg["data_root"], cfg["data_path"] = data["root"], data["path"]
            out.append({"trial_id": tid, "config": cfg})
        return out

    def data(self) -> dict[str, Any]:
        """The data section with absolute paths: Ray runs trials in folders of its own."""
        d = self.spec.data.model_dump()
        for key in ("root", "path"):
            if d[key]:
                d[key] = str(Path(d[key]).expanduser().resolve())
        return d

    def write_spec(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / ".sweep.yaml.tmp"
        tmp.write_text(yaml.safe_dump(self.raw, sort_keys=False))
        tmp.replace(self.out / "sweep.yaml")

    def finished_trials(self) -> dict[str, dict]:
        df = self.store.read("trials")
        ok = df[df["status"] == "ok"] if len(df) else df
        return {r["trial_id"]: r for r in ok.to_dict("records") if Path(r["checkpoint"]).exists()}

    # --- rows ---
    def trial_row(self, trial: dict, result: dict | None, error: str | None = None, where: dict | None = None) -> dict:
        cfg = trial["config"]
        from .store import trials_schema
        names = set(trials_schema().names)
        row = {("config_" + k if "config_" + k in names else k): v for k, v in cfg.items()}
        row.update(sweep=self.spec.name, run_id=self.run_id, trial_id=trial["trial_id"],
                   status="ok" if error is None else "failed", error=error)
        if result:
            row.update({k: v for k, v in result.items() if k != "history"})
        row.update(where or {})
        return row

    def epoch_rows(self, trial_id: str, history: list[dict]) -> list[dict]:
        return [{"sweep": self.spec.name, "run_id": self.run_id, "trial_id": trial_id, **h} for h in history]

    def record_trial(self, trial: dict, result: dict | None, error: str | None = None, where: dict | None = None) -> None:
        self.store.upsert("trials", [self.trial_row(trial, result, error, where)], TRIAL_KEY)
        if result and result.get("history"):
            self.store.upsert("epochs", self.epoch_rows(trial["trial_id"], result["history"]), ["trial_id", "epoch"])

    # --- evaluation ---
    def selected_checkpoints(self) -> list[dict]:
        df = self.store.read("trials")
        df = df[(df["status"] == "ok") & df["checkpoint"].map(lambda p: isinstance(p, str) and Path(p).exists())]
        if self.spec.evaluate.select != "all":
            k = 1 if self.spec.evaluate.select == "best" else self.spec.evaluate.top_k
            df = df.sort_values("best_val_accuracy", ascending=False).head(k)
        return df.to_dict("records")

    def eval_progress(self, done: set[tuple], checkpoints: list[dict]) -> dict[str, int]:
        """Cells of the selected checkpoints in all, and how many of them are already done."""
        ids = {t["trial_id"] for t in checkpoints}
        return {"total": count_cells(self.spec.evaluate) * len(checkpoints),
                "completed": sum(1 for key in done if key[0] in ids)}

    def eval_task(self, trial: dict) -> dict[str, Any]:
        return {
            "checkpoint": trial["checkpoint"], "trial_id": trial["trial_id"], "sweep": self.spec.name,
            "run_id": self.run_id, "model": trial["model"], "dataset": self.spec.data.dataset,
            "data": self.data(),
            "evaluate": self.spec.evaluate.model_dump(),
            "examples_path": str(self.out / "examples" / f"{trial['trial_id']}.npz"),
        }


def run_inline(sweep: Sweep, resume: bool = True) -> None:
    """Train every trial, then evaluate, in this process: the debugger's executor."""
    done = sweep.finished_trials() if resume else {}
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
    done = store.eval_keys()
    checkpoints = sweep.selected_checkpoints()
    with progress_bar() as bar:
        task = bar.add_task("evaluate cells", **sweep.eval_progress(done, checkpoints))
        for trial in checkpoints:
            evaluate_checkpoint(sweep.eval_task(trial), done, on_rows=store.append_eval,
                                progress=lambda n: bar.advance(task, n))


def resolve_out(spec: SweepSpec, out: str | os.PathLike | None) -> Path:
    return (Path(out) if out else Path("results") / spec.name).expanduser().resolve()
