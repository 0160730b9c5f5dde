"""fbgemm's dynamic int8 Linear with one activation range per row, in one batched pass.

`torch.ops.quantized.linear_dynamic` quantizes its whole input with one range; a benchmark wants
each image's own (see quant.PerImageDynamicLinear), and calling the op once per row costs about
30 µs a call in dispatch alone (14000 calls in the quick grid). This is the op's arithmetic
(torch's ChooseQuantizationParams, fbgemm's quantization and its float requantization) per row:
the range in double, the rounding in float32, the int8 product exact (torch._int_mm), the
output as fbgemm's fused multiply-add. It equals the op row for row (tests/test_rowwise_int8.py);
each layer checks it on probe rows before first use and keeps the per-row op where it differs
(another CPU's kernels), so a prediction never depends on which path ran.
"""
from __future__ import annotations

import torch

SMALL_SCALE = torch.tensor(6.1e-5, dtype=torch.float32)   # torch's cut-off under which the scale is raised
QMAX = 127                                                 # reduce_range: activations in 0..127


def row_qparams(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torch's ChooseQuantizationParams(min, max, 0, 255, reduce_range=True) for every row of (rows, K)
    float32: (float32 scales, float64 integer zero points)."""
    lo, hi = x.amin(-1).clamp(max=0), x.amax(-1).clamp(min=0)
    scale = (hi.double() - lo.double()) / QMAX
    degenerate = (scale.float() == 0) | torch.isinf(1.0 / scale.float())
    scale = torch.where(degenerate, 0.1, scale)
    small = scale < SMALL_SCALE.double()
    if small.any():          # the range stretched so that the scale becomes SMALL_SCALE, as torch does
        amplifier = SMALL_SCALE / scale.float()
        lo_small = torch.where(lo == 0, lo, torch.where(hi == 0, -SMALL_SCALE * QMAX, lo * amplifier))
        hi_small = torch.where(lo == 0, SMALL_SCALE * QMAX, torch.where(hi == 0, hi, hi * amplifier))
        lo, hi = torch.where(small, lo_small, lo), torch.where(small, hi_small, hi)
        scale = torch.where(small, SMALL_SCALE.double(), scale)
    lo, hi = lo.double(), hi.double()
    from_min, from_max = -lo / scale, QMAX - hi / scale
    error_min, error_max = -(lo / scale).abs(), QMAX - (hi / scale).abs()
    zero = torch.where(error_min < error_max, from_min, from_max)
    zero = torch.where(zero < 0, 0.0, torch.where(zero > QMAX, float(QMAX), torch.round(zero)))
    return scale.float(), zero


class RowwiseWeights:
    """What the batched pass reads of a packed per-tensor qint8 weight: (K, N) int8, its scale, the bias."""

    def __init__(self, packed):
        weight, bias = torch.ops.quantized.linear_unpack(packed)
        self.supported = weight.qscheme() == torch.per_tensor_affine and weight.q_zero_point() == 0
        if self.supported:       # per-channel weights have no single scale: they keep the op
            self.weight_t = weight.int_repr().t().contiguous()
            self.scale = torch.tensor(weight.q_scale(), dtype=torch.float32)
            self.bias = None if bias is None else bias.detach().double()


def rowwise_linear(x: torch.Tensor, w: RowwiseWeights) -> torch.Tensor | None:
    """(rows, K) float32 -> (rows, N) float32 as the op gives each row alone; None where a quantized value
    falls outside int8 after its zero point is taken off (then the caller runs the op per row)."""
    scale, zero = row_qparams(x)
    q = torch.round(x * (1.0 / scale)[:, None]).add_(zero.float()[:, None]).clamp_(0, 255)   # fbgemm: round(x * (1/s)) + z
    centred = q.sub_(zero.float()[:, None])
    if centred.numel() and (centred.min() < -128 or centred.max() > 127):
        return None
    acc = torch._int_mm(centred.to(torch.int8), w.weight_t)        # int32, exact as fbgemm's
    multiplier = (scale * w.scale).double()[:, None]                # fbgemm: acc * (A_scale * B_scale) + bias, fused
    out = acc.double() * multiplier                                 # exact: 27-bit integer times 24-bit float
    if w.bias is not None:
        out = out + w.bias      # one rounding to double, one to float: a fused op's single rounding but for
    return out.float()          # ties at float precision, about one logit in 2^29


def probe_rows(k: int) -> torch.Tensor:
    """Rows whose ranges take every branch of the parameter choice: signed, ReLU outputs, one-signed,
    shifted, tiny (the raised scale), all zero."""
    g = torch.Generator().manual_seed(0)
    n = torch.randn(64, k, generator=g)
    return torch.cat([n * 4, n.relu() * 3, -n.relu(), n + 3, n * 1e-7, n.relu() * 1e-6, torch.zeros(2, k)])
