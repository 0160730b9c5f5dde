"""Adversarial training as a trial setting: FGSM-RS, PGD-AT, TRADES; robust validation, robust model selection,
catastrophic overfitting, the schedules the recipes need."""
import pytest
import torch
from robustgrid.models import load_checkpoint
from robustgrid.runner.adversarial import catastrophic_overfitting, robust_accuracy, sample_uniform
from robustgrid.runner.data import load_splits, to_float
from robustgrid.runner.spec import DataSpec
from robustgrid.runner.train import train

TINY = {"model": "simple_cnn", "dataset": "synthetic", "synthetic_train": 300, "synthetic_test": 100, "val_size": 60,
        "epochs": 1, "batch_size": 50, "robust_val_images": 40, "device": "cpu", "threads": 2}


@pytest.mark.parametrize("method", ["fgsm_rs", "pgd", "trades"])
def test_each_method_trains_an_epoch_and_records_robust_validation(tmp_path, method):
    r = train({**TINY, "adversarial": method, "adv_steps": None if method == "fgsm_rs" else 2, "out_dir": str(tmp_path)})
    epoch = r["history"][0]
    assert 0 <= epoch["robust_val_accuracy"] <= 1 and 0 <= epoch["robust_train_accuracy"] <= 1
    assert epoch["catastrophic_overfitting"] is False
    assert r["best_robust_val_accuracy"] == epoch["robust_val_accuracy"] and r["best_epoch"] == 1


def _robust(tmp_path, method):
    cfg = {**TINY, "synthetic_train": 1000, "synthetic_test": 300, "val_size": 100, "epochs": 3, "seed": 1,
           "robust_val_images": 100, "adversarial": method, "out_dir": str(tmp_path / method)}
    r = train(cfg)
    splits = load_splits(DataSpec(dataset="synthetic", synthetic_train=1000, synthetic_test=300, val_size=100))
    model = load_checkpoint(tmp_path / method / "best.pt").eval()
    return r["test_accuracy"], robust_accuracy(model, to_float(splits.test_x), splits.test_y, 8 / 255)


def test_fgsm_rs_raises_pgd_accuracy_over_standard_training(tmp_path):
    """Measured: standard 100 % clean / 69 % PGD-10 at 8/255, FGSM-RS 89 % / 89 % (300 test images, seed 1)."""
    clean_std, robust_std = _robust(tmp_path, "none")
    clean_adv, robust_adv = _robust(tmp_path, "fgsm_rs")
    assert robust_adv >= robust_std + 0.10, (robust_std, robust_adv)
    assert clean_std >= clean_adv - 0.02          # the usual price: no clean accuracy gained


def test_catastrophic_overfitting_fires_on_a_collapse_only():
    rising = [{"robust_train_accuracy": a} for a in (0.2, 0.35, 0.42)]
    assert not catastrophic_overfitting(rising)
    assert catastrophic_overfitting(rising + [{"robust_train_accuracy": 0.01}])       # Wong et al.'s collapse
    assert not catastrophic_overfitting(rising + [{"robust_train_accuracy": 0.38}])   # noise, not a collapse


def test_a_samples_start_is_its_own_in_any_batch():
    idx = torch.tensor([5, 17, 3, 40])
    whole = sample_uniform(idx, seed=0, epoch=2, shape=(3, 4, 4))
    parts = torch.cat([sample_uniform(idx[:1], 0, 2, (3, 4, 4)), sample_uniform(idx[1:], 0, 2, (3, 4, 4))])
    assert torch.equal(whole, parts) and not torch.equal(whole, sample_uniform(idx, 0, 3, (3, 4, 4)))
    assert 0 <= whole.min() and whole.max() < 1


@pytest.mark.parametrize("schedule", ["cosine", "one_cycle", "multistep"])
def test_schedules_follow_their_recipe(tmp_path, schedule):
    r = train({**TINY, "epochs": 4, "lr": 0.01, "lr_schedule": schedule, "out_dir": str(tmp_path)})
    lrs = [h["lr"] for h in r["history"]]      # the rate each epoch started at
    if schedule == "one_cycle":                # Wong et al.: up from ~0 to lr at 2/5, then down
        assert lrs[0] < 1e-5 and max(lrs) > 0.005 and lrs[-1] < max(lrs)
    elif schedule == "multistep":              # /10 at 1/2 and 3/4 of the epochs
        assert lrs == pytest.approx([0.01, 0.01, 0.001, 0.0001])
    else:
        assert lrs[0] == pytest.approx(0.01) and lrs[0] > lrs[1] > lrs[2] > lrs[3]


def _bn_model():
    from robustgrid.models import create_model
    torch.manual_seed(0)
    return create_model("improved_cnn")


def test_training_attacks_are_crafted_as_their_authors_craft_them():
    """FGSM-RS and PGD-AT on the model in train mode (Wong et al.'s and Rice et al.'s code: batch statistics, the
    running ones moved by the attack's passes); TRADES' inner maximization in eval mode, step 0.007, and its
    loss over two passes (two batch-norm batches), as Zhang et al.'s code."""
    import torch.nn.functional as F
    from robustgrid.runner.adversarial import adversarial_batch, alpha_of, training_loss
    from robustgrid.runner.spec import TrainConfig
    x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.arange(16) % 10
    u = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for method, moves_running_stats in (("fgsm_rs", True), ("pgd", True), ("trades", False)):
        cfg = TrainConfig.model_validate({"model": "improved_cnn", "dataset": "synthetic", "adversarial": method})
        model = _bn_model().train()
        bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        before = bn.running_mean.clone()
        adversarial_batch(model, x, y, cfg, u)
        assert (not torch.equal(bn.running_mean, before)) == moves_running_stats, method
        assert model.training, "the training mode is restored"
    trades = TrainConfig.model_validate({"model": "improved_cnn", "dataset": "synthetic", "adversarial": "trades"})
    assert alpha_of(trades) == 0.007
    model = _bn_model().train()
    x_adv = (x + 0.01).clamp(0, 1)
    loss, _ = training_loss(model, x, x_adv, y, trades)
    model = _bn_model().train()
    clean, adv = model(x), model(x_adv)
    expected = F.cross_entropy(clean, y) + 6.0 * F.kl_div(F.log_softmax(adv, 1), F.softmax(clean, 1), reduction="batchmean")
    assert torch.allclose(loss, expected)
