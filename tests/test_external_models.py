"""Models robustgrid did not train: a torch.export archive, a TorchScript file, an nn.Module handed to the API and
a RobustBench checkpoint give the verdicts of the same weights evaluated as a trial; what cannot be evaluated
is refused before anything is written."""
import warnings

import pandas as pd
import pytest
import robustgrid
import torch
import yaml
from robustgrid.models import load_checkpoint
from robustgrid.runner.cli import main
from robustgrid.runner.evaluate.rows import unpack_mask
from torch import nn

GRID = {"n_images": 48, "attacks": ["fgsm", {"pgd": {"steps": 3}}], "eps": [0, "8/255"], "defenses": ["none", "median"],
        "examples": 0, "shard_images": 24}
SETS = ["--set", "data.dataset=synthetic", "--set", "data.synthetic_test=64"]
CELL = ["quant", "attack", "attack_params", "threat", "eps", "defense", "defense_params"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One trial trained briefly on synthetic data, evaluated on GRID (fp32 and dynamic_int8)."""
    root = tmp_path_factory.mktemp("trained")
    sweep = {"name": "t", "data": {"dataset": "synthetic", "synthetic_train": 600, "synthetic_test": 64, "val_size": 100},
             "train": {"model": "simple_cnn", "epochs": 1, "batch_size": 64},
             "evaluate": {**GRID, "quant": ["fp32", "dynamic_int8"]}}
    (root / "s.yaml").write_text(yaml.safe_dump(sweep))
    assert main(["run", str(root / "s.yaml"), "--out", str(root / "out"), "--executor", "inline"]) == 0
    res = robustgrid.load(root / "out")
    return root, root / "out" / res.trials["checkpoint"].iloc[0], res.eval


def _masks(ev: pd.DataFrame, quant: str = "fp32") -> dict:
    ev = ev[ev["quant"] == quant]
    return {tuple(r[c] for c in CELL): unpack_mask(r["correct_mask"], r["n"]).tolist() for r in ev.to_dict("records")}


def _export(model: nn.Module, path, kind: str) -> None:
    x = torch.rand(4, 3, 32, 32)
    if kind == "export":
        torch.export.save(torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},)), path)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(torch.jit.script(model), path)


@pytest.mark.parametrize("kind,suffix", [("export", "pt2"), ("torchscript", "ts")])
def test_an_exported_model_gives_the_checkpoints_verdicts_image_by_image(trained, tmp_path, kind, suffix):
    _, checkpoint, ev = trained
    path = tmp_path / f"model.{suffix}"
    _export(load_checkpoint(checkpoint), path, kind)
    out = tmp_path / "out"
    assert main(["eval", "--model", str(path), "--out", str(out), "--executor", "inline", *SETS,
                 "--set", f"evaluate={yaml.safe_dump({**GRID, 'quant': ['fp32']}, default_flow_style=True).strip()}"]) == 0
    theirs = robustgrid.load(out).eval
    assert set(theirs["model_source"]) == {"file"} and theirs["model"].iloc[0] == path.name
    assert _masks(theirs) == _masks(ev) and len(_masks(ev)) == 8
    trials = robustgrid.load(out).trials
    assert trials["n_params"].iloc[0] == sum(p.numel() for p in load_checkpoint(checkpoint).parameters())
    from robustgrid.files import file_sha256
    assert trials["model_sha256"].iloc[0] == file_sha256(path) == theirs["model_sha256"].iloc[0]
    # the folder re-evaluates with a new grid, as a folder of trials does
    assert main(["eval", str(out), "--executor", "inline", "--set", "evaluate.eps=[0, 2/255]"]) == 0
    assert 2 / 255 in set(robustgrid.load(out).eval["eps"])


def test_a_module_from_the_api_gives_the_checkpoints_verdicts_in_every_quant_mode(trained, tmp_path):
    _, checkpoint, ev = trained
    res = robustgrid.evaluate(load_checkpoint(checkpoint), out=tmp_path / "out", executor="inline",
                              data={"dataset": "synthetic", "synthetic_test": 64},
                              evaluate={**GRID, "quant": ["fp32", "dynamic_int8"]})
    assert set(res.eval["model_source"]) == {"python"}
    for quant in ("fp32", "dynamic_int8"):
        assert _masks(res.eval, quant) == _masks(ev, quant)
    assert len(res.trials) == 1, "nothing was trained"
    assert res.trials["architecture"].iloc[0] == "Sequential"


def test_trial_rows_carry_the_checkpoints_sha256(trained):
    from robustgrid.files import file_sha256
    _, checkpoint, ev = trained
    assert set(ev["model_source"]) == {"trial"} and set(ev["model_sha256"]) == {file_sha256(checkpoint)}


def test_a_robustbench_checkpoint_loads_offline_and_equals_a_direct_forward(tmp_path):
    """RobustBench's own architecture, weights made here, saved where RobustBench keeps them: no download."""
    import sys
    sys.modules.setdefault("autoattack", pytest.importorskip("pyautoattack"))   # robustbench 1.1's import name
    pytest.importorskip("robustbench", exc_type=ImportError)
    from robustgrid.models.external import _robustbench_zoo, load_external
    from robustgrid.runner.spec import ModelSource
    ext = ModelSource(spec="robustbench:Standard", model_dir=str(tmp_path / "models")).external()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    torch.manual_seed(0)
    direct = model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf]["Standard"]["model"]().eval()
    (tmp_path / "models" / "cifar10" / "Linf").mkdir(parents=True)
    torch.save({"state_dict": {"module." + k: v for k, v in direct.state_dict().items()}},
               tmp_path / "models" / "cifar10" / "Linf" / "Standard.pt")
    assert _robustbench_zoo(ext)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(load_external(ext)(x), direct(x))
    out = tmp_path / "out"
    assert main(["eval", "--model", "robustbench:Standard", "--model-dir", str(tmp_path / "models"), "--out", str(out),
                 "--executor", "inline", *SETS, "--set", ("evaluate={n_images: 8, attacks: [fgsm], eps: [0, 8/255], "
                                                         "defenses: [none], quant: [fp32], examples: 0}")]) == 0
    assert set(robustgrid.load(out).eval["model_source"]) == {"robustbench"}


