"""Evaluation as Ray tasks: every image shard of every checkpoint a task of its own (an attack task, the
device cells and the int8 CPU cells where CPUs allow), each cell written once its last shard lands."""
from __future__ import annotations

from collections import Counter
from dataclasses import replace

from ...files import mirrors
from ...models import quant_mode, read_checkpoint
from ..console import progress_bar
from ..evaluate import evaluate_checkpoint, make_adversarials
from .ray_setup import device_for, init_ray, run_shard_task, run_task
from .sweep import Sweep


def evaluate_ray(sweep: Sweep, address: str | None = None) -> None:
    """Per (checkpoint, shard), where CPUs allow it: an attack task (GPU where there is one) makes the FP32
    adversarial images once; then the CUDA/fp32 cells (GPU) and the dynamic_int8 cells (CPU tasks split by
    defense) run side by side on them. Where CPUs are few, one task does a shard's every cell. Every shard
    of every checkpoint is scheduled at once, so one checkpoint's evaluation spreads over every device."""
    import ray
    init_ray(address)
    sweep.fetch_data()
    ledger = sweep.shard_ledger()
    sweep.store.append_eval(ledger.landed_before())      # cells whose last shard landed just before a stop
    ev, r = sweep.spec.evaluate, sweep.spec.resources
    has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    checkpoints = sweep.selected_checkpoints()
    units = sweep.shards_to_run(ledger, checkpoints)
    slots = int(ray.cluster_resources().get("CPU", 1) / max(r.eval_cpus, 1e-3))
    cpu_quants = [q for q in ev.quant if quant_mode(q).cpu_only]
    k = _int8_tasks_per_checkpoint(slots, len(units), len(ev.defenses), has_gpu) if cpu_quants else 0
    # each checkpoint's weights enter Ray's object store once: a node fetches them once for all its tasks
    # (a model robustgrid did not train is loaded by each task from its file or RobustBench's folder)
    weights = {t["trial_id"]: None if sweep.is_external(t) else ray.put(read_checkpoint(t["checkpoint"]))
               for t in {u[0]["trial_id"]: u[0] for u in units}.values()}
    tasks_of_unit: dict = {}
    with progress_bar() as bar:
        cells_job = bar.add_task("evaluate cells (Ray tasks)", **sweep.eval_progress(ledger.done, checkpoints))
        shards_job = bar.add_task("shards", total=len(units))
        for i, (trial, shard) in enumerate(units):
            task = sweep.eval_task(trial).for_shard(*shard, ledger.data_digest)
            task = replace(task, threads=max(1, int(r.eval_cpus))).with_grid(
                device=device_for(ev.device, r.eval_gpus if has_gpu else 0))
            refs = _submit_shard(task, ledger.done_in(shard), k, weights[trial["trial_id"]], has_gpu, r)
            tasks_of_unit.update({ref: i for ref in refs})
        left = Counter(tasks_of_unit.values())      # a shard is done when all of its tasks have returned
        pending = list(tasks_of_unit)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            cells = ledger.add(ray.get(ready[0]))    # the shard's rows on disk at once; the cells they complete
            sweep.store.append_eval(cells)
            bar.advance(cells_job, len(cells))
            unit = tasks_of_unit[ready[0]]
            left[unit] -= 1
            if not left[unit]:
                bar.advance(shards_job, 1)


def _submit_shard(task, done: set, k: int, weights, has_gpu: bool, r) -> list:
    """One shard's tasks: every cell in one task, or (k > 0) an attack task, the device cells and k int8 CPU
    tasks on its images. Returns the refs that bring rows back."""
    import ray
    ev = task.evaluate
    on_device = {"num_cpus": r.eval_cpus, "num_gpus": r.eval_gpus if has_gpu else 0}
    shard_fn, to_store = ray.remote(run_shard_task), mirrors()
    if not k:    # no int8 task of its own: every cell in one task, no hand-over
        return [shard_fn.options(**on_device).remote(evaluate_checkpoint, task, done, weights=weights, mirrors=to_store)]
    cpu_quants = [q for q in ev.quant if quant_mode(q).cpu_only]
    dev_quants = [q for q in ev.quant if not quant_mode(q).cpu_only]
    adv_ref = (ray.remote(run_task).options(**on_device).remote(make_adversarials, task, done, weights=weights, mirrors=to_store)
               if "fp32" in ev.sources else None)
    refs = [shard_fn.options(**on_device).remote(evaluate_checkpoint, task.with_grid(quant=dev_quants), done,
                                                 adversarials=adv_ref, weights=weights, mirrors=to_store)]
    for defenses in _split(ev.defenses, k):
        # int8 kernels are CPU kernels: these tasks reserve no GPU and are handed the CPU
        t = replace(task.with_grid(quant=cpu_quants, defenses=defenses, device="cpu"), examples_path=None)
        refs.append(shard_fn.options(num_cpus=r.eval_cpus, num_gpus=0).remote(
            evaluate_checkpoint, t, done, adversarials=adv_ref, weights=weights, mirrors=to_store))
    return refs


def _int8_tasks_per_checkpoint(cpu_slots: int, n_units: int, n_defenses: int, has_gpu: bool) -> int:
    """How many CPU tasks share one shard's int8 cells (split by defense, so each defense's clean and
    attacked cells stay together and no defended image is made twice).

    With a GPU the int8 cells always leave the GPU task and spread over the free CPU slots.
    Without one, a separate int8 task only pays off where CPU slots outnumber the shards to run;
    0 means the int8 cells run in the shard's one task (no second data load, no hand-over).
    """
    per_unit = cpu_slots // max(n_units, 1)
    if has_gpu:
        return max(1, min(n_defenses, per_unit))
    return max(0, min(n_defenses, per_unit - 1))


def _split(defenses: dict, k: int) -> list[dict]:
    names = list(defenses)
    return [{n: defenses[n] for n in names[i::k]} for i in range(k)]
