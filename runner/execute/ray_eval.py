"""Evaluation as Ray tasks: per checkpoint an attack task, the device cells and the int8 CPU cells."""
from __future__ import annotations

from dataclasses import replace

from ...models import quant_mode
from ..console import progress_bar
from ..evaluate import evaluate_checkpoint, make_adversarials
from .ray_setup import device_for, init_ray, run_task
from .sweep import Sweep


def evaluate_ray(sweep: Sweep, address: str | None = None) -> None:
    """Per checkpoint, where CPUs allow it: an attack task (GPU where there is one) makes the FP32
    adversarial images once; then the CUDA/fp32 cells (GPU) and the dynamic_int8 cells (CPU tasks
    split by defense) run side by side on them. Where CPUs are few, one task does it all."""
    import ray
    init_ray(address)
    sweep.fetch_data()
    store = sweep.store
    done = store.eval_keys()
    ev = sweep.spec.evaluate
    r = sweep.spec.resources
    has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    cpu_quants = [q for q in ev.quant if quant_mode(q).cpu_only]
    dev_quants = [q for q in ev.quant if not quant_mode(q).cpu_only]
    on_device = {"num_cpus": r.eval_cpus, "num_gpus": r.eval_gpus if has_gpu else 0}
    task_fn = ray.remote(run_task)
    pending = []
    checkpoints = sweep.selected_checkpoints()
    slots = int(ray.cluster_resources().get("CPU", 1) / max(r.eval_cpus, 1e-3))
    k = _int8_tasks_per_checkpoint(slots, len(checkpoints), len(ev.defenses), has_gpu) if cpu_quants else 0
    with progress_bar() as bar:
        job = bar.add_task("evaluate cells (Ray tasks)", **sweep.eval_progress(done, checkpoints))
        for trial in checkpoints:
            task = replace(sweep.eval_task(trial), threads=max(1, int(r.eval_cpus)))
            task = task.with_grid(device=device_for(ev.device, on_device["num_gpus"]))
            mine = [key for key in done if key[0] == trial["trial_id"]]
            if not k:    # no int8 task of its own: every cell in one task, no hand-over
                pending.append(task_fn.options(**on_device).remote(evaluate_checkpoint, task, mine))
                continue
            adv_ref = task_fn.options(**on_device).remote(make_adversarials, task, mine) if "fp32" in ev.sources else None
            pending.append(task_fn.options(**on_device).remote(evaluate_checkpoint, task.with_grid(quant=dev_quants),
                                                               mine, adversarials=adv_ref))
            for defenses in _split(ev.defenses, k):
                # int8 kernels are CPU kernels: these tasks reserve no GPU and are handed the CPU
                t = replace(task.with_grid(quant=cpu_quants, defenses=defenses, device="cpu"), examples_path=None)
                pending.append(task_fn.options(num_cpus=r.eval_cpus, num_gpus=0).remote(
                    evaluate_checkpoint, t, mine, adversarials=adv_ref))
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
