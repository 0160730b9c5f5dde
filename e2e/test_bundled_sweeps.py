"""CI's second stage: every bundled sweep, in miniature, end to end through `robustgrid run` on the default
executor (Ray), the path users take. `pytest -q e2e` (1044 s on 2 cores with other tests beside it: BENCHMARKS.md).

Each sweep keeps every axis it declares (its training method, searcher or scheduler, attacks, threats, defenses,
quant modes, sources, select rule) and shrinks only sizes: synthetic images (a generated image folder where the
sweep reads one), one epoch (two for PBT and adversarial training), a few images, fewer attack iterations and
queries, and simple_cnn for a ResNet (on 2 CPU cores fast_at_preact18's PreActResNet-18 took 7 minutes to
train on 192 images: the robust-training check attacks a fixed 256-image batch every epoch).
A sweep added to sweeps/ is covered here without editing this file."""
from __future__ import annotations

import numpy as np
import pytest
import yaml
from PIL import Image

ray = pytest.importorskip("ray")

from robustgrid.attacks.base import ATTACKS
from robustgrid.runner.bundled import bundled_sweeps, resolve_sweep
from robustgrid.runner.cli import main
from robustgrid.runner.evaluate import count_cells
from robustgrid.runner.results import EVAL_KEY, ResultStore
from robustgrid.runner.spec import load_spec

# smaller sizes for the parameters an attack declares; every other parameter as the sweep sets it
SHRINK = {"steps": 2, "queries": 16, "targets": 2, "restarts": 1, "eot_iter": 2}
SMALL_MODELS = ("simple_cnn", "improved_cnn")
# the smallest CIFAR-10 entries of RobustBench 1.1's zoo per threat model (PreActResNet-18s, 11.2 M parameters)
SMALL_ROBUSTBENCH = {"Linf": "Wong2020Fast", "L2": "Rice2020Overfitting"}


@pytest.fixture(scope="module", autouse=True)
def one_ray():
    """One local Ray for every sweep (its start-up is the expensive part); `run` joins it as it would a cluster."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def image_folder(root) -> str:
    """A folder-per-class set in the Linnaeus 5 layout: 5 classes, 40 train and 12 test PNGs each, 32x32."""
    g = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 12)):
        for c in range(5):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            base = g.integers(0, 256, size=3)
            for i in range(n):
                img = np.clip(base + g.normal(0, 40, size=(32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i}.png")
    return str(root)


def _shrunk_attack(item):
    name, params = (item, {}) if isinstance(item, str) else next(iter(item.items()))
    declared = ATTACKS.get(name).params
    params = {**(params or {}), **{k: v for k, v in SHRINK.items() if k in declared}}
    return {name: params}


def robustbench_folder(specs: list, root) -> str:
    """RobustBench's own architectures with weights made here, saved where RobustBench keeps them (no download)."""
    import sys

    import torch
    sys.modules.setdefault("autoattack", pytest.importorskip("pyautoattack"))    # robustbench 1.1's import name
    pytest.importorskip("robustbench", exc_type=ImportError)
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    for spec in specs:
        spec = spec if isinstance(spec, dict) else {"spec": spec}
        dataset, threat = spec.get("dataset", "cifar10"), spec.get("threat_model", "Linf")
        name = spec["spec"].removeprefix("robustbench:")
        torch.manual_seed(0)
        model = model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat)][name]["model"]()
        (root / dataset / threat).mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": model.state_dict()}, root / dataset / threat / f"{name}.pt")
    return str(root)


