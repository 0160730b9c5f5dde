"""Quantization modes: how an FP32 model becomes the model under evaluation."""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from ..registry import Registry


class CastInput(nn.Module):
    """Runs a half-precision model on [0,1] float32 images and returns float32 logits."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model = model.to(dtype)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype)).float()


def _fp32(model: nn.Module) -> nn.Module:
    return model


def _dynamic_int8(model: nn.Module) -> nn.Module:
    """The notebook's mode: weights of nn.Linear in qint8, activations quantized on the fly, each
    image with its own activation range (see PerImageDynamicLinear)."""
    from torch.ao.quantization import quantize_dynamic
    with warnings.catch_warnings():  # torch marks quantized tensors deprecated; the notebook's mode still runs
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        q = quantize_dynamic(model.cpu(), {nn.Linear}, dtype=torch.qint8)
    for m in q.modules():
        if type(m) is _dynamic_linear():
            m.__class__ = PerImageDynamicLinear       # same weights, same state_dict: what a user ships
    return q


def _dynamic_linear():
    from torch.ao.nn.quantized.dynamic import Linear
    return Linear


class PerImageDynamicLinear(_dynamic_linear()):
    """quantize_dynamic's Linear computes one activation scale over the whole input batch, so an
    image's int8 prediction would depend on the images batched with it (on a quickstart model 4 of
    1000 predictions change between batch 1 and 1000). A benchmark cell must not depend on how the
    evaluator batched: each row is quantized with its own range, as if the image came alone."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        out = torch.cat([super(PerImageDynamicLinear, self).forward(r.unsqueeze(0)) for r in rows])
        return out.reshape(*x.shape[:-1], out.shape[-1])


@dataclass(frozen=True)
class QuantMode:
    name: str
    convert: Callable[[nn.Module], nn.Module]
    cpu_only: bool          # quantized kernels exist for the CPU only
    has_input_grad: bool    # white-box attacks need a gradient w.r.t. the input
    needs_cuda: bool = False
    precision: str | None = None   # the arithmetic of its predictions; None: the device's fp32


QUANT = Registry("quant mode")
for _mode in (
    QuantMode("fp32", _fp32, cpu_only=False, has_input_grad=True),
    QuantMode("dynamic_int8", _dynamic_int8, cpu_only=True, has_input_grad=False, precision="int8 linear, fp32 conv"),
    QuantMode("bf16", lambda m: CastInput(m, torch.bfloat16), cpu_only=False, has_input_grad=True, needs_cuda=True,
              precision="bf16"),
    QuantMode("fp16", lambda m: CastInput(m, torch.float16), cpu_only=False, has_input_grad=True, needs_cuda=True,
              precision="fp16"),
):
    QUANT.add(_mode.name, _mode)


def quant_mode(name: str) -> QuantMode:
    return QUANT.get(name).obj


def quantize(model: nn.Module, mode: str) -> nn.Module:
    """A new model in `mode`; the FP32 model passed in is left untouched."""
    if mode == "fp32":
        quant_mode(mode)
        return model
    return quant_mode(mode).convert(copy.deepcopy(model)).eval()
