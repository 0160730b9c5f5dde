"""Training options that change how, not what: torch.compile and channels_last train the same model."""
import json

import torch
from robustgrid.models import read_checkpoint
from robustgrid.runner.train import train

CONFIG = {"model": "simple_cnn", "dataset": "synthetic", "synthetic_train": 600, "synthetic_test": 100,
          "epochs": 2, "batch_size": 64, "seed": 1, "threads": 2}


def _run(tmp_path, name, **overrides):
    result = train({**CONFIG, **overrides, "out_dir": str(tmp_path / name)})
    return result, read_checkpoint(tmp_path / name / "best.pt")["state_dict"]


def test_compile_and_memory_format_train_the_same_model(tmp_path):
    eager, eager_sd = _run(tmp_path, "eager")
    compiled, compiled_sd = _run(tmp_path, "compiled", compile=True)
    nchw, nchw_sd = _run(tmp_path, "nchw", channels_last=False)
    # checkpoints of a compiled run load into the plain model: same keys, no '_orig_mod.' prefix
    assert list(compiled_sd) == list(eager_sd) == list(nchw_sd)
    for other in (compiled, nchw):
        for a, b in zip(eager["history"], other["history"], strict=True):
            # same samples, same steps: only the order of float sums differs
            assert abs(a["train_loss"] - b["train_loss"]) < 1e-3 * max(1.0, a["train_loss"])
    for k in eager_sd:
        torch.testing.assert_close(compiled_sd[k], eager_sd[k], rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(nchw_sd[k], eager_sd[k], rtol=1e-3, atol=1e-3)


def test_a_trial_continued_from_another_trials_checkpoint_records_the_clone(tmp_path):
    """PBT's exploit step, without Ray: trial b restores trial a's last.pt. It continues a's weights and
    history with its own learning rate (a's current lr scaled by b's over a's), and its lineage says whose
    weights it took after which epoch."""
    small = {**CONFIG, "synthetic_train": 200, "synthetic_test": 40, "threads": 1, "optimizer": "sgd"}
    a = train({**small, "epochs": 1, "lr": 0.01, "out_dir": str(tmp_path / "ta")})
    b = train({**small, "epochs": 2, "lr": 0.02, "out_dir": str(tmp_path / "tb")}, resume_from=tmp_path / "ta" / "last.pt")
    assert b["history"][0] == a["history"][0] and len(b["history"]) == 2
    assert abs(b["history"][1]["lr"] - 0.02) < 1e-12           # plateau has not decayed a's 0.01: 0.01 x 0.02/0.01
    (step,) = json.loads(b["lineage"])
    assert step["epoch"] == 1 and step["from"] == "ta" and step["to"] == "tb"
    assert step["from_config"]["lr"] == 0.01 and step["config"]["lr"] == 0.02
    assert a["lineage"] is None