def miniature(raw: dict, tmp_path) -> list[str]:
    """Overrides that shrink a sweep's sizes and keep its axes."""
    data, train, ev = raw.get("data", {}), raw.get("train", {}), raw.get("evaluate", {})
    o = ["data.val_size=32", "data.train_subset=null"]
    if raw.get("models"):        # one RobustBench model of the sweep's threat model, its weights made here: the
        # zoo's smallest (a PreActResNet-18; the sweep's WRN-28-10s took 269 s here for one, 10 minutes for two, and
        # take no path through robustbench's loader or robustgrid's grid that it does not)
        first = raw["models"][0] if isinstance(raw["models"][0], dict) else {"spec": raw["models"][0]}
        small = {**first, "spec": "robustbench:" + SMALL_ROBUSTBENCH[first.get("threat_model", "Linf")]}
        models = [{**small, "model_dir": robustbench_folder([small], tmp_path / "models")}]
        o.append(f"models={yaml.safe_dump(models, default_flow_style=True).strip()}")
    if data.get("dataset") == "imagefolder":
        o.append(f"data.path={image_folder(tmp_path / 'images')}")
    elif ev.get("corruptions"):      # CIFAR-10-C corrupts CIFAR-10: both as stand-ins in the official formats
        from robustgrid.runner.data.standins import write_cifar10, write_cifar10c
        write_cifar10c(tmp_path / "data", *write_cifar10(tmp_path / "data", n_train=40, n_test=16))
        names = ev["corruptions"].get("names", "all")
        o += [f"data.root={tmp_path / 'data'}", "data.val_size=16",
              f"evaluate.corruptions={{names: {['gaussian_noise', 'fog'] if names == 'all' else names[:2]}, severities: [1, 5]}}"]
    else:
        o += ["data.dataset=synthetic", "data.synthetic_train=192", "data.synthetic_test=32"]
    pbt = (raw.get("scheduler") or {}).get("type") == "pbt"
    adversarial = train.get("adversarial", "none") != "none"
    # two epochs where the second is a different path: PBT's exploit, adversarial training's reporting (it crashed there)
    if train:
        o += [f"train.epochs={2 if pbt or adversarial else 1}", "train.batch_size=64"]
    if train and train.get("model") not in SMALL_MODELS:     # a ResNet's CPU minutes buy no path the small CNN does not take
        o.append("train.model=simple_cnn")
    if pbt:
        o.append("scheduler.perturbation_interval=1")
    if (raw.get("scheduler") or {}).get("grace_period"):
        o.append("scheduler.grace_period=1")
    if adversarial:
        o.append("train.robust_val_images=16")
        methods = train["adversarial"]["grid_search"] if isinstance(train["adversarial"], dict) else [train["adversarial"]]
        if "fgsm_rs" not in methods:      # a step count is refused for FGSM-RS's one step
            o.append("train.adv_steps=2")
    for key in ("lr", "weight_decay"):      # a grid keeps two of its values: still a grid, half the trials
        if isinstance(train.get(key), dict) and "grid_search" in train[key]:
            o.append(f"train.{key}={yaml.safe_dump({'grid_search': train[key]['grid_search'][:2]}, default_flow_style=True).strip()}")
    if raw.get("num_samples", 1) > 1:
        o.append(f"num_samples={2 if (raw.get('search') or {}).get('algorithm') in ('optuna', 'hyperopt') else 1}")
    o += ["resources.cpus_per_trial=1", "resources.gpus_per_trial=0", "resources.eval_cpus=1", "resources.eval_gpus=0"]
    n = 4 if raw.get("models") else 8      # RobustBench's WRN-28-10s are the slowest models here
    o += [f"evaluate.n_images={n}", f"evaluate.batch_size={n}", "evaluate.examples=0"]
    if "attacks" in ev:
        o.append(f"evaluate.attacks={yaml.safe_dump([_shrunk_attack(a) for a in ev['attacks']], default_flow_style=True).strip()}")
    if "eot_samples" in ev:
        o.append("evaluate.eot_samples=2")
    if "calibration_images" in ev:
        o.append("evaluate.calibration_images=32")
    return o


@pytest.mark.parametrize("name", sorted(bundled_sweeps()))
def test_bundled_sweep_runs_end_to_end_in_miniature(name, tmp_path):
    raw = yaml.safe_load(resolve_sweep(name).read_text())
    overrides = miniature(raw, tmp_path)
    spec, _ = load_spec(resolve_sweep(name), overrides)
    out = tmp_path / "out"
    args = ["run", name, "--out", str(out)]
    for o in overrides:
        args += ["--set", o]
    assert main(args) == 0, f"robustgrid run {name} with {overrides}"
    store = ResultStore(out)
    trials, ev = store.read("trials"), store.read_eval()
    assert len(trials) and set(trials["status"]) == {"ok"}, trials[["trial_id", "status", "error"]]
    expected_trials = {"all": len(trials), "best": 1, "top_k": min(spec.evaluate.top_k, len(trials))}[spec.evaluate.select]
    assert ev["trial_id"].nunique() == expected_trials
    assert len(ev) == expected_trials * count_cells(spec.evaluate), "every planned cell, once"
    assert not ev.duplicated(list(EVAL_KEY)).any()
