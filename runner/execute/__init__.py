"""Execution: where trials and evaluation tasks run (inline, or Ray trials and tasks), and the live view.

The Ray modules import Ray; they load on first use, so the inline executor never imports it.
"""
import importlib

from .inline import check_inline, evaluate_inline, run_inline
from .lock import FolderBusy, FolderLock, check_out
from .run import run_sweep
from .sweep import Sweep, resolve_out, trial_id_of

_RAY = {"run_ray": "ray_run", "evaluate_ray": "ray_eval", "train_ray": "ray_trials", "init_ray": "ray_setup",
        "check_cluster": "ray_setup"}
__all__ = ["FolderBusy", "FolderLock", "Sweep", "check_inline", "check_out", "evaluate_inline", "resolve_out", "run_inline", "run_sweep",
           "trial_id_of", *_RAY]


def __getattr__(name: str):
    if name in _RAY:
        return getattr(importlib.import_module(f".{_RAY[name]}", __name__), name)
    raise AttributeError(name)
