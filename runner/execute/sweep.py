"""A sweep on disk: its trials (ids, configs, checkpoints), its results folder, its evaluation tasks.

The executors differ only in *where* `train(config)` and `evaluate_checkpoint(task)` run:
`inline` (inline.py) calls them one after another in this process (for debuggers and
profilers), `ray` schedules them as Tune trials and Ray tasks (ray_trials.py, ray_eval.py).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ...files import atomic_write, ensure_local, file_sha256
from ..data import load_test_split
from ..evaluate import EvalTask, plan_cells
from ..provenance import images_digest
from ..results import TRIAL_KEY, ResultStore
from ..spec import DataSpec, SweepSpec, count_test_images
from .shard_ledger import ShardLedger

IGNORED_IN_TRIAL_ID = ("out_dir", "threads")
# Keys added after trial ids existed enter the id only when set: every earlier trial keeps its id (its folder
# resumes, its checkpoints are reused) and a trial that sets one is another trial.
ADDED_LATER = {"depth": None, "widen_factor": None, "adversarial": "none", "lr_schedule": "plateau",
               "coarse_labels": False, "svhn_extra": False}
ADVERSARIAL_KEYS = ("adv_eps", "adv_alpha", "adv_steps", "trades_beta", "robust_val_images")   # only with a method


def trial_id_of(config: dict[str, Any]) -> str:
    """Stable across runs: the same configuration is the same trial (resume, re-evaluation)."""
    standard = config.get("adversarial", "none") == "none"
    key = {k: v for k, v in sorted(config.items()) if k not in IGNORED_IN_TRIAL_ID
           and not (k in ADDED_LATER and v == ADDED_LATER[k]) and not (standard and k in ADVERSARIAL_KEYS)}
    return "t" + hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]


@dataclass
class Sweep:
    spec: SweepSpec
    raw: dict[str, Any]
    out: Path
    run_id: str = field(default_factory=lambda: time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6])
    evaluate_only: bool = False     # robustgrid.evaluate(module) without train: only the modules handed over

    @property
    def store(self) -> ResultStore:
        return ResultStore(self.out)

    def trials(self) -> list[dict[str, Any]]:
        """The trials of a grid or a random search (an optuna / hyperopt search draws its own: trial_of)."""
        return [] if self.evaluate_only else [self._placed(cfg) for cfg in self.spec.trial_configs()]

    def trial_of(self, values: dict[str, Any]) -> dict[str, Any]:
        """The trial a searcher's drawn values make (the training keys' fixed values, these drawn ones)."""
        return self._placed(self.spec.trial_config({**self.spec.base_train(), **values}))

    def _placed(self, cfg: dict[str, Any]) -> dict[str, Any]:
        tid = trial_id_of(cfg)
        data = self.data()
        cfg["out_dir"] = str(self.out / "checkpoints" / tid)   # absolute: Ray runs trials elsewhere
        cfg["data_root"], cfg["data_path"] = data.root, data.path
        return {"trial_id": tid, "config": cfg}

    def data(self) -> DataSpec:
        """The data section with absolute paths: Ray runs trials in folders of its own."""
        d = self.spec.data
        return d.model_copy(update={k: str(Path(getattr(d, k)).expanduser().resolve())
                                    for k in ("root", "path") if getattr(d, k)})

    def fetch_data(self) -> None:
        """The data set, fetched once by the driver before any trial starts (saying what, from where)."""
        from ..console import console
        from ..data import fetch_data
        say = lambda msg: console.print(f"[cyan]{msg}[/cyan]", highlight=False)
        fetch_data(self.data(), progress=say)
        if self.spec.evaluate.corruptions is not None:
            from ..data import resolve_root
            from ..data.cifar10c import fetch_cifar10c, present
            root = resolve_root(self.data().root)
            if not present(root):
                fetch_cifar10c(root, say)

    def write_spec(self, current: bool = True) -> None:
        """Keep this run's resolved sweep as runs/<run id>.yaml (every run and eval of a folder is remembered);
        with `current`, sweep.yaml becomes it too, saying so when it replaces a different one (kept under runs/)."""
        text = yaml.safe_dump(self.raw, sort_keys=False)
        runs = self.out / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        with atomic_write(runs / f"{self.run_id}.yaml", "w") as f:
            f.write(text)
        path = self.out / "sweep.yaml"
        if not current or (path.exists() and path.read_text() == text):
            return
        if path.exists():
            old = path.read_text()
            if not any(p.read_text() == old for p in runs.glob("*.yaml")):
                with atomic_write(runs / f"before-{self.run_id}.yaml", "w") as f:
                    f.write(old)
            from ..console import console
            console.print(f"[dim]{path}: now this run's sweep; the earlier ones are kept under {runs}[/dim]",
                          highlight=False)
        with atomic_write(path, "w") as f:
            f.write(text)

    def finished_trials(self) -> dict[str, dict]:
        return {r["trial_id"]: r for r in self._trained().to_dict("records")}

    def _trained(self):
        """Trials that finished, with their checkpoint as an absolute path inside this folder (wherever
        the folder now lies), where that checkpoint exists."""
        df = self.store.read("trials")
        df = df[(df["status"] == "ok") & ~self._external_mask(df)]
        df = df.assign(checkpoint=[str(self.locate_checkpoint(r)) for r in df.to_dict("records")])
        return df[df["checkpoint"].map(ensure_local)]      # fetched from the store where a trial elsewhere wrote it

    def locate_checkpoint(self, row: dict) -> Path:
        """Checkpoints are stored relative to the results folder, so a moved or copied folder works;
        an absolute path (written by an earlier release) falls back to the same place in this folder."""
        stored = row.get("checkpoint")
        if not isinstance(stored, str) or not stored:
            return self.out / "checkpoints" / row["trial_id"] / "best.pt"
        path = Path(stored)
        if not path.is_absolute():
            return self.out / path
        return path if path.exists() else self.out / "checkpoints" / row["trial_id"] / path.name

    def relative_checkpoint(self, path: str) -> str:
        try:
            return str(Path(path).resolve().relative_to(self.out))
        except ValueError:      # a checkpoint outside the folder stays absolute
            return path

    # --- rows ---
    def trial_row(self, trial: dict, result: dict | None, error: str | None = None, where: dict | None = None,
                  running: bool = False) -> dict:
        cfg = trial["config"]
        from ..results.store import trials_schema
        names = set(trials_schema().names)
        row = {("config_" + k if "config_" + k in names else k): v for k, v in cfg.items()}
        row.update(sweep=self.spec.name, run_id=self.run_id, trial_id=trial["trial_id"],
                   status="running" if running else "ok" if result else ("failed" if error else "stopped"),
                   error=None if running else error if result or error else "stopped before it finished (scheduler or interrupt)")
        if result:
            row.update({k: v for k, v in result.items() if k != "history"})
            if row.get("checkpoint"):
                row["checkpoint"] = self.relative_checkpoint(row["checkpoint"])
        row.update(where or {})
        return row

    def epoch_rows(self, trial_id: str, history: list[dict]) -> list[dict]:
        return [{"sweep": self.spec.name, "run_id": self.run_id, "trial_id": trial_id, **h} for h in history]

    def record_running(self, trial: dict) -> None:
        """The trial's configuration, before it trains (replaced by its result when it ends)."""
        self.store.upsert("trials", [self.trial_row(trial, None, running=True)], TRIAL_KEY)

    def record_trial(self, trial: dict, result: dict | None, error: str | None = None, where: dict | None = None) -> None:
        self.store.upsert("trials", [self.trial_row(trial, result, error, where)], TRIAL_KEY)
        if result and result.get("history"):
            self.store.upsert("epochs", self.epoch_rows(trial["trial_id"], result["history"]), ["trial_id", "epoch"])

    # --- evaluation ---
    def selected_checkpoints(self) -> list[dict]:
        """The trained trials evaluate.select picks, then every model robustgrid did not train."""
        df = self._trained()
        if not df.empty and self.spec.evaluate.select != "all":
            k = 1 if self.spec.evaluate.select == "best" else self.spec.evaluate.top_k
            by = "best_robust_val_accuracy" if self.spec.evaluate.select_by == "robust_val_accuracy" else "best_val_accuracy"
            df = df.sort_values([by, "best_val_accuracy"], ascending=False, na_position="last").head(k)
        return df.to_dict("records") + self.external_models()

    # --- models robustgrid did not train (recorded in trials by execute/external.py) ---
    @staticmethod
    def _external_mask(df):
        return df["model_source"].fillna("trial") != "trial" if "model_source" in df else df["trial_id"].isna()

    @staticmethod
    def is_external(row: dict) -> bool:
        return isinstance(row.get("model_source"), str) and row["model_source"] != "trial"

    def external_models(self) -> list[dict]:
        df = self.store.read("trials")
        return df[(df["status"] == "ok") & self._external_mask(df)].to_dict("records") if len(df) else []

    def external_of(self, row: dict):
        """The row's ExternalModel; a module the API pickled lives in this folder (its path stored relative)."""
        from ...models.external import ExternalModel
        spec = json.loads(row["model_spec"])
        if spec["source"] == "python":
            spec["spec"] = str(self.out / spec["spec"])
        spec = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()}
        return ExternalModel(**spec)

    def eval_progress(self, done: set[tuple], checkpoints: list[dict]) -> dict[str, int]:
        """The cells this evaluation computes: the grid's cells of the selected checkpoints that
        are not in the table yet (cells of other grids already there do not count)."""
        if not checkpoints:
            return {"total": 0, "completed": 0}
        n, seed, cells = self.n_test_images(), self.spec.evaluate.seed, plan_cells(self.spec.evaluate)
        todo = sum(c.key(t["trial_id"], n, seed) not in done for t in checkpoints for c in cells)
        return {"total": todo, "completed": 0}

    def n_test_images(self) -> int:
        """How many test images each cell sees: n_images, or the whole test split."""
        n_test = count_test_images(self.data())
        if n_test is None:
            from ..data import load_splits
            n_test = len(load_splits(self.data()).test_y)
        return min(self.spec.evaluate.n_images or n_test, n_test)

    def shard_ledger(self) -> ShardLedger:
        """The evaluation's shards and what of them is on disk; the image set read once, for its digest."""
        x, y, _ = load_test_split(self.data())
        n = min(self.spec.evaluate.n_images or len(y), len(y))
        return ShardLedger(self.store, n, self.spec.evaluate.shard_images, images_digest(x[:n], y[:n]))

    def shards_to_run(self, ledger: ShardLedger, checkpoints: list[dict]) -> list[tuple[dict, tuple[int, int]]]:
        """(checkpoint, shard) pairs with a cell of the grid still missing that shard."""
        cells = plan_cells(self.spec.evaluate)
        keys = {t["trial_id"]: {c.key(t["trial_id"], ledger.n, self.spec.evaluate.seed) for c in cells} for t in checkpoints}
        return [(t, shard) for t in checkpoints for shard in ledger.ranges if ledger.shards_left(keys[t["trial_id"]], shard)]

    def eval_task(self, trial: dict) -> EvalTask:
        external = self.external_of(trial) if self.is_external(trial) else None
        training = "unknown" if external else trial.get("adversarial") if isinstance(trial.get("adversarial"), str) else "none"
        return EvalTask(checkpoint=trial["checkpoint"], trial_id=trial["trial_id"], sweep=self.spec.name,
                        run_id=self.run_id, model=trial["model"], data=self.data(), evaluate=self.spec.evaluate,
                        examples_path=str(self.out / "examples" / f"{trial['trial_id']}.npz"), training=training,
                        model_source=external.source if external else "trial", external=external,
                        model_sha256=trial.get("model_sha256") if external else _sha256_of(trial["checkpoint"]))


def _sha256_of(path: str) -> str | None:
    """A checkpoint's sha256, hashed once per version of the file (a rerun may retrain it)."""
    p = Path(path)
    if not p.is_file():
        return None
    st = p.stat()
    return _cached_sha256(str(p), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=256)
def _cached_sha256(path: str, mtime_ns: int, size: int) -> str:
    return file_sha256(path)


def resolve_out(spec: SweepSpec, out: str | os.PathLike | None) -> Path:
    """The results folder: --out (an s3:// URI's working copy, pulled from the store), or results/<sweep name>."""
    from ..results.location import FOR_RUN, results_location
    return results_location(out if out is not None else Path("results") / spec.name, "--out", skip=FOR_RUN)
