"""Sweeps that search: distributions in the sweep file, seeded random search, validation with the key path,
the clean-robust Pareto front."""
import pandas as pd
import pytest
import yaml
from robustgrid.runner.cli import main
from robustgrid.runner.execute import Sweep
from robustgrid.runner.spec import SpecError, validate

SEARCH = {"name": "search", "data": {"dataset": "synthetic", "synthetic_train": 200, "synthetic_test": 20},
          "train": {"model": "simple_cnn", "epochs": 1, "lr": {"loguniform": [1e-4, 1e-1]},
                    "weight_decay": {"uniform": [0.0, 0.1]}, "batch_size": {"choice": [32, 64]},
                    "optimizer": {"grid_search": ["adamw", "sgd"]}, "early_stopping_patience": {"randint": [2, 5]}},
          "search": {"algorithm": "random", "seed": 7}, "num_samples": 40}


def _configs(raw: dict) -> list[dict]:
    return validate(raw).trial_configs()


def test_each_distribution_is_sampled_inside_its_bounds_and_recorded(tmp_path):
    configs = _configs(SEARCH)
    assert len(configs) == 2 * 40                       # per grid point, num_samples draws
    lr = [c["lr"] for c in configs]
    assert all(1e-4 <= v <= 1e-1 for v in lr)
    # log-uniform: about half of the draws below the geometric middle (1e-2.5), not a tenth as uniform would give
    assert 0.3 < sum(v < 10 ** -2.5 for v in lr) / len(lr) < 0.7
    assert all(0.0 <= c["weight_decay"] <= 0.1 for c in configs)
    assert {c["batch_size"] for c in configs} == {32, 64}
    assert {c["early_stopping_patience"] for c in configs} == {2, 3, 4}   # randint excludes its high
    assert {c["optimizer"] for c in configs} == {"adamw", "sgd"}
    trials = Sweep(validate(SEARCH), SEARCH, tmp_path).trials()       # the drawn values are the trial's columns
    assert len({t["trial_id"] for t in trials}) == 80 and trials[0]["config"]["lr"] == lr[0]


def test_the_same_seed_samples_the_same_configurations():
    assert _configs(SEARCH) == _configs(SEARCH)
    other = _configs({**SEARCH, "search": {"algorithm": "random", "seed": 8}})
    assert [c["lr"] for c in other] != [c["lr"] for c in _configs(SEARCH)]


