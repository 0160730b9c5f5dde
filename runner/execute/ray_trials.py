"""Training as Ray Tune trials: one trial per configuration, DDP trials through Ray Train.

Trials run in working directories of Ray's own, so every path handed to them is absolute.
Each trial's row is written the moment it ends (RecordTrials), so a crash loses no finished trial.
"""
from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

from ray.tune import Callback

from ...files import adopt_mirrors, atomic_write, mirrors
from ...objectstore import is_uri
from ..console import console
from ..provenance import PROVENANCE_KEYS
from ..results import TRIAL_KEY
from ..space import kind_of, to_tune
from .live import LiveTrials
from .pbt import initial_trial, pbt_scheduler, resumed_trial
from .ray_setup import _where, device_for, hide_unassigned_gpus, trial_resources
from .sweep import Sweep

EXPERIMENT_PREFIX = "train-"


# --- inside a trial ---------------------------------------------------------------------------

def _resume_path(out_dir: Path) -> Path | None:
    """Tune's checkpoint when Tune restores the trial (after a failure, or PBT's clone of a stronger trial: then
    another trial's last.pt and best.pt, which replace this folder's); else last.pt left by an earlier attempt."""
    from ray import tune
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            if (Path(d) / "last.pt").exists():
                out_dir.mkdir(parents=True, exist_ok=True)
                for name in ("best.pt", "last.pt"):
                    src, dst = Path(d) / name, out_dir / name
                    if src.exists() and not (dst.exists() and dst.read_bytes() == src.read_bytes()):
                        with atomic_write(dst) as f:
                            f.write(src.read_bytes())
                return out_dir / "last.pt"
    return out_dir / "last.pt" if (out_dir / "last.pt").exists() else None


def final_metrics(result: dict[str, Any], where: dict[str, str]) -> dict[str, Any]:
    """The trial's last report: its results, and its last epoch's figures (a scheduler reads every report for its
    metric and time; at an epoch it has seen already, PBT does nothing)."""
    last = result["history"][-1] if result["history"] else {}
    return {**{k: last[k] for k in ("epoch", "val_accuracy", "robust_val_accuracy") if k in last},
            **{k: v for k, v in result.items() if k != "history"}, **where, "final": True,
            "history_json": json.dumps(result["history"])}


def searched_trainable(config: dict[str, Any], sweep: Sweep) -> None:
    """A trial whose values a searcher drew (optuna, hyperopt): the trial they make, trained like any."""
    tune_trainable({"trial": {**sweep.trial_of(config["values"]), **config["run"]}})


def tune_trainable(config: dict[str, Any]) -> None:
    """The Tune function trainable: one trial of `train(config)`, one worker."""
    from ray import tune
    trial = config["trial"]
    hide_unassigned_gpus()
    adopt_mirrors(trial.get("mirrors"))      # its checkpoints go to the store (a Ray started before the run)
    from ..train import train
    cfg = dict(trial["config"])
    cfg["threads"] = cfg.get("threads") or max(1, int(trial.get("cpus", 1)))
    out_dir = Path(cfg["out_dir"])

    def report(metrics, ckpt_dir):
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir else None)

    result = train(cfg, report=report, resume_from=_resume_path(out_dir))
    tune.report(final_metrics(result, _where()))


def ddp_trainable(config: dict[str, Any]) -> None:
    """A Tune trial that trains data-parallel on N Ray Train workers (TorchTrainer)."""
    trial = config["trial"]
    adopt_mirrors(trial.get("mirrors"))      # Ray Train's storage in the store too, where there is one
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback
    scaling = ray.train.ScalingConfig(num_workers=trial["workers"], use_gpu=trial["gpus"] > 0,
                                      resources_per_worker={"CPU": trial["cpus"], **({"GPU": trial["gpus"]} if trial["gpus"] else {})})
    storage = _tune_storage(Path(trial["config"]["out_dir"]) / "ray_train")
    trainer = TorchTrainer(_ddp_worker, train_loop_config=trial, scaling_config=scaling,
                           run_config=ray.train.RunConfig(name=trial["trial_id"], storage_path=storage,
                                                          callbacks=[TuneReportCallback()]))
    trainer.fit()


def _ddp_worker(trial: dict[str, Any]) -> None:
    import ray.train
    hide_unassigned_gpus()
    adopt_mirrors(trial.get("mirrors"))
    from ..train import train
    cfg = {**trial["config"], "threads": max(1, int(trial["cpus"]))}
    out_dir = Path(cfg["out_dir"])

    def report(metrics, ckpt_dir):
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir else None)

    resume = out_dir / "last.pt"
    result = train(cfg, report=report, resume_from=resume if resume.exists() else None)
    ray.train.report(final_metrics(result, _where()))

