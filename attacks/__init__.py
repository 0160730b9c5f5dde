"""Attacks by name (torchattacks-style: one small file per attack over a shared base)."""
from . import fgsm as _fgsm  # noqa: F401  (registers)
from . import noise as _noise  # noqa: F401  (registers)
from . import pgd as _pgd  # noqa: F401  (registers)
from .base import (
                   ATTACKS,
                   ZOO_PREFIX,
                   Attack,
                   as_candidates,
                   attack_names,
                   attack_params_json,
                   deliver,
                   eps_levels,
                   get_attack,
                   gradient_step,
                   input_gradient,
                   input_gradients_only,
                   register_attack,
                   to_8bit_grid,
)
from .pgd import random_starts, start_seed, strength

__all__ = [
                   "ATTACKS",
                   "ZOO_PREFIX",
                   "Attack",
                   "as_candidates",
                   "attack_names",
                   "attack_params_json",
                   "deliver",
                   "eps_levels",
                   "get_attack",
                   "gradient_step",
                   "input_gradient",
                   "input_gradients_only",
                   "random_starts",
                   "register_attack",
                   "start_seed",
                   "strength",
                   "to_8bit_grid",
]
