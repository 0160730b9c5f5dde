"""Attacks by name (torchattacks-style: one small file per attack over a shared base)."""
from . import fgsm as _fgsm  # noqa: F401  (registers)
from .base import (
                   ATTACKS,
                   Attack,
                   attack_names,
                   get_attack,
                   gradient_step,
                   input_gradient,
                   register_attack,
                   to_8bit_grid,
)

__all__ = ["ATTACKS", "Attack", "attack_names", "get_attack", "gradient_step", "input_gradient", "register_attack",
           "to_8bit_grid"]