class Probabilities(nn.Module):
    def __init__(self, classes: int = 10, image: bool = False):
        super().__init__()
        self.linear, self.image = nn.Linear(3072, classes), image

    def forward(self, x):
        return x if self.image else self.linear(x.flatten(1)).softmax(1)


class Logits(Probabilities):
    def forward(self, x):
        return x if self.image else self.linear(x.flatten(1))


class Dropout(Logits):
    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.linear(self.drop(x.flatten(1)))


class BatchStatistics(Logits):
    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm1d(10)

    def forward(self, x):
        return self.norm(self.linear(x.flatten(1)))


@pytest.mark.parametrize("model,message", [
    (Logits(7), "7 outputs, but the dataset has 10 classes"),
    (Dropout().train(), "not deterministic: its logits differ by up to"),
    (BatchStatistics().train(), "not deterministic"),
    (Logits(image=True), "not a classifier: a batch of 8 images gave (8, 3, 32, 32)"),
    ("missing.pt2", "model file not found"),
    ("state_dict.pt", "not a torch.export archive (torch.export.save) or a TorchScript file"),
])
def test_what_cannot_be_evaluated_is_refused_with_the_reason_and_writes_nothing(tmp_path, capsys, model, message):
    if isinstance(model, nn.Module):
        path = tmp_path / "m.pt2"
        _export(model if model.training else model.eval(), path, "export")    # train mode: exported as it is
    else:
        path = tmp_path / model
        if model == "state_dict.pt":
            torch.save(Logits().state_dict(), path)
    assert main(["eval", "--model", str(path), "--out", str(tmp_path / "out"), "--executor", "inline", *SETS]) == 2
    assert message in capsys.readouterr().err.replace("\n", " ")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_graph_is_refused_a_quant_mode_it_cannot_take_and_probabilities_are_warned(tmp_path, capsys):
    path = tmp_path / "m.pt2"
    _export(Probabilities().eval(), path, "export")
    assert main(["eval", "--model", str(path), "--out", str(tmp_path / "q"), *SETS,
                 "--set", "evaluate.quant=[fp32, dynamic_int8]"]) == 2     # asked for: refused (by default: fp32)
    assert "evaluate.quant: dynamic_int8 cannot apply to models[0]" in capsys.readouterr().err.replace("\n", " ")
    assert main(["eval", "--model", str(path), "--out", str(tmp_path / "p"), "--executor", "inline", *SETS,
                 "--set", "evaluate={n_images: 8, attacks: [fgsm], eps: [0], defenses: [none], quant: [fp32], examples: 0}"]) == 0
    assert "its outputs are probabilities" in capsys.readouterr().err.replace("\n", " ")


def test_a_sweep_file_evaluates_models_beside_its_trials_and_normalizes_for_them(trained, tmp_path, capsys):
    """`models:` beside `train:`: the trial and the outside model in one folder; `normalize` puts the model's
    expected normalization in front (a model folded with (x - 0.5) / 0.25 gives the checkpoint's verdicts)."""
    root, checkpoint, ev = trained

    class Folded(nn.Module):      # expects normalized input: undoes it, then the checkpoint's model
        def __init__(self):
            super().__init__()
            self.inner = load_checkpoint(checkpoint)

        def forward(self, z):
            return self.inner(z * 0.25 + 0.5)
    path = tmp_path / "folded.pt2"
    _export(Folded().eval(), path, "export")
    sweep = yaml.safe_load((root / "s.yaml").read_text())
    sweep["evaluate"]["quant"] = ["fp32"]
    sweep["models"] = [{"spec": str(path), "normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}]
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep))
    assert main(["run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "out"), "--executor", "inline"]) == 0
    both = robustgrid.load(tmp_path / "out").eval
    assert set(both["model_source"]) == {"trial", "file"}
    capsys.readouterr()
    assert main(["models", "--results", str(tmp_path / "out")]) == 0
    listed = capsys.readouterr().out
    assert "folded.pt2" in listed and "torch.export" in listed and "simple_cnn" in listed
    trial, outside = (both[both["model_source"] == s] for s in ("trial", "file"))
    assert _masks(outside) == _masks(trial) == _masks(ev)
