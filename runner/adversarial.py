"""Adversarial training (a trial setting) and what it measures: FGSM-RS, PGD-AT, TRADES; robust validation.

    fgsm_rs  Wong, Rice & Kolter 2020 ("Fast is better than free"): a random start in the ball, one signed
             step of alpha = 1.25 eps, projected; train on it
    pgd      Madry et al. 2018: `adv_steps` (7, their CIFAR-10 setting) signed steps of alpha = 2/255 from a random start
    trades   Zhang et al. 2019: CE on the clean image + beta * KL(f(x) || f(x')), x' maximizing that KL
             (10 steps of 0.007 from x + 0.001 N(0, 1)); beta 6

Each inner maximization is crafted as its authors craft it, weights frozen: FGSM-RS and PGD-AT on the model
in train mode (Wong et al.'s and Rice et al.'s code: batch statistics, the running ones updated by the
attack's passes too), TRADES' on the model in eval mode; TRADES' loss takes the clean and the adversarial
batch through the model in two passes (two batch-norm batches), as its code does. Under DDP each rank
attacks its own shard of the batch on the unwrapped model. Robust validation: PGD-10 (alpha 2/255, one start from a fixed seed) at
the training eps on the first `robust_val_images` validation images, delivered on the 8-bit grid; with
adversarial training on it chooses the best checkpoint (Rice, Wong & Kolter 2020: robust overfitting).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import deliver, input_gradients_only, random_starts
from ..attacks.pgd import pgd_steps
from ..rng import uniform01
from .spec import TrainConfig

METHODS = ("none", "fgsm_rs", "pgd", "trades")
VAL_SEED = 20200101     # robust validation's random starts: the same every epoch and every trial
START_SALT = 0x5EED_7A1D  # training starts are apart from evaluation's streams


def alpha_of(cfg: TrainConfig) -> float:
    if cfg.adv_alpha is not None:
        return cfg.adv_alpha
    return {"fgsm_rs": 1.25 * cfg.adv_eps, "trades": 0.007}.get(cfg.adversarial, 2 / 255)


def steps_of(cfg: TrainConfig) -> int:
    if cfg.adv_steps is not None:
        return cfg.adv_steps
    return {"fgsm_rs": 1, "pgd": 7}.get(cfg.adversarial, 10)


def sample_uniform(index: torch.Tensor, seed: int, epoch: int, shape: tuple[int, ...]) -> torch.Tensor:
    """(len(index), *shape) uniform in [0, 1), each sample's own draw from (seed, epoch, its index in the training
    split): the same whichever rank's shard or batch the sample lands in, so DDP trains as one process does."""
    n = math.prod(shape)
    u = uniform01(index.cpu().numpy()[:, None], seed ^ START_SALT, epoch, np.arange(n)[None, :])
    return torch.from_numpy(u).view(len(index), *shape)


def adversarial_batch(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, cfg: TrainConfig,
                      u: torch.Tensor) -> torch.Tensor:
    """The training batch the method trains on (fgsm_rs, pgd) or maximizes its KL on (trades); u: each sample's
    uniform draws (sample_uniform), its random start."""
    eps = cfg.adv_eps
    was_training = model.training
    u = u.to(xb.device, xb.dtype)
    with input_gradients_only(model):
        if cfg.adversarial == "trades":
            out = _trades_inner(model, xb, eps, alpha_of(cfg), steps_of(cfg), u)
        else:
            out = _steps_in_train_mode(model, xb, yb, eps, alpha_of(cfg), steps_of(cfg), (2 * u - 1) * eps)
    model.train(was_training)
    return out.detach()


def _steps_in_train_mode(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int,
                         start: torch.Tensor) -> torch.Tensor:
    """FGSM-RS's and PGD-AT's inner loop as Wong et al. and Rice et al. run it: the model in train mode, signed
    steps of the cross-entropy's gradient, projected on the eps-ball and [0, 1]."""
    model.train()
    adv = torch.clamp(x + start, 0, 1)
    for _ in range(steps):
        adv = adv.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model(adv).float(), y)
        grad = torch.autograd.grad(loss, adv)[0]
        adv = torch.min(torch.max(adv.detach() + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)
    return adv.detach()


def _trades_inner(model: nn.Module, x: torch.Tensor, eps: float, alpha: float, steps: int,
                  u: torch.Tensor) -> torch.Tensor:
    """TRADES' inner maximization, from x + 0.001 N(0, 1) (the normal draw from u by Box-Muller, pairing halves)."""
    model.eval()
    with torch.no_grad():
        p_clean = F.softmax(model(x).float(), 1)
    flat = u.flatten(1)
    half = flat.shape[1] // 2
    r = torch.sqrt(-2 * torch.log1p(-flat[:, :half]))       # u in [0, 1): 1 - u in (0, 1]
    z = torch.cat([r * torch.cos(2 * math.pi * flat[:, half:2 * half]), r * torch.sin(2 * math.pi * flat[:, half:2 * half])], 1)
    adv = x + 0.001 * z.view_as(x)
    for _ in range(steps):
        adv = adv.detach().requires_grad_(True)
        with torch.enable_grad():
            kl = F.kl_div(F.log_softmax(model(adv).float(), 1), p_clean, reduction="sum")
        grad = torch.autograd.grad(kl, adv)[0]
        adv = torch.min(torch.max(adv.detach() + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)
    return adv.detach()


def training_loss(net: nn.Module, xb: torch.Tensor, x_adv: torch.Tensor | None, yb: torch.Tensor,
                  cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, logits the accuracy is counted on) of one step."""
    if cfg.adversarial == "trades":     # two passes, two batch-norm batches, as TRADES' code
        clean, adv = net(xb).float(), net(x_adv).float()
        kl = F.kl_div(F.log_softmax(adv, 1), F.softmax(clean, 1), reduction="batchmean")
        return F.cross_entropy(clean, yb) + cfg.trades_beta * kl, clean
    logits = net(xb if x_adv is None else x_adv)
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), yb), logits


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, batch_size: int = 250) -> float:
    """PGD-10 (alpha 2/255, one random start from VAL_SEED) accuracy on images x in [0,1], delivered on the grid."""
    if not len(x):
        return float("nan")
    was_training = model.training
    model.eval()
    starts = random_starts(len(x), tuple(x.shape[1:]), 1, VAL_SEED, eps)[:, 0]
    correct = 0
    with input_gradients_only(model):
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            final, best = pgd_steps(model, xb, yb, eps, 2 / 255, 10, starts[i:i + batch_size].to(xb.device))
            with torch.no_grad():
                right = torch.ones(len(xb), dtype=torch.bool, device=xb.device)
                for cand in (final, best):
                    right &= model(deliver(cand, xb, eps)).argmax(1) == yb
            correct += int(right.sum())
    model.train(was_training)
    return correct / len(x)


def catastrophic_overfitting(history: list[dict], drop: float = 0.2) -> bool:
    """Wong et al.'s failure of FGSM training: robust accuracy on a training batch collapses (here: falls more than
    `drop` below its best so far) within an epoch, while clean accuracy goes on rising."""
    seen = [h["robust_train_accuracy"] for h in history if h.get("robust_train_accuracy") is not None]
    return len(seen) >= 2 and seen[-1] < max(seen[:-1]) - drop
