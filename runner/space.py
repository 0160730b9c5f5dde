"""Search spaces of a sweep file's training keys, beside `{grid_search: [...]}`:

    {loguniform: [a, b]}   0 < a < b, sampled uniformly in log space
    {uniform: [a, b]}      a < b
    {randint: [a, b]}      an integer in [a, b) (b excluded, as Tune's randint)
    {choice: [v, ...]}     one of the values

`random` search samples them here, from the sweep's search seed (the same file samples the same
configurations, on any executor); `optuna` and `hyperopt` hand them to Ray Tune's searchers.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

DISTRIBUTIONS = ("grid_search", "choice", "uniform", "loguniform", "randint")
SAMPLED = DISTRIBUTIONS[1:]


def kind_of(value: Any) -> str | None:
    """The distribution a training value is (None: a fixed value)."""
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in DISTRIBUTIONS:
        return next(iter(value))
    return None


def values_to_check(key: str, value: dict, section: str = "train") -> list[tuple[str, Any]]:
    """(path, value) pairs each of which must be a valid value of the key: the list of a grid or a choice,
    the bounds of a range. Raises ValueError (with the path) for a malformed distribution."""
    kind = kind_of(value)
    if kind is None:
        raise ValueError(f"{section}.{key}: a dict value must be one of {{{': [...]}, {'.join(DISTRIBUTIONS)}: [...]}}")
    args = value[kind]
    where = f"{section}.{key}.{kind}"
    if kind in ("grid_search", "choice"):
        if not isinstance(args, list) or not args:
            raise ValueError(f"{where}: must be a non-empty list")
        return [(f"{where}[{i}]", v) for i, v in enumerate(args)]
    if not (isinstance(args, list) and len(args) == 2 and all(_number(v) for v in args)):
        raise ValueError(f"{where}: must be [low, high], two numbers")
    lo, hi = args
    if not lo < hi:
        raise ValueError(f"{where}: low {lo} must be below high {hi}")
    if kind == "loguniform" and lo <= 0:
        raise ValueError(f"{where}: low {lo} must be > 0 (a log scale)")
    if kind == "randint":
        if not all(isinstance(v, int) for v in args):
            raise ValueError(f"{where}: bounds must be integers")
        return [(f"{where}[0]", lo), (f"{where}[1]", hi - 1)]      # high is excluded
    return [(f"{where}[0]", lo), (f"{where}[1]", hi)]


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def sample(value: dict, rng: np.random.Generator) -> Any:
    """One draw of a sampled distribution."""
    kind = kind_of(value)
    args = value[kind]
    if kind == "choice":
        return args[int(rng.integers(len(args)))]
    if kind == "randint":
        return int(rng.integers(args[0], args[1]))
    if kind == "uniform":
        return float(rng.uniform(args[0], args[1]))
    return float(math.exp(rng.uniform(math.log(args[0]), math.log(args[1]))))     # loguniform


def bounds(value: dict) -> tuple[float, float] | None:
    """[low, high] of a range (None for a list of values)."""
    kind = kind_of(value)
    return (value[kind][0], value[kind][1]) if kind in ("uniform", "loguniform") else None


def to_tune(value: dict):
    """The Ray Tune search-space object of a distribution (for Tune's searchers)."""
    from ray import tune
    kind = kind_of(value)
    args = value[kind]
    if kind in ("grid_search", "choice"):
        return getattr(tune, kind)(args)
    return getattr(tune, kind)(*args)
