"""A 4-trial sweep through Ray on this machine: how much wall time is spent outside trials and evaluation."""
from __future__ import annotations

import time
from pathlib import Path

from rich.table import Table

from ..console import console
from .common import (
    bench_dataset,
    machine,
    write_json,
)


def bench_ray_overhead(json_path: str | None = None, epochs: int = 3, train_subset: int = 24000) -> int:
    """A 4-trial sweep through Ray on this machine: how much wall time is spent outside trials and
    evaluation? Ideal = busy seconds / concurrent slots; overhead = wall - ideal."""
    import tempfile

    import ray

    from ..execute import Sweep, evaluate_ray, init_ray, train_ray
    from ..spec import validate
    dataset = bench_dataset()
    raw = {"name": "overhead", "data": {"dataset": dataset, "train_subset": train_subset, "synthetic_train": 20000},
           "train": {"model": "simple_cnn", "lr": {"grid_search": [0.001, 0.0015, 0.002, 0.003]}, "epochs": epochs},
           "resources": {"cpus_per_trial": 1, "eval_cpus": 1},
           "evaluate": {"n_images": 500, "eps": [0, "8/255"], "defenses": ["none", "jpeg", "median"], "examples": 0}}
    out = Path(tempfile.mkdtemp(prefix="robustgrid-overhead-"))
    sweep = Sweep(validate(raw), raw, out)
    sweep.write_spec()
    t0 = time.perf_counter()
    init_ray(None)
    t_init = time.perf_counter() - t0
    slots = int(ray.cluster_resources().get("CPU", 1))
    t1 = time.perf_counter()
    train_ray(sweep, resume=False)
    t_train = time.perf_counter() - t1
    t2 = time.perf_counter()
    evaluate_ray(sweep)
    t_eval = time.perf_counter() - t2
    wall = time.perf_counter() - t0
    trials, ev = sweep.store.read("trials"), sweep.store.read_eval()
    busy_train, busy_eval = float(trials["seconds"].sum()), float(ev["seconds"].sum())
    ideal = busy_train / min(slots, len(trials)) + busy_eval / min(slots, 2 * len(trials))
    result = {"machine": machine(), "dataset": dataset, "trials": len(trials), "slots": slots,
              "mean_trial_s": busy_train / len(trials), "ray_init_s": t_init, "train_phase_s": t_train,
              "eval_phase_s": t_eval, "wall_s": wall, "busy_train_s": busy_train, "busy_eval_s": busy_eval,
              "ideal_s": ideal, "overhead_fraction": (wall - ideal) / wall}
    t = Table(title="Ray overhead: 4-trial sweep")
    for k in ("trials", "slots", "mean_trial_s", "ray_init_s", "train_phase_s", "eval_phase_s", "wall_s", "ideal_s", "overhead_fraction"):
        t.add_row(k, f"{result[k]:.3f}" if isinstance(result[k], float) else str(result[k]))
    console.print(t)
    if json_path:
        write_json(json_path, result)
    return 0
