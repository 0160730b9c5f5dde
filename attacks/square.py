"""Square Attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020): gradient-free, L-inf and L2.

A random search: each query changes one random square window of the current best image (L-inf:
+-2 eps per channel; L2: the authors' pseudo-Gaussian block, mass moved from a second window) and
keeps it when the margin loss drops; the window shrinks on the schedule `p_init` sets. It reads only
the model's outputs, so it cannot be fooled by a gradient a defense breaks: when it beats the
gradient attacks on a cell, those were masked (`robustgrid show` flags it).

The algorithm is torchattacks' `Square` (the authors' code) op for op, with the reference's settings
(p_init 0.8, 5000 queries, the schedule not rescaled). Its randomness is not: the authors draw one
window and one set of signs per query for the whole batch from the global RNG, so an image's attack
depends on its batch mates. Here every draw comes from the image's own counter-based stream
(`ImageDraws`: the evaluation seed, the image's index, the draw's number), the same in any batch,
task or shard; `TorchDraws` replays the authors' shared draws, which is how the test shows the rest
equal to torchattacks.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import nn

from ..registry import Param
from ..rng import uniform01
from .base import NORMS, register_attack


class ImageDraws:
    """Each image's own draws: call k of image key v is uniform01(v, k, j) for its j-th value. The narrow calls
    of the query loop are hashed BLOCK calls ahead for every image at once (a draw is a function of its key,
    call and place alone, so which images are still attacked changes no value): Python per query, not per call."""
    BLOCK, WIDTH = 64, 3

    def __init__(self, keys: torch.Tensor):
        self.keys, self.calls = keys.cpu().numpy().astype(np.int64).view(np.uint64), 0
        self._ahead, self._first = None, 0

    def _u(self, idx: torch.Tensor, n: int) -> torch.Tensor:
        """(len(idx), n) uniform draws of the next call for the images at positions idx."""
        self.calls += 1
        rows = idx.cpu().numpy()
        if n > self.WIDTH:
            keys = self.keys[rows].view(np.int64)[:, None]
            return torch.from_numpy(uniform01(keys, 0, self.calls, np.arange(n)[None, :]))
        if self._ahead is None or not 0 <= self.calls - self._first < self.BLOCK:
            self._first = self.calls
            calls = np.arange(self.calls, self.calls + self.BLOCK)[None, :, None]
            keys = self.keys.view(np.int64)[:, None, None]
            self._ahead = uniform01(keys, 0, calls, np.arange(self.WIDTH)[None, None, :])
        return torch.from_numpy(self._ahead[rows, self.calls - self._first, :n])

    def signs(self, idx: torch.Tensor, shape: tuple[int, ...], shared: bool = False) -> torch.Tensor:
        return torch.sign(2 * self._u(idx, math.prod(shape)) - 1).float().view(len(idx), *shape)

    def ints(self, idx: torch.Tensor, low: int, high: int) -> torch.Tensor:
        return (low + (high - low) * self._u(idx, 1)[:, 0]).long()

    def coins(self, idx: torch.Tensor) -> torch.Tensor:
        return self._u(idx, 1)[:, 0] > 0.5


class TorchDraws:
    """The authors' draws: the global RNG, one draw per query shared by the batch (for the test against them)."""

    def signs(self, idx: torch.Tensor, shape: tuple[int, ...], shared: bool = False) -> torch.Tensor:
        if shared:
            return torch.sign(2 * torch.rand(list(shape)) - 1).expand(len(idx), *shape)
        return torch.sign(2 * torch.rand([len(idx), *shape]) - 1)

    def ints(self, idx: torch.Tensor, low: int, high: int) -> torch.Tensor:
        return (low + (high - low) * torch.rand([1])).long().expand(len(idx))

    def coins(self, idx: torch.Tensor) -> torch.Tensor:
        return (torch.rand([1]) > 0.5).expand(len(idx))


def p_selection(p_init: float, it: int, n_queries: int, rescale: bool) -> float:
    """The fraction of the image a window covers at query `it` (the authors' piecewise schedule)."""
    if rescale:
        it = int(it / n_queries * 10000)
    for bound, div in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64), (6000, 128),
                       (8000, 256)):
        if it <= bound:
            return p_init / div
    return p_init / 512


def _margin_and_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Through a randomized defense (a model with `eot_draws`), each query sees one draw, the next in turn: a
    black-box attacker queries the random system as it is, as the authors' Square does (averaging the draws
    would multiply 5000 queries by them; AutoAttack's rand version is the one with EOT)."""
    draws = getattr(model, "eot_draws", None)
    if draws:
        model.draw = draws[getattr(model, "_square_calls", 0) % len(draws)]
        model._square_calls = getattr(model, "_square_calls", 0) + 1
    with torch.no_grad():
        logits = model(x).float()
    u = torch.arange(len(x), device=x.device)
    y_corr = logits[u, y].clone()
    xent = nn.functional.cross_entropy(logits, y, reduction="none") if loss == "ce" else None
    logits[u, y] = -float("inf")
    margin = y_corr - logits.max(dim=-1)[0]
    return margin, (-xent if loss == "ce" else margin)


