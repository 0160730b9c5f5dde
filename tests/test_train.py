"""Training options that change how, not what: torch.compile and channels_last train the same model."""
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
