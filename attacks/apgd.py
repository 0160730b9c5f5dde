"""APGD and APGD-T (Croce & Hein, ICML 2020): PGD without a step size to tune, L-inf and L2.

Op for op the authors' `autopgd_base` as torchattacks ports it (`APGD`, `APGDT`): step size 2 eps,
halved at checkpoints (22 %, then shrinking by 3 % of the iterations down to 6 %) where the loss
oscillated or stopped improving, each halving restarting from the best iterate; momentum 0.75; the
best iterate kept. Losses: cross-entropy, DLR, and APGD-T's targeted DLR against each of the top
`targets` classes after the true one.

Differences, all for honest, batch-free cells: each image's start comes from its own place in the
evaluation seed's stream (`random_starts`: the draw torchattacks makes after manual_seed, for a
contiguous batch), not from whichever images a batch holds; every restart (and every target) runs on
every image the judge has not settled (attacks/judge.py: broken in every cell that scores it; called alone,
the attacker's model), each from its own stream, and every run's candidate is returned: the iterate that
fooled the attacker's model, else its highest-loss iterate (torchattacks returns the clean image there);
the scored system judges them all. Through a randomized defense, gradient, loss and
logits are the means over the attacker's EOT draws (`eot_draws`).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ..registry import Param
from .base import NORMS, _cross_entropy_direction, random_starts, register_attack
from .judge import Judge, judge_or_own, mean_logits

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits, y, reduction="none")


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of logits ratio: scale-free margin of the true class over the best other one."""
    srt, ind = logits.sort(dim=1)
    top_is_y = (ind[:, -1] == y).float()
    u = torch.arange(len(y), device=logits.device)
    return -(logits[u, y] - srt[:, -2] * top_is_y - srt[:, -1] * (1.0 - top_is_y)) / (srt[:, -1] - srt[:, -3] + 1e-12)


def targeted_dlr_loss(y_target: torch.Tensor) -> Loss:
    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        srt = logits.sort(dim=1)[0]
        u = torch.arange(len(y), device=logits.device)
        return -(logits[u, y] - logits[u, y_target]) / (srt[:, -1] - 0.5 * srt[:, -3] - 0.5 * srt[:, -4] + 1e-12)
    return loss


LOSSES = {"ce": ce_loss, "dlr": dlr_loss}


def _loss_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Loss):
    """(gradient of the summed loss, each image's up to its own positive power of two, logits, per-image loss),
    each the mean over the model's EOT draws.

    The loss's gradient reaches the model's backward scaled per image so that its largest logit entry is in
    [1, 2): through a half model a confident image's cross-entropy gradient otherwise underflows to 0, and
    sign(0) never moves it (simple_cnn, last layer x500, 60 images, CPU: 58 robust in fp16 against 16 in fp32). A power of two changes no sign
    and no L2 direction, bit for bit. A cross-entropy one-hot even in float32 takes its exact direction."""
    draws = getattr(model, "eot_draws", None) or [None]
    grad, logits, losses, scale = 0, 0, 0, None
    for d in draws:
        if d is not None:
            model.draw = d
        x_ = x.clone().requires_grad_(True)
        with torch.enable_grad():
            out = model(x_).float()
            per_image = loss_fn(out, y)
            g = torch.autograd.grad(per_image.sum(), out, retain_graph=True)[0]
            top = g.abs().amax(1)
            if loss_fn is ce_loss and (top == 0).any():
                dead = top == 0
                g = torch.where(dead[:, None], _cross_entropy_direction(out.detach(), y), g)
                top = torch.where(dead, torch.ones_like(top), top)
            if scale is None:       # one scale per image for every draw: the mean stays the mean
                scale = torch.exp2(-torch.floor(torch.log2(top.clamp_min(2.0 ** -126)))).clamp(max=2.0 ** 126)
            grad = grad + torch.autograd.grad(out, x_, grad_outputs=g * scale[:, None])[0].detach()
        logits, losses = logits + out.detach(), losses + per_image.detach()
    n = len(draws)
    return grad / n, logits / n, losses / n


def _oscillated(losses: np.ndarray, j: int, k: int, rho: float) -> np.ndarray:
    """Per image: the loss rose in at most a fraction rho of the last k steps."""
    t = np.zeros(losses.shape[1])
    for c in range(k):
        t += losses[j - c] > losses[j - c - 1]
    return t <= k * rho


