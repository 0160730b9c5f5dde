"""Which cells a grid holds: (quant, attack, attack source, eps, defense with its parameters)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ...defenses import DEFENSES
from ...models import quant_mode
from ..spec import EvaluateSpec


@dataclass(frozen=True)
class Cell:
    quant: str
    attack: str
    attack_source: str
    eps: float
    defense: str
    defense_params: str  # canonical JSON of the defense's full parameters

    def key(self, trial_id: str, n: int, seed: int) -> tuple:
        return (trial_id, self.quant, self.attack, self.attack_source, round(self.eps, 10), self.defense,
                self.defense_params, n, seed)


def defense_params_json(name: str, overrides: dict[str, Any]) -> str:
    """Canonical JSON of a defense's full parameters (defaults filled in): part of the cell's key."""
    return json.dumps(DEFENSES.resolve(name, overrides), sort_keys=True)


def plan_cells(ev: EvaluateSpec) -> list[Cell]:
    """Every meaningful cell of the grid.

    - int8 has no input gradient in torch: no white-box ('self') row for eps > 0, never faked;
    - on the fp32 model, source 'fp32' is the white-box row itself: recorded once, as 'self'.
    """
    cells = []
    for attack in ev.attacks:
        for eps in ev.eps:
            for source in ev.sources:
                for quant in ev.quant:
                    if source == "self" and eps > 0 and not quant_mode(quant).has_input_grad:
                        continue
                    if source == "fp32" and quant == "fp32":
                        continue
                    for name, params in ev.defenses.items():
                        cells.append(Cell(quant, attack, source, float(eps), name, defense_params_json(name, params)))
    return cells


def image_key(c: Cell) -> tuple:
    """Which images a cell is scored on: the clean ones at eps 0, else (source model, attack, eps)."""
    if c.eps == 0:
        return ("clean",)
    return (c.quant if c.attack_source == "self" else "fp32", c.attack, c.eps)


def count_cells(ev: EvaluateSpec) -> int:
    return len(plan_cells(ev))
