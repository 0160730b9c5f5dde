"""Input-transformation defenses by name; each with a reference and a batched version."""
# isort: skip_file
# Registration order is the order sweeps and views list them.
from . import none as _none  # noqa: F401
from . import gaussian_blur as _gaussian_blur  # noqa: F401
from . import jpeg as _jpeg  # noqa: F401
from . import median as _median  # noqa: F401
from . import tv_denoise as _tv_denoise  # noqa: F401
from . import resize_pad as _resize_pad  # noqa: F401
from .base import (DEFENSES, Defense, apply_defense, apply_reference, defend_differentiably, defense_gradient,
                   defense_names, get_defense, is_randomized, short_name, to_uint8)

__all__ = ["DEFENSES", "Defense", "apply_defense", "apply_reference", "defend_differentiably", "defense_gradient",
           "defense_names", "get_defense", "is_randomized", "short_name", "to_uint8"]
