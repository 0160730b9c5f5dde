"""`robustgrid run` through Ray: check the cluster, train the trials, evaluate the checkpoints."""
from __future__ import annotations

from .ray_eval import evaluate_ray
from .ray_setup import check_cluster, init_ray
from .ray_trials import train_ray
from .sweep import Sweep


def run_ray(sweep: Sweep, address: str | None = None, resume: bool = False) -> None:
    init_ray(address)
    check_cluster(sweep, address)
    sweep.fetch_data()         # once, here: trials only read it
    train_ray(sweep, resume)
    evaluate_ray(sweep, address)