# --- in the driver ----------------------------------------------------------------------------

def train_ray(sweep: Sweep, resume: bool) -> None:
    from ray import tune
    res = trial_resources(sweep)
    r = sweep.spec.resources
    done = sweep.finished_trials()
    todo = []
    for t in sweep.trials():
        if t["trial_id"] in done:
            console.print(f"[dim]{t['trial_id']}: already trained, skipped[/dim]")
        else:
            config = {**t["config"], "device": device_for(t["config"]["device"], res["gpu"])}
            todo.append(dict(t, config=config, cpus=res["cpu"], gpus=res["gpu"], workers=r.workers_per_trial,
                             mirrors=mirrors()))
            if sweep.spec.scheduler.type == "pbt":
                todo[-1] = resumed_trial(todo[-1], list(sweep.spec.scheduler.mutations))
    storage = sweep.out / "ray"
    tune_storage = _tune_storage(storage)
    # A synchronous PBT restored by Tune mid-run was seen to stall (trials left pending, nothing training): PBT
    # resumes as a new population of the unfinished trials, each from its own last.pt (weights, optimizer state
    # with the mutated values, lineage); finished trials are kept and no longer cloned from.
    pbt = sweep.spec.scheduler.type == "pbt"
    restore = _restorable(tune_storage) if resume and not pbt else None
    searched = sweep.spec.search.algorithm in ("optuna", "hyperopt")
    if not todo and restore is None and not searched:
        return
    if searched:
        trainable = tune.with_resources(tune.with_parameters(searched_trainable, sweep=sweep), res)
    elif r.workers_per_trial > 1:
        # The workers hold the CPUs/GPUs; the trial itself asks for one byte of memory, because Tune
        # refuses an empty request and any CPU share would deadlock a 2-core machine.
        trainable = tune.with_resources(ddp_trainable, {"cpu": 0, "memory": 1})
    else:
        trainable = tune.with_resources(tune_trainable, res)
    live = LiveTrials(sweep.spec.name)
    if restore is not None:
        console.print(f"resuming Tune experiment {restore.rsplit('/', 1)[-1]}")
        tuner = tune.Tuner.restore(restore, trainable, resume_unfinished=True, resume_errored=True)
    else:
        search = sweep.spec.search
        metric = {"val_accuracy": "best_val_accuracy", "robust_val_accuracy": "best_robust_val_accuracy"}
        if searched:
            param_space = {"values": searched_space(sweep),
                           # the mirrors as JSON: a searcher splits a dict's keys (paths) into nested parameters
                           "run": {"cpus": res["cpu"], "gpus": res["gpu"], "workers": 1,
                                   "mirrors": json.dumps(mirrors(), sort_keys=True)}}
            tune_config = {"search_alg": _searcher(sweep, [metric[m] for m in search.metrics]),
                           "num_samples": sweep.spec.num_samples}
            if len(search.metrics) == 1:
                tune_config.update(metric=metric[search.metrics[0]], mode=search.mode)
        elif pbt:     # PBT compares trials by their current epoch, not their best
            param_space = {"trial": tune.grid_search(todo)}
            tune_config = {"metric": search.metrics[0], "mode": search.mode}
        else:
            param_space = {"trial": tune.grid_search(todo)}
            tune_config = {"metric": "best_val_accuracy", "mode": "max"}
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(max_concurrent_trials=None if searched else r.max_concurrent_trials,
                                        scheduler=_scheduler(sweep), trial_dirname_creator=_dirname,
                                        reuse_actors=True, **tune_config),  # reuse: no process start, no torch import
            run_config=tune.RunConfig(
                name=EXPERIMENT_PREFIX + sweep.run_id, storage_path=tune_storage, verbose=0,
                failure_config=tune.FailureConfig(max_failures=r.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=_checkpoints_kept(sweep)),
                callbacks=[RecordTrials(sweep, live)]),
        )
    storage.mkdir(parents=True, exist_ok=True)
    with live, open(storage / "driver.log", "a") as log, contextlib.redirect_stdout(log), _tune_logging_to(log):
        grid = tuner.fit()      # what Tune prints goes to results/ray/driver.log, not between our tables
    _record(sweep, grid)


