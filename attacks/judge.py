"""The judge: the one question an attack may ask before it spends more work on an image.

    is this image already broken in every cell that scores this image set?

A cell here is one way the scored system sees a delivered image: a defense (with one of the defender's
draws) in front of the real model of a quant mode. The engine hands an attack a judge over every cell of
the grid that judges the attack's images; an attack called alone gets `Judge.of_model`, whose one cell
is the attacker's model itself (the authors' own early stop). An attack offers the judge the candidates
it returns, and runs its next restart, target or component only on the images the judge has not settled.

Why this keeps a cell exact: an image stays open while any cell it is right in remains, so in every cell
where it is not yet broken it receives every later candidate, as if every candidate ran on every image.
Whatever an attack offers must also be among the candidates it returns (the cell's verdict reads those).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .base import deliver

# a defended view: (delivered images, their positions in the judged set, on the CPU) -> what the models see
Defend = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# one model behind it: its input -> predicted classes (CPU)
Predict = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class _Ledger:
    labels: torch.Tensor        # (N,) on the CPU
    broken: torch.Tensor        # (N, cells) bool on the CPU: some offered candidate fooled the image there
    views: list[tuple[Defend, list[Predict]]]     # the cells, grouped by what each defended view shows its models
    eps: float
    norm: str


class Judge:
    """A view of one image set's ledger: positions `at` of the whole set, in the order the attack holds them."""

    def __init__(self, ledger: _Ledger, at: torch.Tensor):
        self._ledger, self.at = ledger, at

    @classmethod
    def of_cells(cls, labels: torch.Tensor, eps: float, norm: str, views: list[tuple[Defend, list[Predict]]]) -> Judge:
        """views: per defended view (a defense under one defender draw), the models that score it: a cell each."""
        labels = labels.cpu()
        cells = sum(len(predicts) for _, predicts in views)
        ledger = _Ledger(labels, torch.zeros(len(labels), cells, dtype=torch.bool), views, eps, norm)
        return cls(ledger, torch.arange(len(labels)))

    @classmethod
    def of_model(cls, model: nn.Module, labels: torch.Tensor, eps: float, norm: str = "linf") -> Judge:
        """The attacker's model as the only cell: what an attack called outside the engine is judged by."""
        return cls.of_cells(labels, eps, norm, [(lambda x, _: x, [lambda x: mean_logits(model, x).argmax(1).cpu()])])

    def subset(self, local: torch.Tensor) -> Judge:
        """The judge of the images at `local` (positions in this view): the same ledger."""
        return Judge(self._ledger, self.at[local.cpu()])

    def settled(self) -> torch.Tensor:
        """Per image of this view (CPU bool): broken in every cell, so no candidate can change a verdict."""
        return self._ledger.broken[self.at].all(1)

    def open(self) -> torch.Tensor:
        """Positions in this view (CPU long) of the images still worth attacking."""
        return (~self.settled()).nonzero().squeeze(1)

    def offer(self, candidates: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        """Judge one candidate per image of this view (float, as the attack made it: the judge delivers it on
        the 8-bit grid inside the ball, as the engine will); each defended view made once for its models, on the
        images still open in one of them. Returns settled()."""
        ledger = self._ledger
        delivered = deliver(candidates, clean, ledger.eps, ledger.norm)
        first = 0
        for defend, predicts in ledger.views:
            cols = slice(first, first + len(predicts))
            first += len(predicts)
            still = ~ledger.broken[self.at, cols]               # (images, models of this view)
            rows = still.any(1).nonzero().squeeze(1)
            if not len(rows):
                continue
            pos = self.at[rows]
            shown = defend(delivered[rows.to(delivered.device)], pos)
            for j, predict in enumerate(predicts):
                open_j = still[rows, j]
                if open_j.any():
                    at = pos[open_j]
                    ledger.broken[at, cols.start + j] |= predict(shown[open_j.to(shown.device)]) != ledger.labels[at]
        return self.settled()


def mean_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's logits, their mean over its EOT draws where a randomized defense sits in front of it."""
    draws = getattr(model, "eot_draws", None) or [None]
    out = 0
    with torch.no_grad():
        for d in draws:
            if d is not None:
                model.draw = d
            out = out + model(x).float()
    return out / len(draws)


def judge_or_own(judge: Judge | None, model: nn.Module, labels: torch.Tensor, eps: float, norm: str) -> Judge:
    """The judge an attack was handed, or (called alone) one of the attacker's model."""
    return judge if judge is not None else Judge.of_model(model, labels, eps, norm)
