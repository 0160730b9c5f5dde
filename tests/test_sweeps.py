"""The shipped sweep files are valid and say what they promise."""
from pathlib import Path

import pytest
from robustgrid.runner.spec import load_spec

SWEEPS = Path(__file__).parent.parent / "sweeps"


@pytest.mark.parametrize("name", ["quickstart", "cifar10_notebook", "cifar10_cluster", "adaptive", "quant"])
def test_sweep_files_validate(name):
    spec, _ = load_spec(SWEEPS / f"{name}.yaml")
    assert spec.name == name


def test_notebook_sweep_matches_the_notebook():
    spec, _ = load_spec(SWEEPS / "cifar10_notebook.yaml")
    (cfg,) = spec.trial_configs()
    assert cfg["model"] == "improved_cnn" and cfg["epochs"] == 25 and cfg["optimizer"] == "adamw"
    assert 0.03 in spec.evaluate.eps and spec.evaluate.n_images is None


def test_quickstart_is_the_promised_grid():
    spec, _ = load_spec(SWEEPS / "quickstart.yaml")
    assert len(spec.trial_configs()) == 2 and spec.evaluate.n_images == 1000
    assert spec.evaluate.eps == pytest.approx([0, 2 / 255, 4 / 255, 8 / 255])
    assert set(spec.evaluate.defenses) == {"none", "gaussian_blur", "jpeg", "median", "tv_denoise"}


def test_linnaeus_sweep_needs_its_folder(tmp_path):
    from robustgrid.runner.spec import SpecError
    with pytest.raises(SpecError, match="data.path"):
        load_spec(SWEEPS / "linnaeus5.yaml", [f"data.path={tmp_path / 'missing'}"])
    for split in ("train", "test"):
        (tmp_path / split / "berry").mkdir(parents=True)
    spec, _ = load_spec(SWEEPS / "linnaeus5.yaml", [f"data.path={tmp_path}"])
    assert spec.trial_configs()[0]["optimizer"] == "sgd" and max(spec.evaluate.eps) == 0.1


def test_bundled_sweeps_are_listed_with_descriptions_and_run_by_name():
    from robustgrid.runner.bundled import bundled_sweeps, resolve_sweep
    bundled = bundled_sweeps()
    assert set(bundled) == {"quickstart", "cifar10_notebook", "cifar10_cluster", "linnaeus5", "adaptive", "quant", "robustbench",
                            "autoattack", "robust_training", "fast_at_preact18", "search", "search_grid", "pbt", "cifar100",
                            "corruptions"}
    assert all(desc for _, desc in bundled.values())
    assert resolve_sweep("quickstart") == bundled["quickstart"][0]
    assert load_spec(resolve_sweep("quickstart"))[0].name == "quickstart"


def test_adaptive_sweep_trains_the_quickstarts_models_and_attacks_through_every_defense():
    from robustgrid.runner.execute import trial_id_of
    quick, _ = load_spec(SWEEPS / "quickstart.yaml")
    spec, _ = load_spec(SWEEPS / "adaptive.yaml")
    assert [trial_id_of(c) for c in spec.trial_configs()] == [trial_id_of(c) for c in quick.trial_configs()]
    assert spec.evaluate.threats == ["oblivious", "adaptive"] and spec.evaluate.n_images == quick.evaluate.n_images
    assert [a.name for a in spec.evaluate.attacks] == ["fgsm", "pgd"]


def test_autoattack_sweep_reuses_the_quickstarts_models_and_keeps_its_trial_ids():
    from robustgrid.runner.execute import trial_id_of
    quick, _ = load_spec(SWEEPS / "quickstart.yaml")
    spec, _ = load_spec(SWEEPS / "autoattack.yaml")
    ids = [trial_id_of(c) for c in quick.trial_configs()]
    assert [trial_id_of(c) for c in spec.trial_configs()] == ids == ["t99b64ffc97", "td2c15ab70b"]   # ids of earlier releases
    attacks = [(a.name, a.params.get("version"), a.norm, spec.evaluate.eps_of(a)) for a in spec.evaluate.attacks]
    assert ("autoattack", "standard", "linf", [0, 8 / 255]) in attacks and ("autoattack", "standard", "l2", [0.5]) in attacks
    assert ("autoattack", "rand", "linf", [0, 8 / 255]) in attacks and ("pgd", None, "linf", [0, 8 / 255]) in attacks
    wide = {**quick.trial_configs()[0], "model": "wide_resnet", "depth": 16, "widen_factor": 4}
    assert trial_id_of(wide) not in ids
