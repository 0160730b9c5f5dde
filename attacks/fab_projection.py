"""FAB's hyperplane projections (torchattacks' `projection_linf` / `projection_l2`, the authors' code) on a CPU.

A FAB step projects 2 x rows points of 3072 coordinates; torchattacks' version spends half of it in
`torch.sort` (std::sort over (value, index) pairs) and most of the rest in two dozen full-size tensor ops and
masked copies. Here the rows' sort keys are one int64 each (the float's order-preserving bits, then its
column), sorted by numpy's SIMD sort; every key is unique, so the order is the stable one, whatever the sort.
The part after the sort (gathers, cumulative sums, the bisection, the projected point) is one compiled pass
per row. Both run in torch's thread count of threads over the rows.

The arithmetic is torchattacks' op for op in float32: its row sums stay torch reductions (their order is
torch's), its cumulative sums accumulate in double as torch's CPU cumsum does. So a row's result is bit-equal
to torchattacks' given the same order of the sorted coordinates (tests/test_fab_projection.py); torch's own
sort is not stable, and where coordinates tie it may order them otherwise, which moves at most the last bits.
On a GPU torchattacks' functions run as they are.
"""
from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from numba import njit


class _Scratch(threading.local):
    """Working arrays kept per thread between calls: a fresh 2-3 MB array per step costs more in page faults than
    the arithmetic in it (an L2 call on 180 rows: 9.4 ms, 5.0 ms with glibc's mmap and trim thresholds raised)."""

    def __init__(self):
        self.floats, self.keys = np.empty((0, 0), np.float32), np.empty((0, 0), np.int64)

    def take(self, rows: int, cols: int, n: int) -> tuple[list[np.ndarray], np.ndarray]:
        """n float32 (rows, cols) arrays and one int64, views of buffers grown as needed."""
        if self.floats.shape[0] < n * rows or self.floats.shape[1] != cols:
            self.floats, self.keys = np.empty((n * rows, cols), np.float32), np.empty((rows, cols), np.int64)
        if self.keys.shape[0] < rows:
            self.keys = np.empty((rows, cols), np.int64)
        return [self.floats[k * rows:(k + 1) * rows] for k in range(n)], self.keys[:rows]


_scratch = _Scratch()
_pool: dict[int, ThreadPoolExecutor] = {}      # by worker count, made on first use; its threads stay