@contextlib.contextmanager
def _tune_logging_to(stream):
    """Tune's log records (a failed trial's 50-line traceback of Ray's own frames among them) into the driver log:
    the user reads the failure as one line, the exception and where it arose (`trial_error`)."""
    import logging
    tune_logger = logging.getLogger("ray.tune")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s -- %(message)s"))
    propagate = tune_logger.propagate
    tune_logger.addHandler(handler)
    tune_logger.propagate = False
    try:
        yield
    finally:
        tune_logger.removeHandler(handler)
        tune_logger.propagate = propagate


class RecordTrials(Callback):
    """Tune callbacks (in the driver): each trial's row into trials.parquet the moment it ends,
    and what it reports handed to the live view."""

    def __init__(self, sweep: Sweep, live: LiveTrials | None):
        self.sweep, self.live = sweep, live

    def __getstate__(self):  # Tune pickles its callbacks with the experiment state; the view stays here
        return {"sweep": self.sweep, "live": None}

    def _show(self, trial, **values) -> None:
        if self.live is not None:
            self.live.update(trial_of(self.sweep, trial.config)["trial_id"], **values)

    def on_trial_start(self, iteration, trials, trial, **info):
        # recorded as drawn: a searcher's configuration is in the table before it trains, and a kill leaves it there
        self.sweep.record_running(trial_of(self.sweep, trial.config))
        self._show(trial, status="running")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if not result.get("final"):
            self._show(trial, status="running", epoch=result.get("epoch"), val=result.get("best_val_accuracy"))

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._show(trial, status="retrying")

    def on_trial_complete(self, iteration, trials, trial, **info):
        metrics = trial.last_result or {}
        record_result(self.sweep, trial_of(self.sweep, trial.config), metrics, None)
        self._show(trial, status="finished" if metrics.get("final") else "stopped", test=metrics.get("test_accuracy"))

    def on_trial_error(self, iteration, trials, trial, **info):
        record_result(self.sweep, trial_of(self.sweep, trial.config), None, trial_error(trial))
        self._show(trial, status="failed")


def trial_error(trial) -> str:
    """Why a Tune trial failed, as a user reads it: 'Type: message (file:line)', the message's last line and the
    frame where the exception arose, from the records this Ray keeps of it (the pickled RayTaskError, else the
    error.txt traceback); Ray's own frames never stand in for the cause."""
    exc = None
    with contextlib.suppress(Exception):       # an exception that does not unpickle here: the text record
        exc = trial.get_pickled_error()
    if exc is None:                            # the trial's local copy of the same record
        with contextlib.suppress(Exception), open(trial.pickled_error_file, "rb") as f:
            import cloudpickle
            exc = cloudpickle.load(f)
    if exc is not None:
        cause = getattr(exc, "cause", None) or exc
        message = str(cause).strip().splitlines()
        text = f"{type(cause).__name__}: {message[-1] if message else ''}".rstrip(": ")
        return (text + _raised_at(getattr(exc, "traceback_str", "") or ""))[:500]
    with contextlib.suppress(Exception):
        record = trial.get_error() or Path(trial.error_file).read_text()
        lines = [ln for ln in record.strip().splitlines() if ln.strip()]
        if lines:
            return (lines[-1].strip() + _raised_at(record))[:500]
    return "failed (Ray recorded no error)"


def _raised_at(traceback_text: str) -> str:
    """' (folder/file.py:line)' of the innermost frame of a formatted traceback, or ''."""
    frames = re.findall(r'File "([^"]+)", line (\d+)', traceback_text)
    if not frames:
        return ""
    path, line = frames[-1]
    return f" ({'/'.join(Path(path).parts[-2:])}:{line})"


def trial_of(sweep: Sweep, config: dict[str, Any]) -> dict[str, Any]:
    """The robustgrid trial of a Tune trial's config: a grid's (as planned, whatever PBT changed since),
    or the one a searcher's values make."""
    return initial_trial(config) if "trial" in config else sweep.trial_of(config["values"])


def _dirname(trial) -> str:
    return trial.config["trial"]["trial_id"] if isinstance(trial.config.get("trial"), dict) else trial.trial_id


def searched_space(sweep: Sweep) -> dict[str, Any]:
    """The training keys a searcher draws, as Tune's space (a grid becomes a choice: searchers draw)."""
    return {k: to_tune({"choice": v["grid_search"]} if kind_of(v) == "grid_search" else v)
            for k, v in sweep.spec.train.items() if kind_of(v)}


