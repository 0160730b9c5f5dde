"""A cell's attack and defense settings as types.

An attack setting is the attack's own parameters (defaults filled in) and how its gradient is taken: through
the defense (adaptive: the defense's declared gradient, and through a randomized defense the attacker's EOT
draws), or through an int8 model's fake-quant twin (STE). A defense setting is the defense's parameters and,
for a randomized defense, the defender's draws a cell is scored over. Either is part of a cell's identity,
hashable and compared by value.

A Parquet row spells each as canonical JSON (sorted keys, the extras beside the attack's own parameters);
`to_json` and `of_json` here are the only code that writes or reads that spelling.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

# The names a row's attack_params gives the gradient extras, beside the attack's own parameters.
_GRADIENT_FIELDS = ("gradient", "eot_samples", "eot", "model_gradient")
FRESH_DRAW_PER_FORWARD = "fresh_draw_per_forward"
STE = "ste"


def _parse(params_json: str | None) -> dict:
    """A JSON column's value as a dict ({} for an empty or missing value: rows of older releases)."""
    return json.loads(params_json) if isinstance(params_json, str) and params_json else {}


class _ByJson:
    """Equality and hash by the canonical spelling (the fields hold dicts, which do not hash)."""

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash(self.to_json())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_json()})"


@dataclass(frozen=True, eq=False, repr=False)
class AttackSetting(_ByJson):
    own: dict[str, Any] = field(default_factory=dict)   # the attack's own parameters (resolve_attack's)
    gradient: str | None = None       # adaptive: the defense's gradient the attacker takes (exact, bpda_*)
    eot_samples: int | None = None    # adaptive, a randomized defense: the attacker's draws per gradient
    eot: str | None = None            # ... where a zoo attack takes a fresh draw at every forward call instead
    model_gradient: str | None = None  # "ste": white-box through an int8 model's fake-quant twin

    def to_json(self) -> str:
        extras = {k: getattr(self, k) for k in _GRADIENT_FIELDS if getattr(self, k) is not None}
        return json.dumps({**self.own, **extras}, sort_keys=True)

    @classmethod
    def of_json(cls, params_json: str | None) -> AttackSetting:
        params = _parse(params_json)
        extras = {k: params.pop(k) for k in _GRADIENT_FIELDS if k in params}
        return cls(params, **extras)

    @property
    def through_twin(self) -> bool:
        """The images were made on an int8 model's fake-quant twin (STE)."""
        return self.model_gradient == STE

    @property
    def eot_draws(self) -> int:
        """The attacker's draws per gradient through a randomized defense (1: none)."""
        return int(self.eot_samples or 1)

    def with_ste(self) -> AttackSetting:
        return dataclasses.replace(self, model_gradient=STE)

    def through_defense(self, gradient: str, eot_samples: int | None = None,
                        fresh_draw_per_forward: bool = False) -> AttackSetting:
        """Adaptive: the gradient taken through the defense, and through a randomized one the EOT draws (or, for
        an attack of the torchattacks zoo, a fresh draw at every forward call)."""
        return dataclasses.replace(self, gradient=gradient, eot_samples=eot_samples,
                                   eot=FRESH_DRAW_PER_FORWARD if fresh_draw_per_forward else None)


@dataclass(frozen=True, eq=False, repr=False)
class DefenseSetting(_ByJson):
    params: dict[str, Any] = field(default_factory=dict)   # the defense's parameters, defaults filled in
    draws: int | None = None          # randomized: the defender's draws a cell is scored over (else not recorded)

    def to_json(self) -> str:
        extra = {"draws": self.draws} if self.draws is not None else {}
        return json.dumps({**self.params, **extra}, sort_keys=True)

    @classmethod
    def of_json(cls, params_json: str | None) -> DefenseSetting:
        params = _parse(params_json)
        draws = params.pop("draws", None)
        return cls(params, None if draws is None else int(draws))

    @property
    def n_draws(self) -> int:
        return int(self.draws or 1)

    def for_draw(self, draw: int) -> dict[str, Any]:
        """The parameters one defender draw runs with (a randomized defense reads `draw`)."""
        return {**self.params, "draw": draw} if self.draws is not None else dict(self.params)
