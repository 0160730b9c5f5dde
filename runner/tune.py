"""Ray as the engine of `robustgrid run`: Tune trials for training, Ray tasks for evaluation.

Laptop: Ray starts in this process (the default). Cluster: `--address auto|HOST:PORT` or
RAY_ADDRESS; then the results folder must be on storage every node shares (NFS, ...).
Trials run in working directories of Ray's own, so every path handed to them is absolute.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

from .console import console
from .spec import SpecError
from .sweep import Sweep

EXPERIMENT_PREFIX = "train-"


# --- inside a trial ---------------------------------------------------------------------------

def _where() -> dict[str, str]:
    import ray
    ctx = ray.get_runtime_context()
    return {"node": socket.gethostname(), "node_ip": ray.util.get_node_ip_address(),
            "node_id": ctx.get_node_id(), "gpu_ids": ",".join(str(g) for g in ray.get_gpu_ids()),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)")}


def hide_unassigned_gpus() -> None:
    """A trial or task that Ray gave no GPU sees none, whatever the machine has.

    Ray >= 2.48 leaves CUDA_VISIBLE_DEVICES alone when zero GPUs are assigned, so such a process
    would see (and open a context on) every GPU of its node, GPUs Ray gave to others. Runs
    before anything touches CUDA in the process; the device passed in is 'cpu' as well.
    """
    import ray
    if not ray.get_gpu_ids():
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def device_for(setting: str, gpus: float) -> str:
    """The device a trial or task is handed: 'auto' with no GPU reserved is the CPU, explicitly."""
    return "cpu" if setting == "auto" and gpus == 0 else setting


def run_task(fn, *args, **kwargs):
    """Body of every evaluation task: devices first, then the plain function."""
    hide_unassigned_gpus()
    return fn(*args, **kwargs)


def _resume_path(out_dir: Path) -> Path | None:
    """Tune's checkpoint when Tune restores the trial; else last.pt left by an earlier attempt."""
    from ray import tune
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            if (Path(d) / "last.pt").exists():
                local = out_dir / "last.pt"
                if not local.exists():
                    out_dir.mkdir(parents=True, exist_ok=True)
                    local.write_bytes((Path(d) / "last.pt").read_bytes())
                return local
    return out_dir / "last.pt" if (out_dir / "last.pt").exists() else None


def final_metrics(result: dict[str, Any], where: dict[str, str]) -> dict[str, Any]:
    return {**{k: v for k, v in result.items() if k != "history"}, **where, "final": True,
            "history_json": json.dumps(result["history"])}


def tune_trainable(config: dict[str, Any]) -> None:
    """The Tune function trainable: one trial of `train(config)`, one worker."""
    from ray import tune
    trial = config["trial"]
    hide_unassigned_gpus()
    from .train import train
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
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback
    scaling = ray.train.ScalingConfig(num_workers=trial["workers"], use_gpu=trial["gpus"] > 0,
                                      resources_per_worker={"CPU": trial["cpus"], **({"GPU": trial["gpus"]} if trial["gpus"] else {})})
    storage = str(Path(trial["config"]["out_dir"]) / "ray_train")
    trainer = TorchTrainer(_ddp_worker, train_loop_config=trial, scaling_config=scaling,
                           run_config=ray.train.RunConfig(name=trial["trial_id"], storage_path=storage,
                                                          callbacks=[TuneReportCallback()]))
    trainer.fit()


def _ddp_worker(trial: dict[str, Any]) -> None:
    import ray.train
    hide_unassigned_gpus()
    from .train import train
    cfg = {**trial["config"], "threads": max(1, int(trial["cpus"]))}
    out_dir = Path(cfg["out_dir"])

    def report(metrics, ckpt_dir):
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir else None)

    resume = out_dir / "last.pt"
    result = train(cfg, report=report, resume_from=resume if resume.exists() else None)
    ray.train.report(final_metrics(result, _where()))


# --- in the driver ----------------------------------------------------------------------------

def init_ray(address: str | None) -> None:
    import logging

    import ray
    if ray.is_initialized():
        return
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")  # a small checkpoint an epoch is intended
    # Workers given no GPU get CUDA_VISIBLE_DEVICES="" from Ray as well (hide_unassigned_gpus is the
    # guarantee; this makes Ray do it before our code runs, in this job's workers on any node).
    env = {"RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1"}
    ray.init(address=address or None, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
             runtime_env={"env_vars": env})


def check_cluster(sweep: Sweep, address: str | None) -> None:
    """Fail early, with the reason, where Ray would otherwise wait forever."""
    import ray
    r = sweep.spec.resources
    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0), total.get("GPU", 0)
    need_cpu = r.cpus_per_trial * r.workers_per_trial
    if need_cpu > cpus:
        raise SpecError(f"resources.cpus_per_trial: a trial needs {need_cpu:g} CPUs "
                        f"({r.workers_per_trial} worker(s) x {r.cpus_per_trial:g}) but the cluster has {cpus:g}; "
                        "Ray would wait for them forever. Lower cpus_per_trial or workers_per_trial.")
    if r.gpus_per_trial > 0 and gpus == 0:
        console.print("[yellow]no GPU in the cluster: trials run on the CPU (resources.gpus_per_trial ignored)[/yellow]")
    elif r.gpus_per_trial * r.workers_per_trial > gpus:
        raise SpecError(f"resources.gpus_per_trial: a trial needs {r.gpus_per_trial * r.workers_per_trial:g} GPUs, "
                        f"the cluster has {gpus:g}")
    _check_cuda_requests(sweep, gpus)
    if address and len(ray.nodes()) > 1 and not _looks_shared(sweep.out):
        console.print(f"[yellow]warning: {sweep.out} does not look like shared storage; on a multi-node cluster "
                      "every node must see the results folder (NFS or similar)[/yellow]")


