"""Attacks by name (torchattacks-style: one small file per attack over a shared base)."""
from . import apgd as _apgd  # noqa: F401  (registers)
from . import autoattack as _autoattack  # noqa: F401  (registers)
from . import fgm as _fgm  # noqa: F401  (registers)
from . import fgsm as _fgsm  # noqa: F401  (registers)
from . import noise as _noise  # noqa: F401  (registers)
from . import pgd as _pgd  # noqa: F401  (registers)
from . import square as _square  # noqa: F401  (registers)
from .base import (
                   ATTACKS,
                   NORMS,
                   ZOO_CHUNK,
                   ZOO_PREFIX,
                   KINDS,
                   Attack,
                   attack_entry,
                   attack_kind,
                   as_candidates,
                   attack_names,
                   attack_params_json,
                   candidate_names,
                   deliver,
                   draws_globally,
                   eps_levels,
                   get_attack,
                   gradient_step,
                   input_gradient,
                   input_gradients_only,
                   max_eps,
                   norm_of,
                   random_starts,
                   register_attack,
                   resolve_attack,
                   seed_salt,
                   start_seed,
                   start_streams,
                   is_black_box,
                   takes_image_keys,
                   step_size,
                   attack_inputs,
                   takes_judge,
                   to_8bit_grid,
)
from .judge import Judge
from .pgd import strength

__all__ = [
                   "ATTACKS",
                   "NORMS",
                   "ZOO_CHUNK", "ZOO_PREFIX",
                   "KINDS", "Attack", "attack_entry", "attack_kind", "draws_globally", "seed_salt",
                   "step_size", "attack_inputs", "takes_judge", "Judge",
                   "as_candidates",
                   "attack_names",
                   "attack_params_json",
                   "candidate_names",
                   "deliver",
                   "eps_levels",
                   "get_attack",
                   "gradient_step",
                   "input_gradient",
                   "input_gradients_only",
                   "max_eps",
                   "norm_of",
                   "random_starts",
                   "register_attack",
                   "resolve_attack",
                   "start_seed",
                   "start_streams",
                   "strength",
                   "is_black_box", "takes_image_keys",
                   "to_8bit_grid",
]