@pytest.mark.parametrize("key, value, message", [
    ("lr", {"loguniform": [0, 0.1]}, "train.lr.loguniform: low 0 must be > 0"),
    ("lr", {"uniform": [0.1, 0.01]}, "train.lr.uniform: low 0.1 must be below high 0.01"),
    ("lr", {"loguniform": [1e-4]}, "train.lr.loguniform: must be [low, high]"),
    ("lr", {"normal": [0, 1]}, "train.lr: a dict value must be one of"),
    ("batch_size", {"choice": [32, -1]}, "train.batch_size.choice[1]:"),
    ("batch_size", {"choice": []}, "train.batch_size.choice: must be a non-empty list"),
    ("epochs", {"randint": [1.5, 3]}, "train.epochs.randint: bounds must be integers"),
    ("epochs", {"randint": [0, 3]}, "train.epochs.randint[0]:"),
])
def test_bad_distributions_exit_2_with_the_key_path(tmp_path, capsys, key, value, message):
    raw = yaml.safe_load(yaml.safe_dump(SEARCH))
    raw["train"][key] = value
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(raw))
    assert main(["run", str(p), "--out", str(tmp_path / "out"), "--executor", "inline"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()                  # nothing written


def test_a_sampled_key_needs_a_search_and_several_objectives_need_optuna():
    with pytest.raises(SpecError, match="train.lr: loguniform is sampled, not a grid: set search.algorithm"):
        validate({**SEARCH, "search": {"algorithm": "grid"}})
    with pytest.raises(SpecError, match="search.metric: robust_val_accuracy is measured only with adversarial training"):
        validate({**SEARCH, "search": {"algorithm": "random", "metric": "robust_val_accuracy"}})
    validate({**SEARCH, "train": {**SEARCH["train"], "adversarial": "fgsm_rs"},
              "search": {"algorithm": "random", "metric": "robust_val_accuracy"}})
    with pytest.raises(SpecError, match="search.metric: several objectives need algorithm optuna"):
        validate({**SEARCH, "search": {"algorithm": "random", "metric": ["val_accuracy", "robust_val_accuracy"]}})


PBT = {**SEARCH, "train": {"model": "simple_cnn", "epochs": 2, "lr": {"grid_search": [0.01, 0.1]}},
       "search": {"algorithm": "grid"}, "num_samples": 1,
       "scheduler": {"type": "pbt", "mutations": {"lr": {"loguniform": [1e-4, 1e-1]}}}}


@pytest.mark.parametrize("change, message", [
    ({"scheduler": {"type": "pbt"}}, "scheduler.mutations: pbt needs the keys it may change"),
    ({"scheduler": {"type": "pbt", "mutations": {"model": ["resnet18"]}}}, "scheduler.mutations.model: pbt may change only"),
    ({"scheduler": {"type": "pbt", "mutations": {"lr": {"loguniform": [0, 1]}}}}, "scheduler.mutations.lr.loguniform: low 0"),
    ({"scheduler": {"type": "pbt", "mutations": {"lr": [0.1], "momentum": [0.5, 1.5]}}}, "scheduler.mutations.momentum.choice[1]:"),
    ({"scheduler": {"type": "fifo", "mutations": {"lr": [0.1]}}}, "scheduler.mutations: only with type pbt"),
    ({"search": {"algorithm": "optuna"}}, "scheduler.type: pbt starts from a grid or a random population"),
    ({"resources": {"workers_per_trial": 2}}, "scheduler.type: pbt restores trials from Tune's checkpoints"),
    ({"train": {**PBT["train"], "batch_size": {"grid_search": [32, 64]}}}, "train.batch_size: varies across trials"),
    ({"train": {**PBT["train"], "lr_schedule": "cosine"}}, "scheduler.mutations.lr: lr_schedule cosine"),
])
def test_a_pbt_sweep_that_cannot_clone_weights_is_refused_with_the_key_path(change, message):
    validate(PBT)
    with pytest.raises(SpecError) as e:
        validate({**PBT, **change})
    assert str(e.value).startswith(message)


def test_the_inline_executor_refuses_pbt(tmp_path, capsys):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(PBT))
    assert main(["run", str(p), "--out", str(tmp_path / "out"), "--executor", "inline"]) == 2
    assert "scheduler.type: pbt pauses, clones and restarts trials through Ray Tune" in capsys.readouterr().err


def views_ev() -> pd.DataFrame:
    return pd.DataFrame(columns=["eps", "defense", "attack_source", "trial_id", "quant", "n", "correct"])


def test_the_pareto_front_keeps_the_trials_nothing_beats_on_both():
    from robustgrid.runner.results.views import pareto_front, trials_views
    t = pd.DataFrame({"trial_id": list("abcde"), "status": "ok", "best_val_accuracy": [0.9, 0.8, 0.7, 0.85, 0.6],
                      "best_robust_val_accuracy": [0.1, 0.3, 0.35, 0.2, 0.3], "lr": [1e-3] * 5})
    assert pareto_front(t)["trial_id"].tolist() == ["a", "d", "b", "c"]      # e: b is as robust and cleaner
    views = trials_views(t, views_ev(), ["lr"], rank_by="best_robust_val_accuracy")
    ranked, front = views[0], views[-1]
    assert [r[0] for r in ranked.rows] == ["c", "b", "e", "d", "a"]           # ranked by the search's metric
    assert front.title == "clean-robust Pareto front" and [r[0] for r in front.rows] == ["a", "d", "b", "c"]
    standard = t.assign(best_robust_val_accuracy=float("nan"))      # no robust figure: no front, no view
    assert pareto_front(standard).empty and len(trials_views(standard, views_ev(), ["lr"])) == 2