@functools.cache
def _bands(s: int, size: int, device: torch.device) -> torch.Tensor:
    """(size - s + 1, size) bool: row v is 1 on [v, v + s), each window start's band (made once per size)."""
    at, start = torch.arange(size, device=device), torch.arange(size - s + 1, device=device)[:, None]
    return (at >= start) & (at < start + s)


def _window(vh: torch.Tensor, vw: torch.Tensor, s: int, h: int, w: int) -> torch.Tensor:
    """(n, 1, h, w) bool: each image's s x s window at (vh, vw)."""
    return _bands(s, h, vh.device)[vh][:, None, :, None] & _bands(s, w, vw.device)[vw][:, None, None, :]


def _window_index(t: torch.Tensor, vh: torch.Tensor, vw: torch.Tensor, s: int) -> tuple[torch.Tensor, ...]:
    n, c = t.shape[:2]
    ar = torch.arange(s, device=t.device)
    return (torch.arange(n, device=t.device)[:, None, None, None], torch.arange(c, device=t.device)[None, :, None, None],
            (vh[:, None] + ar)[:, None, :, None], (vw[:, None] + ar)[:, None, None, :])


def _eta_rectangles(x: int, y: int) -> torch.Tensor:
    delta = torch.zeros([x, y])
    x_c, y_c = x // 2 + 1, y // 2 + 1
    c2 = [x_c - 1, y_c - 1]
    for counter in range(max(x_c, y_c)):
        delta[max(c2[0], 0):min(c2[0] + (2 * counter + 1), x), max(0, c2[1]):min(c2[1] + (2 * counter + 1), y)] += \
            1.0 / (torch.Tensor([counter + 1]).view(1, 1) ** 2)
        c2[0] -= 1
        c2[1] -= 1
    return delta / (delta ** 2).sum(dim=(0, 1), keepdim=True).sqrt()


