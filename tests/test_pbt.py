"""PBT's scheduler and resume without a cluster: a trial past its last epoch is never ranked (exploiting it would
pause it mid-measurement), and a resumed trial trains on with the values it was perturbed to."""
import types

import pytest

pytest.importorskip("ray")
from ray.tune.experiment import Trial
from robustgrid.runner.execute.pbt import KeepIdentityPBT, initial_trial, resumed_trial
from robustgrid.runner.train import train


def test_a_trial_past_its_last_epoch_is_in_neither_quantile():
    pbt = KeepIdentityPBT({}, time_attr="epoch", metric="val_accuracy", mode="max", perturbation_interval=1,
                          hyperparam_mutations={"trial": {"config": {"lr": [0.1, 0.01]}}}, quantile_fraction=0.5,
                          synch=True)
    trials = [Trial("__fake", config={"trial": {"config": {"epochs": 4, "lr": 0.1}}}, stub=True) for _ in range(3)]
    for t, score in zip(trials, (0.2, 0.5, 0.9)):
        pbt.on_trial_add(types.SimpleNamespace(search_alg=None), t)
        pbt._trial_state[t].last_score = score
    assert pbt._quantiles() == ([trials[0]], [trials[2]])
    assert pbt.on_trial_result(None, trials[0], {"epoch": 4, "val_accuracy": 0.2}) == "CONTINUE"
    assert pbt._quantiles() == ([trials[1]], [trials[2]]) and len(pbt._trial_state) == 3


def test_a_resumed_pbt_trial_trains_on_with_its_perturbed_values_and_keeps_its_identity(tmp_path):
    """Its checkpoint was written by a clone at lr 0.03: resumed from the planned 1e-5 its next checkpoint named
    1e-5 beside an optimizer at 0.03, and the next clone of it scaled the lr 3000-fold."""
    small = {"model": "simple_cnn", "dataset": "synthetic", "synthetic_train": 200, "synthetic_test": 40,
             "epochs": 1, "batch_size": 64, "seed": 1, "threads": 1, "optimizer": "sgd"}
    folder = str(tmp_path / "t1")
    train({**small, "lr": 0.03, "momentum": 0.5, "out_dir": folder})
    planned = {"trial_id": "t1", "config": {**small, "lr": 1e-5, "momentum": 0.9, "out_dir": folder}}
    resumed = resumed_trial(planned, ["lr", "momentum"])
    assert resumed["config"]["lr"] == 0.03 and resumed["config"]["momentum"] == 0.5
    assert initial_trial({"trial": resumed})["config"] == planned["config"]     # its id and row: the planned trial
    assert resumed_trial({**planned, "config": {**planned["config"], "out_dir": str(tmp_path / "new")}},
                         ["lr"])["config"]["lr"] == 1e-5          # nothing trained yet: as planned
