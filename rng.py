"""Counter-based randomness: a draw is a pure function of (seed, image index, counters), so an image
gets the same draws in any batch, task or shard. Used where a stream cannot be sliced per image
(the defender's draws of a randomized defense, Square's windows and signs)."""
from __future__ import annotations

import numpy as np

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 (Steele et al. 2014) on uint64 arrays; numpy's uint64 arithmetic wraps mod 2**64."""
    with np.errstate(over="ignore"):
        z = (x + np.uint64(0x9E3779B97F4A7C15)) & _M64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _M64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _M64
        return z ^ (z >> np.uint64(31))


def hash_draws(index, seed: int, *counters: int) -> np.ndarray:
    """uint64 per image index: splitmix64 chained over the seed, the index, then each counter."""
    idx = np.atleast_1d(np.asarray(index, dtype=np.int64)).astype(np.uint64)
    h = splitmix64(splitmix64(np.full_like(idx, np.uint64(seed % 2**64))) ^ idx)
    for c in counters:         # a counter may be an array (broadcast against the indices)
        h = splitmix64(h ^ (np.asarray(c, dtype=np.int64).astype(np.uint64)))
    return h


def uniform01(index, seed: int, *counters: int) -> np.ndarray:
    """float64 in [0, 1) per image index (the top 53 bits of its hash)."""
    return (hash_draws(index, seed, *counters) >> np.uint64(11)).astype(np.float64) / float(2**53)