def _project(x: torch.Tensor, z: torch.Tensor, eps: float, norm: str, last: bool = False) -> torch.Tensor:
    """z projected on the eps-ball around x and on [0,1], as the authors write it (their L2 form adds 1e-12
    to the norm in the second projection only)."""
    if norm == "linf":
        return torch.clamp(torch.min(torch.max(z, x - eps), x + eps), 0.0, 1.0)
    n = ((z - x) ** 2).sum(dim=(1, 2, 3), keepdim=True).sqrt()
    return torch.clamp(x + (z - x) / (n + 1e-12) * torch.min(eps * torch.ones_like(x), n + (1e-12 if last else 0)),
                       0.0, 1.0)


def apgd_run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, steps: int,
             loss_fn: Loss, draw: torch.Tensor, rho: float = 0.75) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One run from the start draw (torch.rand for L-inf, torch.randn for L2). Returns (x_best: highest loss,
    still_right: per image never fooled, x_best_adv: the last fooling iterate, the start where none)."""
    steps_2, steps_min, size_decr = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    if norm == "linf":
        t = 2 * draw - 1
        x_adv = x + eps * t / t.flatten(1).abs().max(dim=1)[0].view(-1, 1, 1, 1)
    else:
        x_adv = x + eps * draw / ((draw ** 2).sum(dim=(1, 2, 3), keepdim=True).sqrt() + 1e-12)
    x_adv = x_adv.clamp(0.0, 1.0)
    x_best, x_best_adv = x_adv.clone(), x_adv.clone()
    loss_steps = np.zeros([steps, len(x)], dtype=np.float32)

    grad, logits, loss_indiv = _loss_grad(model, x_adv, y, loss_fn)
    grad_best = grad.clone()
    acc = logits.argmax(1) == y
    loss_best = loss_indiv.clone()
    step_size = 2.0 * eps * torch.ones([len(x), 1, 1, 1], device=x.device)
    x_adv_old = x_adv.clone()
    k, counter3 = steps_2, 0
    loss_best_last_check = loss_best.clone()
    reduced_last_check = np.ones(len(x), dtype=bool)

    for i in range(steps):
        with torch.no_grad():
            grad2 = x_adv - x_adv_old
            x_adv_old = x_adv.clone()
            a = 0.75 if i > 0 else 1.0
            if norm == "linf":
                x_adv_1 = _project(x, x_adv + step_size * torch.sign(grad), eps, norm)
                x_adv_1 = _project(x, x_adv + (x_adv_1 - x_adv) * a + grad2 * (1 - a), eps, norm)
            else:
                x_adv_1 = _project(x, x_adv + step_size * grad / ((grad ** 2).sum(dim=(1, 2, 3), keepdim=True).sqrt()
                                                                  + 1e-12), eps, norm)
                x_adv_1 = _project(x, x_adv + (x_adv_1 - x_adv) * a + grad2 * (1 - a), eps, norm, last=True)
            x_adv = x_adv_1 + 0.0

        grad, logits, loss_indiv = _loss_grad(model, x_adv, y, loss_fn)
        pred = logits.argmax(1) == y
        acc = torch.min(acc, pred)
        x_best_adv[~pred] = x_adv[~pred] + 0.0
        with torch.no_grad():
            loss_steps[i] = loss_indiv.cpu().numpy()
            better = loss_indiv > loss_best
            x_best[better] = x_adv[better].clone()
            grad_best[better] = grad[better].clone()
            loss_best[better] = loss_indiv[better]
            counter3 += 1
            if counter3 == k:
                cut = _oscillated(loss_steps, i, k, rho)
                no_gain = ~reduced_last_check & (loss_best_last_check.cpu().numpy() >= loss_best.cpu().numpy())
                cut = cut | no_gain
                reduced_last_check = cut.copy()
                loss_best_last_check = loss_best.clone()
                if cut.any():
                    at = torch.from_numpy(np.flatnonzero(cut)).to(x.device)
                    step_size[at] /= 2.0
                    x_adv[at] = x_best[at].clone()
                    grad[at] = grad_best[at].clone()
                counter3 = 0
                k = max(k - size_decr, steps_min)
    return x_best, acc, x_best_adv


def _runs(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, norm: str, steps: int,
          losses: list[Callable[[torch.Tensor], Loss]], starts: torch.Tensor, rho: float, judge: Judge) -> torch.Tensor:
    """Candidates (N, runs, C, H, W): run r (its loss for the images it runs on, start stream r) on the images the
    judge has not settled, each run's candidate offered to it; an image's candidate of run r is that run's fooling
    iterate (on the attacker's model), else its highest-loss one; where run r did not run, run r - 1's."""
    out = images.unsqueeze(1).repeat(1, len(losses), 1, 1, 1)
    for r, loss_for in enumerate(losses):
        todo = judge.open().to(images.device)
        if r > 0:
            out[:, r] = out[:, r - 1]
        if not len(todo) or loss_for is None:     # None: a slot past the classes there are (APGD-T's targets)
            continue
        x, y = images[todo], labels[todo]
        best, still_right, best_adv = apgd_run(model, x, y, eps, norm, steps, loss_for(todo), starts[todo, r], rho)
        found = torch.where(still_right.view(-1, 1, 1, 1), best, best_adv)
        judge.subset(todo).offer(found, x)
        out[todo, r] = found
    return out


PARAMS = {
    "steps": Param(100, int, lambda s: s >= 1, ">= 1"),
    "restarts": Param(1, int, lambda r: r >= 1, ">= 1"),
    "norm": Param("linf", str, lambda n: n in NORMS, " or ".join(NORMS)),
    "rho": Param(0.75, float, lambda r: 0 < r < 1, "in (0, 1)"),
}


def _start_kind(params: dict) -> str:
    return "rand" if params["norm"] == "linf" else "randn"


def _draws(starts: torch.Tensor | None, images: torch.Tensor, streams: int, norm: str) -> torch.Tensor:
    if starts is not None:
        return starts
    return random_starts(len(images), tuple(images.shape[1:]), streams, seed=0,
                         kind="rand" if norm == "linf" else "randn").to(images.device)


@register_attack(params={**PARAMS, "loss": Param("ce", str, lambda v: v in LOSSES, " or ".join(LOSSES))},
                 starts=lambda p: (p["restarts"], _start_kind(p)), step_size="adaptive")
def apgd(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, steps: int = 100,
         restarts: int = 1, norm: str = "linf", rho: float = 0.75, loss: str = "ce",
         starts: torch.Tensor | None = None, judge: Judge | None = None) -> torch.Tensor:
    """APGD with loss ce or dlr: candidates (N, restarts, C, H, W), each restart on the images the judge left open."""
    if eps == 0:
        return images.clone().detach()
    starts = _draws(starts, images, restarts, norm)
    return _runs(model, images, labels, eps, norm, steps, [lambda todo: LOSSES[loss]] * restarts, starts, rho,
                 judge_or_own(judge, model, labels, eps, norm))


@register_attack(params={**PARAMS, "targets": Param(9, int, lambda t: t >= 1, ">= 1")},
                 starts=lambda p: (p["restarts"] * p["targets"], _start_kind(p)), step_size="adaptive")
def apgd_t(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, steps: int = 100,
           restarts: int = 1, norm: str = "linf", rho: float = 0.75, targets: int = 9,
           starts: torch.Tensor | None = None, judge: Judge | None = None) -> torch.Tensor:
    """APGD-T: targeted DLR against each of the `targets` most likely other classes (of the clean image on the
    attacker's model), in order, each on the images the judge left open (AutoAttack uses 9). Candidates
    (N, targets x restarts, C, H, W); slots past the classes there are repeat the last."""
    if eps == 0:
        return images.clone().detach()
    order = mean_logits(model, images).sort(dim=1)[1]
    real = min(targets, order.shape[1] - 1)
    losses = [(lambda todo, t=t: targeted_dlr_loss(order[todo, -(t + 2)])) if t < real else None
              for t in range(targets) for _ in range(restarts)]
    return _runs(model, images, labels, eps, norm, steps, losses, _draws(starts, images, len(losses), norm), rho,
                 judge_or_own(judge, model, labels, eps, norm))