def _in_row_parts(fn, *args) -> None:
    """fn(*args) over contiguous row ranges of its array arguments (every array's first axis is the rows; other
    arguments go as they are), in torch's thread count of threads, the calling thread taking the first range.
    Every row is computed alone, so the split changes no value."""
    rows = next(a.shape[0] for a in args if isinstance(a, np.ndarray))
    parts = max(1, min(torch.get_num_threads(), rows // 8))
    if parts == 1:
        fn(*args)
        return
    pool = _pool.get(parts - 1) or _pool.setdefault(parts - 1, ThreadPoolExecutor(parts - 1, "fab-projection"))

    def part(k: int) -> None:
        lo, hi = rows * k // parts, rows * (k + 1) // parts
        fn(*(a[lo:hi] if isinstance(a, np.ndarray) else a for a in args))
    later = [pool.submit(part, k) for k in range(1, parts)]
    part(0)
    for f in later:
        f.result()


def _sorted_order(keys: np.ndarray) -> None:
    """Keys (unique per row) sorted in place by numpy's SIMD sort, then cut to their column: the stable order."""
    keys.sort(axis=1)
    np.bitwise_and(keys, 0xFFFFFFFF, out=keys)


@njit(cache=True, nogil=True, error_model="numpy")
def _products(x, y, out):
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = x[i, j] * y[i, j]


def _row_sums(x: np.ndarray) -> torch.Tensor:
    """A (rows, n) array's row sums as torch computes them on a tensor of that shape (the authors' order)."""
    return torch.from_numpy(x).sum(1)


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _key(bits32, j):
    """A unique int64 whose order is the stable order of a row: the float's bits (as int32) made order-preserving,
    -0.0 as 0.0 (they compare equal), then the column."""
    k = np.int64(bits32)
    if k == -2147483648:           # -0.0
        k = 0
    elif k < 0:                    # negatives: the larger the magnitude, the smaller
        k = k ^ 0x7FFFFFFF
    return (k << 32) | j


def projection_linf(points_to_project: torch.Tensor, w_hyperplane: torch.Tensor, b_hyperplane: torch.Tensor):
    """The L-inf projection of each row's point onto its hyperplane w.x + b = 0 within [0, 1]^n."""
    if points_to_project.device.type != "cpu":
        from torchattacks.attacks.fab import projection_linf as theirs
        return theirs(points_to_project, w_hyperplane, b_hyperplane)
    t, w, b = (v.detach().float().contiguous().numpy() for v in (points_to_project, w_hyperplane, b_hyperplane))
    (ws, p, wt, wd), keys = _scratch.take(*w.shape, 4)      # signed w, p, w * t, w * d; p's sort keys
    _products(w, t, wt)
    sign = 2 * (_row_sums(wt) - torch.from_numpy(b) >= 0) - 1
    _in_row_parts(_linf_sorted, w, t, sign.numpy(), ws, p, wt, wd, p.view(np.int32), keys)
    b = torch.from_numpy(b) * sign - _row_sums(wt)
    b0 = _row_sums(wd)
    out = np.empty(w.shape, dtype=np.float32)
    _in_row_parts(_linf_rows, ws, t, p, b.numpy(), b0.numpy(), keys, out, math.ceil(math.log2(w.shape[1])))
    return torch.from_numpy(out)


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _a_d(wj, tj):
    """torchattacks' a = (w < 0) and d = (a - t) * (w != 0), for one coordinate."""
    zero, one = np.float32(0.0), np.float32(1.0)
    aj = one if wj < zero else zero
    return aj, (aj - tj) * (one if wj != zero else zero)


def _linf_sorted(*args) -> None:
    _linf_prelude(*args)
    _sorted_order(args[-1])


@njit(cache=True, nogil=True, error_model="numpy")
def _linf_prelude(w, t, sign, ws, p, wt, wd, p_bits, keys):
    """torchattacks' elementwise steps before its argsort (w signed, p, the products it sums), and p's sort keys."""
    one, two = np.float32(1.0), np.float32(2.0)
    for r in range(w.shape[0]):
        sg = np.float32(sign[r])
        for j in range(w.shape[1]):
            wj, tj = w[r, j] * sg, t[r, j]
            aj, dj = _a_d(wj, tj)
            ws[r, j], p[r, j] = wj, aj - tj * (two * aj - one)
            wt[r, j], wd[r, j] = wj * tj, wj * dj
            keys[r, j] = _key(p_bits[r, j], j)


@njit(cache=True, nogil=True, error_model="numpy")
def _linf_rows(w, t, p, b, b0, order, out, nitermax):
    """torchattacks' projection_linf after its argsort, row by row (float32 as torch computes it)."""
    rows, n = w.shape
    zero, one, two = np.float32(0.0), np.float32(1.0), np.float32(2.0)
    s = np.empty(n, dtype=np.float32)
    sb = np.empty(n, dtype=np.float32)
    for r in range(rows):
        acc_s = 0.0                                  # torch's CPU cumsum accumulates float32 in double
        acc_b = 0.0
        for k in range(n):                           # descending p: the order flipped
            j = order[r, n - 1 - k]
            wj = w[r, j]
            acc_s += abs(wj)
            acc_b += (-wj) * _a_d(wj, t[r, j])[1]
            s[k] = np.float32(acc_s)
            sb[k] = np.float32(acc_b) + b0[r]
        br = b[r]
        b2 = sb[n - 1] - s[n - 1] * p[r, order[r, 0]]
        c_l = br - b2 > zero
        c2 = (br - b0[r] > zero) and not c_l
        k = n - 1
        if c2:                                       # bisection over the sorted coordinates
            lb, ub = zero, np.float32(n - 1)
            for _ in range(nitermax):
                counter4 = np.float32(math.floor((lb + ub) / two))
                k = int(counter4)
                b2 = sb[k] - s[k] * p[r, order[r, n - 1 - k]]
                if br - b2 > zero:
                    lb = counter4
                else:
                    ub = counter4
            k = int(lb)
        lmbd = _clamp_min0((br - sb[k]) / (-s[k]))
        for j in range(n):
            wj = w[r, j]
            aj, dj = _a_d(wj, t[r, j])
            if c_l:
                dj = (two * aj - one) * lmbd
            elif c2:
                dj = _minimum(lmbd, dj) * aj + _maximum(-lmbd, dj) * (one - aj)
            out[r, j] = dj * (one if wj != zero else zero)


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _clamp_min0(x):
    if x < np.float32(0.0):       # NaN stays NaN, as torch.clamp_min keeps it
        return np.float32(0.0)
    return x


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _minimum(x, y):
    return x if (math.isnan(x) or x < y) else y             # torch.minimum: NaN wins


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _maximum(x, y):
    return x if (math.isnan(x) or x > y) else y


def projection_l2(points_to_project: torch.Tensor, w_hyperplane: torch.Tensor, b_hyperplane: torch.Tensor):
    """The L2 projection of each row's point onto its hyperplane w.x + b = 0 within [0, 1]^n."""
    if points_to_project.device.type != "cpu":
        from torchattacks.attacks.fab import projection_l2 as theirs
        return theirs(points_to_project, w_hyperplane, b_hyperplane)
    t, w, b = (v.detach().float().contiguous().numpy() for v in (points_to_project, w_hyperplane, b_hyperplane))
    (ws, r, dw, w3s), keys = _scratch.take(*w.shape, 4)     # signed w, r, d * w, w ** 2 sorted; r's sort keys
    _products(w, t, dw)
    c = _row_sums(dw) - torch.from_numpy(b)
    sign = 2 * (c >= 0) - 1
    c = c * sign
    _in_row_parts(_l2_sorted, w, t, sign.numpy(), ws, r, dw, r.view(np.int32), keys, w3s)
    w5, dw_sum = _row_sums(w3s), _row_sums(dw)
    out = np.empty(w.shape, dtype=np.float32)
    _in_row_parts(_l2_rows, ws, r, keys, w3s, w5.numpy(), dw_sum.numpy(), c.numpy(), out,
                  math.ceil(math.log2(w.shape[1])))
    return torch.from_numpy(out)


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _l2_r_d(wj, tj):
    """torchattacks' r (the step to each box face, 1e12 where w is ~0) and d = -(r * w) * (|w| > 1e-8)."""
    big, tiny, one = np.float32(1e12), np.float32(1e-8), np.float32(1.0)
    rj = _maximum(tj / wj, (tj - one) / wj)
    rj = rj if math.isnan(rj) else min(max(rj, -big), big)   # torch.clamp keeps NaN
    if abs(wj) < tiny or rj == -big:
        rj = big
    return rj, -(rj * wj) * (one if abs(wj) > tiny else np.float32(0.0))


def _l2_sorted(w, t, sign, ws, r, dw, r_bits, keys, w3s) -> None:
    _l2_prelude(w, t, sign, ws, r, dw, r_bits, keys)
    _sorted_order(keys)
    _gather_squares(ws, keys, w3s)


@njit(cache=True, nogil=True, error_model="numpy")
def _l2_prelude(w, t, sign, ws, r, dw, r_bits, keys):
    for i in range(w.shape[0]):
        sg = np.float32(sign[i])
        for j in range(w.shape[1]):
            wj = w[i, j] * sg
            rj, dj = _l2_r_d(wj, t[i, j])
            ws[i, j], r[i, j], dw[i, j] = wj, rj, dj * wj
            keys[i, j] = _key(r_bits[i, j], j)


@njit(cache=True, nogil=True, error_model="numpy")
def _gather_squares(w, order, out):
    for i in range(w.shape[0]):
        for k in range(w.shape[1]):
            wj = w[i, order[i, k]]
            out[i, k] = wj * wj


@njit(cache=True, nogil=True, error_model="numpy")
def _l2_rows(w, r, order, w3s, w5, dw_sum, c, out, nitermax):
    """torchattacks' projection_l2 after its sort, row by row (float32 as torch computes it)."""
    rows, n = w.shape
    big, tiny, zero, one = np.float32(1e12), np.float32(1e-8), np.float32(0.0), np.float32(1.0)
    ws = np.empty(n, dtype=np.float32)
    rs = np.empty(n, dtype=np.float32)
    s = np.empty(n + 1, dtype=np.float32)
    for i in range(rows):
        acc_w = 0.0                                   # torch's CPU cumsum accumulates float32 in double
        for k in range(n):
            acc_w += w3s[i, k]
            ws[k] = w5[i] - np.float32(acc_w)
            rk = r[i, order[i, k]]
            rs[k] = zero if rk == big else rk           # rs, then rs == 1e12 masked to 0
        w5rs0 = w5[i] * rs[0]
        s[0] = -w5[i] * rs[0]
        acc_s = 0.0
        for k in range(n):
            rs2 = r[i, order[i, k + 1]] if k + 1 < n else zero     # rs shifted left, padded with 0, then masked
            rs2 = zero if rs2 == big else rs2
            acc_s += (-rs2 + rs[k]) * ws[k]
            s[k + 1] = np.float32(acc_s) - w5rs0
        ci = c[i]
        c4 = s[0] + ci < zero
        c2 = not (c4 or dw_sum[i] + ci > zero)
        alpha = zero
        if c4:
            alpha = ci / w5[i]
        elif c2:
            lb, ub = zero, np.float32(n - 1)
            for _ in range(nitermax):
                counter4 = np.float32(math.floor((lb + ub) / np.float32(2.0)))
                if s[int(counter4)] + ci > zero:
                    lb = counter4
                else:
                    ub = counter4
            k = int(lb)
            alpha = zero if ws[k] == zero else (s[k] + ci) / ws[k] + rs[k]
        for j in range(n):
            wj = w[i, j]
            rj = r[i, j]
            dj = -(rj * wj) * (one if abs(wj) > tiny else zero)
            if c4:
                dj = -alpha * wj
            elif c2:
                c5 = one if alpha > rj else zero
                dj = dj * c5 - alpha * wj * (one - c5)
            out[i, j] = dj * (one if abs(wj) > tiny else zero)