def _check_cuda_requests(sweep: Sweep, cluster_gpus: float) -> None:
    """device: cuda needs a GPU reserved for it; otherwise it would run on one Ray gave to someone else."""
    r = sweep.spec.resources
    wants_cuda = any(c["device"] == "cuda" for c in sweep.spec.trial_configs())
    if wants_cuda and (r.gpus_per_trial == 0 or cluster_gpus == 0):
        raise SpecError("train.device: cuda needs resources.gpus_per_trial > 0 on a cluster with GPUs "
                        "(use device: auto to run where the GPUs are)")
    if sweep.spec.evaluate.device == "cuda" and (r.eval_gpus == 0 or cluster_gpus == 0):
        raise SpecError("evaluate.device: cuda needs resources.eval_gpus > 0 on a cluster with GPUs "
                        "(use device: auto to run where the GPUs are)")


def _looks_shared(path: Path) -> bool:
    try:
        import subprocess
        fs = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True).stdout.strip()
        return fs in {"nfs", "nfs4", "cifs", "smb2", "fuseblk", "fuse", "lustre", "gpfs", "ceph", "beegfs"}
    except OSError:
        return True


def trial_resources(sweep: Sweep) -> dict[str, float]:
    import ray
    r = sweep.spec.resources
    gpus = r.gpus_per_trial if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    return {"cpu": r.cpus_per_trial, "gpu": gpus}


def run_ray(sweep: Sweep, address: str | None = None, resume: bool = False) -> None:
    init_ray(address)
    check_cluster(sweep, address)
    train_ray(sweep, resume)
    evaluate_ray(sweep, address)


def train_ray(sweep: Sweep, resume: bool) -> None:
    from ray import tune
    from .live import LiveTrials
    res = trial_resources(sweep)
    r = sweep.spec.resources
    done = sweep.finished_trials()
    todo = []
    for t in sweep.trials():
        if t["trial_id"] in done:
            console.print(f"[dim]{t['trial_id']}: already trained, skipped[/dim]")
        else:
            config = {**t["config"], "device": device_for(t["config"]["device"], res["gpu"])}
            todo.append(dict(t, config=config, cpus=res["cpu"], gpus=res["gpu"], workers=r.workers_per_trial))
    storage = sweep.out / "ray"
    restore = _restorable(storage) if resume else None
    if not todo and restore is None:
        return
    if r.workers_per_trial > 1:
        # The workers hold the CPUs/GPUs; the trial itself asks for one byte of memory, because Tune
        # refuses an empty request and any CPU share would deadlock a 2-core machine.
        trainable = tune.with_resources(ddp_trainable, {"cpu": 0, "memory": 1})
    else:
        trainable = tune.with_resources(tune_trainable, res)
    live = LiveTrials(sweep)
    if restore is not None:
        console.print(f"resuming Tune experiment {restore.name}")
        tuner = tune.Tuner.restore(str(restore), trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search(todo)},
            tune_config=tune.TuneConfig(max_concurrent_trials=r.max_concurrent_trials, scheduler=_scheduler(sweep),
                                        metric="best_val_accuracy", mode="max", trial_dirname_creator=_dirname,
                                        reuse_actors=True),  # a new trial skips process start + torch import
            run_config=tune.RunConfig(
                name=EXPERIMENT_PREFIX + sweep.run_id, storage_path=str(storage), verbose=0,
                failure_config=tune.FailureConfig(max_failures=r.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1), callbacks=[live]),
        )
    with live:
        grid = tuner.fit()
    _record(sweep, grid)


def _dirname(trial) -> str:
    return trial.config["trial"]["trial_id"] if isinstance(trial.config.get("trial"), dict) else trial.trial_id


def _scheduler(sweep: Sweep):
    s = sweep.spec.scheduler
    if s.type != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler
    return ASHAScheduler(time_attr="training_iteration", max_t=max(c["epochs"] for c in sweep.spec.trial_configs()),
                         grace_period=s.grace_period, reduction_factor=s.reduction_factor)


def _restorable(storage: Path) -> Path | None:
    from ray import tune
    candidates = sorted(storage.glob(EXPERIMENT_PREFIX + "*"), key=lambda p: p.stat().st_mtime, reverse=True)
    return next((p for p in candidates if tune.Tuner.can_restore(str(p))), None)