def _searcher(sweep: Sweep, metrics: list[str]):
    """Ray Tune's searcher for search.algorithm, seeded, behind a ConcurrencyLimiter where asked."""
    from ray.tune.search import ConcurrencyLimiter
    search = sweep.spec.search
    modes = [search.mode] * len(metrics)
    if search.algorithm == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch
        many = len(metrics) > 1
        # TPE's default 10 random start-up trials would leave a 9-trial search random throughout: a third of
        # the budget (at least 2) explores at random, the rest is TPE's
        sampler = optuna.samplers.TPESampler(seed=search.seed, n_startup_trials=max(2, sweep.spec.num_samples // 3))
        alg = OptunaSearch(metric=metrics if many else metrics[0], mode=modes if many else modes[0], sampler=sampler)
    else:
        from ray.tune.search.hyperopt import HyperOptSearch
        alg = HyperOptSearch(metric=metrics[0], mode=modes[0], random_state_seed=search.seed)
    limit = search.max_concurrent or sweep.spec.resources.max_concurrent_trials
    return ConcurrencyLimiter(alg, max_concurrent=limit) if limit else alg


def _scheduler(sweep: Sweep):
    s = sweep.spec.scheduler
    if s.type == "pbt":
        return pbt_scheduler(sweep)
    if s.type != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler
    # max_t counts the trainable's final report (test accuracy, sizes) too: at max_t = epochs ASHA stopped every
    # trial that trained its last epoch before that report, and no trial was ever 'ok' (e2e's cifar10_cluster)
    return ASHAScheduler(time_attr="training_iteration", max_t=sweep.spec.max_epochs() + 1,
                         grace_period=s.grace_period, reduction_factor=s.reduction_factor)


def _checkpoints_kept(sweep: Sweep) -> int | None:
    """One per trial; PBT keeps them all: a paused clone restores from the checkpoint it was handed, which its
    source would otherwise have deleted by then (Ray Tune warns of num_to_keep <= 2 with PBT)."""
    return None if sweep.spec.scheduler.type == "pbt" else 1


def _tune_storage(folder: Path) -> str:
    """Where Tune keeps an experiment: in the store itself where the results folder is a working copy (a trial on
    a node without the driver's disk restores from there), else the folder."""
    from ..results.location import store_uri
    return store_uri(folder) or str(folder)


def _restorable(storage: str) -> str | None:
    """The newest experiment under `storage` (a folder or a store URI) Tune can restore: names sort by time
    (train-<run id>, run ids begin with the date)."""
    import pyarrow.fs as pafs
    from ray import tune
    fs, base = pafs.FileSystem.from_uri(storage) if is_uri(storage) else (pafs.LocalFileSystem(), storage)
    found = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    names = sorted((i.base_name for i in found if i.type == pafs.FileType.Directory
                    and i.base_name.startswith(EXPERIMENT_PREFIX)), reverse=True)
    return next((f"{storage}/{n}" for n in names if tune.Tuner.can_restore(f"{storage}/{n}")), None)


def record_result(sweep: Sweep, trial: dict, metrics: dict | None, error: str | None) -> None:
    """One finished (or failed) trial into trials/epochs: called as soon as it ends."""
    if metrics and metrics.get("final"):
        result = {k: v for k, v in metrics.items() if k in _RESULT_KEYS}
        result["history"] = json.loads(metrics["history_json"])
        where = {k: metrics.get(k, "") for k in ("node", "node_ip", "node_id", "gpu_ids", "cuda_visible_devices")}
        sweep.record_trial(trial, result, where=where)
    else:
        sweep.record_trial(trial, None, error=error)   # no error: stopped (scheduler, interrupt), not failed


_RESULT_KEYS = {"best_val_accuracy", "best_epoch", "test_accuracy", "epochs_run", "seconds", "world_size",
                "best_robust_val_accuracy", "catastrophic_overfitting_epoch", "lineage",
                "device", "checkpoint", "fp32_bytes", "int8_bytes", *PROVENANCE_KEYS}


def _record(sweep: Sweep, grid) -> None:
    """After fit: make sure every trial of the grid has its row (the live callback writes most); a row still
    `running` is a trial a killed run drew that the resumed searcher did not restore: stopped."""
    rows = sweep.store.read("trials")
    recorded = set(rows.loc[rows["status"] != "running", "trial_id"])
    for res in grid:
        trial = trial_of(sweep, res.config) if res.config and ("trial" in res.config or "values" in res.config) else None
        if trial is None or trial["trial_id"] in recorded:
            continue
        record_result(sweep, trial, res.metrics, str(res.error).splitlines()[0] if res.error else None)
        recorded.add(trial["trial_id"])
    for row in rows[rows["status"] == "running"].to_dict("records"):
        if row["trial_id"] not in recorded:
            sweep.store.upsert("trials", [{**row, "status": "stopped",
                                           "error": "drawn, then the run was killed; the resumed search did not restore it"}],
                               TRIAL_KEY)