@functools.cache
def _eta_block(s: int) -> torch.Tensor:
    """The authors' s x s L2 block (made once per size: a Python loop per rectangle, every query otherwise)."""
    delta = torch.zeros([s, s])
    delta[: s // 2] = _eta_rectangles(s // 2, s)
    delta[s // 2:] = -1.0 * _eta_rectangles(s - s // 2, s)
    delta /= (delta ** 2).sum(dim=(0, 1), keepdim=True).sqrt()
    return delta


def _eta(s: int, flip: torch.Tensor) -> torch.Tensor:
    """(n, 1, s, s): the authors' L2 block, transposed for the images whose coin came up."""
    delta = _eta_block(s)
    return torch.where(flip.view(-1, 1, 1), delta.t(), delta).unsqueeze(1).to(flip.device)


def _l2(t: torch.Tensor) -> torch.Tensor:
    return (t ** 2).flatten(1).sum(-1).sqrt().view(-1, 1, 1, 1)


def _l2_unit(t: torch.Tensor) -> torch.Tensor:
    return t / (_l2(t) + 1e-12)


def _linf_init(x: torch.Tensor, eps: float, draws) -> torch.Tensor:
    c, _, w = x.shape[1:]
    idx = torch.arange(len(x))
    return torch.clamp(x + eps * draws.signs(idx, (c, 1, w)).to(x.device), 0.0, 1.0)


def _l2_init(x: torch.Tensor, eps: float, draws) -> torch.Tensor:
    c, h, w = x.shape[1:]
    idx = torch.arange(len(x))
    delta = torch.zeros_like(x)
    s = h // 5
    sp = (h - s * 5) // 2
    vh = sp
    for _ in range(h // s):
        vw = sp
        for _ in range(w // s):
            eta = _eta(s, draws.coins(idx)).to(x.device)
            delta[:, :, vh:vh + s, vw:vw + s] += eta * draws.signs(idx, (c, 1, 1)).to(x.device)
            vw += s
        vh += s
    return torch.clamp(x + _l2_unit(delta) * eps, 0.0, 1.0)


def _linf_proposal(low, high, x_best, idx, eps, s, draws):
    """The authors' clamp(min(max(x_best + new, x - eps), x + eps), 0, 1) as one clamp into [low, high], the ball
    already cut to [0, 1] (clamping is selection: the same floats); `new` is +-2 eps in the window, 0 elsewhere."""
    c, h, w = x_best.shape[1:]
    dev = x_best.device
    vh, vw = draws.ints(idx, 0, h - s).to(dev), draws.ints(idx, 0, w - s).to(dev)
    new = torch.where(_window(vh, vw, s, h, w), 2.0 * eps * draws.signs(idx, (c, 1, 1), shared=True).to(dev), 0.0)
    return torch.clamp(x_best + new, low, high)


def _l2_proposal(x, x_best, idx, eps, s, draws):
    c, h, w = x.shape[1:]
    dev = x.device
    delta = x_best - x
    vh, vw = draws.ints(idx, 0, h - s).to(dev), draws.ints(idx, 0, w - s).to(dev)
    win1 = _window_index(delta, vh, vw, s)
    norms_window_1 = (delta[win1] ** 2).sum(dim=(-2, -1), keepdim=True).sqrt()
    vh2, vw2 = draws.ints(idx, 0, h - s).to(dev), draws.ints(idx, 0, w - s).to(dev)
    mask_image = (_window(vh, vw, s, h, w) | _window(vh2, vw2, s, h, w)).float()   # the authors' max of two 0/1 masks
    norms_image, norms_windows = _l2(delta), _l2(delta * mask_image)
    new = torch.ones([len(x), c, s, s], device=dev)
    eta = _eta(s, draws.coins(idx)).to(dev)
    new = new * (eta * draws.signs(idx, (c, 1, 1)).to(dev))
    new = new + delta[win1] / (1e-12 + norms_window_1)
    new = new / (1e-12 + (new ** 2).sum(dim=(-2, -1), keepdim=True).sqrt()) * (
        torch.max((eps * torch.ones_like(new)) ** 2 - norms_image ** 2, torch.zeros_like(new)) / c
        + norms_windows ** 2).sqrt()
    delta[_window_index(delta, vh2, vw2, s)] = 0.0
    delta[win1] = new + 0
    return torch.clamp(x + _l2_unit(delta) * eps, 0.0, 1.0)


def square_run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, queries: int,
               p_init: float, loss: str, rescale: bool, draws) -> torch.Tensor:
    """The authors' attack_single_run: the best image found per image (fooling, else the lowest loss)."""
    c, h, w = x.shape[1:]
    n_features = c * h * w
    model._square_calls = 0       # query k sees draw k in turn, in any batch
    x_best = (_linf_init if norm == "linf" else _l2_init)(x, eps, draws)
    margin_min, loss_min = _margin_and_loss(model, x_best, y, loss)
    if norm == "linf":      # every image's ball cut to [0, 1], once: the queries gather it
        low, high = torch.clamp(x - eps, 0.0, 1.0), torch.clamp(x + eps, 0.0, 1.0)
    for i_iter in range(queries):
        idx = (margin_min > 0.0).nonzero().flatten()
        if len(idx) == 0:
            break
        x_best_curr, y_curr = x_best[idx], y[idx]
        p = p_selection(p_init, i_iter, queries, rescale)
        if norm == "linf":
            s = max(int(round(math.sqrt(p * n_features / c))), 1)
            x_new = _linf_proposal(low[idx], high[idx], x_best_curr, idx.cpu(), eps, s, draws)
        else:
            s = max(int(round(math.sqrt(p * n_features / c))), 3)
            s += 1 - s % 2
            x_new = _l2_proposal(x[idx], x_best_curr, idx.cpu(), eps, s, draws)
        margin, loss_new = _margin_and_loss(model, x_new, y_curr, loss)
        improved = (loss_new < loss_min[idx]).float()
        loss_min[idx] = improved * loss_new + (1.0 - improved) * loss_min[idx]
        improved = torch.max(improved, (margin <= 0.0).float())
        margin_min[idx] = improved * margin + (1.0 - improved) * margin_min[idx]
        # the authors' improved * x_new + (1 - improved) * x_best_curr with improved in {0, 1}: a selection
        x_best[idx] = torch.where(improved.view(-1, 1, 1, 1) > 0, x_new, x_best_curr)
    return x_best


@register_attack(params={
    "queries": Param(5000, int, lambda q: q >= 1, ">= 1"),
    "p_init": Param(0.8, float, lambda p: 0 < p <= 1, "in (0, 1]"),
    "norm": Param("linf", str, lambda n: n in NORMS, " or ".join(NORMS)),
    "loss": Param("margin", str, lambda v: v in ("margin", "ce"), "margin or ce"),
    "resc_schedule": Param(False, bool),
}, kind="black-box", image_keys=True)
def square(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, queries: int = 5000,
           p_init: float = 0.8, norm: str = "linf", loss: str = "margin", resc_schedule: bool = False,
           image_keys: torch.Tensor | None = None) -> torch.Tensor:
    """Square: `queries` random-search steps per image (stops on an image once it is fooled). image_keys:
    each image's draw key (from the evaluation seed and its index; the engine passes them)."""
    if eps == 0:
        return images.clone().detach()
    keys = image_keys if image_keys is not None else torch.arange(len(images))
    return square_run(model, images, labels, eps, norm, queries, p_init, loss, resc_schedule, ImageDraws(keys))
