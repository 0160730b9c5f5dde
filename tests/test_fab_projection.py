"""FAB's hyperplane projections, compiled (attacks/fab_projection.py), against torchattacks' (the authors' code)."""
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from robustgrid.attacks.fab_projection import projection_l2, projection_linf

taf = pytest.importorskip("torchattacks.attacks.fab")
PROJECTIONS = {"linf": (projection_linf, "projection_linf"), "l2": (projection_l2, "projection_l2")}


def _hyperplanes(rows: int = 96, n: int = 3072, seed: int = 0):
    """FAB-like rows: points in the box (every other row on the 8-bit grid, as FAB's clean images are: ties
    everywhere), gradients with exact zeros and entries under L2's 1e-8 cut, and offsets from 1e-5 to 10 times
    |w|_1 of both signs, which reach every branch of both projections (L-inf: the box corner, the bisection,
    neither; L2: the unclipped step, the bisection, neither)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(rows, n, generator=g)
    t[::2] = (t[::2] * 255).round() / 255
    w = torch.randn(rows, n, generator=g) * 1e-3
    w[:, ::7] = 0
    w[:, 3::11] *= 1e-7
    scale = 10 ** torch.linspace(-5, 1, rows) * torch.tensor([1.0, -1.0]).repeat(rows // 2)
    return t, w, (w * t).sum(1) + scale * w.abs().sum(1)


def _stable_sorts(monkeypatch):
    """torch's sorts made stable: the order ours takes where coordinates tie."""
    argsort, sort = torch.argsort, torch.sort
    monkeypatch.setattr(torch, "argsort", lambda x, dim=-1: argsort(x, dim=dim, stable=True))
    monkeypatch.setattr(torch, "sort", lambda x, dim=-1: sort(x, dim=dim, stable=True))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_is_torchattacks_bit_for_bit_given_the_stable_order(norm, monkeypatch):
    ours, name = PROJECTIONS[norm]
    _stable_sorts(monkeypatch)
    for rows in (96, 40, 128):          # the working arrays kept between calls: shrunk and grown
        t, w, b = _hyperplanes(rows, seed=rows)
        theirs = getattr(taf, name)(t, w, b)
        assert torch.equal(ours(t, w, b), theirs)
        assert torch.equal(t, _hyperplanes(rows, seed=rows)[0]), "the inputs are left as they were"


def test_linf_projection_is_torchattacks_bit_for_bit_with_torchs_own_sort():
    """Where coordinates tie, torch's unstable order has given L-inf's bits too: here, and on every one of 60
    projections of a real FAB-T run (BENCHMARKS). L2's do not follow it: its w ** 2, summed in sorted order,
    moves a last bit (1.2e-7 at most on that run)."""
    t, w, b = _hyperplanes()
    assert torch.equal(projection_linf(t, w, b), taf.projection_linf(t, w, b))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_in_threads_equals_one_by_one(norm):
    """Each thread keeps its own working arrays."""
    ours = PROJECTIONS[norm][0]
    cases = [_hyperplanes(rows, seed=rows) for rows in (32, 64, 32, 64)]
    alone = [ours(*c) for c in cases]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda c: ours(*c), cases * 3))
    assert all(torch.equal(a, b) for a, b in zip(alone * 3, together))
