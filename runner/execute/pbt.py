"""Population-based training (Jaderberg et al. 2017) through Ray Tune's PopulationBasedTraining.

Tune's PBT hands a weak trial the whole config of the trial it clones. A robustgrid trial is its
configuration's hash and owns its folder, so here a clone keeps its own id, folder and seed and takes
only the mutable keys (perturbed, then kept inside their bounds) with the stronger trial's checkpoint;
the trial itself records whose weights it took (train.py: the lineage, the final weights' ancestry: a
clone's own earlier epochs, discarded, are not in it).
"""
from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler

from ..space import bounds, kind_of, to_tune
from .sweep import Sweep


class KeepIdentityPBT(PopulationBasedTraining):
    def __init__(self, limits: dict[str, tuple[float, float]], **kwargs):
        super().__init__(**kwargs)
        self._limits = limits
        self._finishing: set = set()    # trials past their last epoch, measuring their test split

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        # At its last epoch a trial has nothing left to train: a clone there would only copy the other's final
        # weights (and, while that other is still measuring its test split, again and again)
        if result.get("epoch", 0) >= trial.config["trial"]["config"]["epochs"]:
            self._finishing.add(trial)
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def _quantiles(self):
        """Tune's quantiles among the trials still training. A trial past its last epoch is out of the ranking:
        ranked on its last epoch's score it could land in the lower quantile when another trial reaches the sync
        point (a resumed population's members start at different epochs), and exploiting it would pause it
        mid-measurement, its final report lost."""
        hidden = {t: self._trial_state.pop(t) for t in self._finishing if t in self._trial_state}
        try:
            return super()._quantiles()
        finally:
            self._trial_state.update(hidden)

    def choose_trial_to_run(self, tune_controller):
        """Tune's choice; and where every trial still training waits at a sync point for trials that have left the
        population (finished, stopped early, or a resumed population whose members start at different epochs),
        nothing would ever report again (Tune's loop spins at 100 % CPU): they go on to the next sync point
        without a perturbation at this one."""
        trial = super().choose_trial_to_run(tune_controller)
        live = tune_controller.get_live_trials()
        waiting = [t for t in live if t.status in (Trial.PAUSED, Trial.PENDING)]
        if trial is not None or not waiting or any(t.status == Trial.RUNNING for t in live):
            return trial
        self._next_perturbation_sync = max(self._trial_state[t].last_train_time for t in waiting) + \
            self._perturbation_interval
        return super().choose_trial_to_run(tune_controller)

    def _get_new_config(self, trial, trial_to_clone) -> tuple[dict, dict]:
        explored, operations = super()._get_new_config(trial, trial_to_clone)
        mine = copy.deepcopy(trial.config)
        mine["trial"].setdefault("initial_config", copy.deepcopy(mine["trial"]["config"]))   # what its id hashes
        for key in self._hyperparam_mutations["trial"]["config"]:
            value = explored["trial"]["config"][key]
            lo, hi = self._limits.get(key, (value, value))
            mine["trial"]["config"][key] = min(max(value, lo), hi)
        return mine, operations


def pbt_scheduler(sweep: Sweep) -> KeepIdentityPBT:
    """The sweep's PBT; metric and mode come from TuneConfig (the search's metric, each epoch's value).
    Synchronous: the population meets at each perturbation epoch and is ranked there. (Asynchronous PBT pauses
    the strong trial while a clone restarts, then ranks the clone's next epoch against the paused trial's
    last one, clones again, and so on: seen here looping ten times on one epoch.) Tune's explore step draws
    from Python's `random`, seeded with the search seed."""
    s = sweep.spec.scheduler
    random.seed(sweep.spec.search.seed)
    mutations = {k: v["choice"] if kind_of(v) == "choice" else to_tune(v) for k, v in s.mutations.items()}
    limits = {k: b for k, v in s.mutations.items() if (b := bounds(v))}
    return KeepIdentityPBT(limits, time_attr="epoch", perturbation_interval=s.perturbation_interval,
                           hyperparam_mutations={"trial": {"config": mutations}}, quantile_fraction=s.quantile_fraction,
                           resample_probability=s.resample_probability, synch=True)


def resumed_trial(trial: dict[str, Any], mutable: list[str]) -> dict[str, Any]:
    """A trial a PBT run resumes from its own last.pt: with the perturbed values it was training with (its
    checkpoint's configuration), not the planned ones; `initial_config` keeps what its id hashes. Started from the
    planned values, its next checkpoint named the planned lr beside an optimizer at the perturbed one, and a clone
    of it scaled the lr by their ratio (seen: 0.04 x 0.014 / 1e-5 = 56, the loss NaN, the trial never finished)."""
    config = trial["config"]
    last = Path(config["out_dir"]) / "last.pt"
    if not last.exists():
        return trial
    from ...models.checkpoint import read_checkpoint
    trained = read_checkpoint(last)["meta"]["config"]
    changed = {k: trained[k] for k in mutable if k in trained and trained[k] != config.get(k)}
    return {**trial, "config": {**config, **changed}, "initial_config": config} if changed else trial


def initial_trial(config: dict[str, Any]) -> dict[str, Any]:
    """The trial as planned (its id is the hash of this configuration), whatever PBT has changed since."""
    trial = config["trial"]
    return {**trial, "config": trial["initial_config"]} if "initial_config" in trial else trial