def record_result(sweep: Sweep, trial: dict, metrics: dict | None, error: str | None) -> None:
    """One finished (or failed) trial into trials/epochs: called as soon as it ends."""
    if metrics and metrics.get("final"):
        result = {k: v for k, v in metrics.items() if k in _RESULT_KEYS}
        result["history"] = json.loads(metrics["history_json"])
        where = {k: metrics.get(k, "") for k in ("node", "node_ip", "node_id", "gpu_ids", "cuda_visible_devices")}
        sweep.record_trial(trial, result, where=where)
    else:
        sweep.record_trial(trial, None, error=error or "stopped before it finished (scheduler or interrupt)")


_RESULT_KEYS = {"best_val_accuracy", "best_epoch", "test_accuracy", "epochs_run", "seconds", "world_size",
                "device", "checkpoint", "fp32_bytes", "int8_bytes"}


def _record(sweep: Sweep, grid) -> None:
    """After fit: make sure every trial of the grid has its row (the live callback writes most)."""
    recorded = set(sweep.store.read("trials")["trial_id"])
    for res in grid:
        trial = (res.config or {}).get("trial")
        if trial is None or trial["trial_id"] in recorded:
            continue
        record_result(sweep, trial, res.metrics, str(res.error).splitlines()[0] if res.error else None)


# --- evaluation as Ray tasks ----------------------------------------------------------------------

def evaluate_ray(sweep: Sweep, address: str | None = None) -> None:
    """Per checkpoint, where CPUs allow it: an attack task (GPU where there is one) makes the FP32
    adversarial images once; then the CUDA/fp32 cells (GPU) and the dynamic_int8 cells (CPU tasks
    split by defense) run side by side on them. Where CPUs are few, one task does it all."""
    import ray

    from models import QUANT_MODES
    from .console import progress_bar
    from .evaluate import evaluate_checkpoint, make_adversarials
    init_ray(address)
    store = sweep.store
    done = store.eval_keys()
    ev = sweep.spec.evaluate
    r = sweep.spec.resources
    has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    cpu_quants = [q for q in ev.quant if QUANT_MODES[q].cpu_only]
    dev_quants = [q for q in ev.quant if not QUANT_MODES[q].cpu_only]
    on_device = {"num_cpus": r.eval_cpus, "num_gpus": r.eval_gpus if has_gpu else 0}
    task_fn = ray.remote(run_task)
    eval_device = device_for(ev.device, on_device["num_gpus"])
    pending = []
    checkpoints = sweep.selected_checkpoints()
    slots = int(ray.cluster_resources().get("CPU", 1) / max(r.eval_cpus, 1e-3))
    k = _int8_tasks_per_checkpoint(slots, len(checkpoints), len(ev.defenses), has_gpu) if cpu_quants else 0
    for trial in checkpoints:
        task = {**sweep.eval_task(trial), "threads": max(1, int(r.eval_cpus))}
        task["evaluate"] = {**task["evaluate"], "device": eval_device}
        mine = [key for key in done if key[0] == trial["trial_id"]]
        if not k:    # no int8 task of its own: every cell in one task, no hand-over
            pending.append(task_fn.options(**on_device).remote(evaluate_checkpoint, task, mine))
            continue
        adv_ref = task_fn.options(**on_device).remote(make_adversarials, task, mine) if "fp32" in ev.sources else None
        dev = {**task, "evaluate": {**task["evaluate"], "quant": dev_quants}}
        pending.append(task_fn.options(**on_device).remote(evaluate_checkpoint, dev, mine, adversarials=adv_ref))
        for defenses in _split(ev.defenses, k):
            # int8 kernels are CPU kernels: these tasks reserve no GPU and are handed the CPU
            t = {**task, "evaluate": {**task["evaluate"], "quant": cpu_quants, "defenses": defenses, "device": "cpu"},
                 "examples_path": None}
            pending.append(task_fn.options(num_cpus=r.eval_cpus, num_gpus=0).remote(evaluate_checkpoint, t, mine,
                                                                                   adversarials=adv_ref))
    with progress_bar() as bar:
        job = bar.add_task("evaluate cells (Ray tasks)", **sweep.eval_progress(done, checkpoints))
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            rows = ray.get(ready[0])
            store.append_eval(rows)      # each finished task's rows are on disk at once
            bar.advance(job, len(rows))


def _int8_tasks_per_checkpoint(cpu_slots: int, n_checkpoints: int, n_defenses: int, has_gpu: bool) -> int:
    """How many CPU tasks share one checkpoint's int8 cells (split by defense, so each defense's
    clean and attacked cells stay together and no defended image is made twice).

    With a GPU the int8 cells always leave the GPU task and spread over the free CPU slots.
    Without one, a separate int8 task only pays off where CPU slots outnumber checkpoints;
    0 means the int8 cells run in the checkpoint's one task (no second data load, no hand-over).
    """
    per_checkpoint = cpu_slots // max(n_checkpoints, 1)
    if has_gpu:
        return max(1, min(n_defenses, per_checkpoint))
    return max(0, min(n_defenses, per_checkpoint - 1))


def _split(defenses: dict, k: int) -> list[dict]:
    names = list(defenses)
    return [{n: defenses[n] for n in names[i::k]} for i in range(k)]
