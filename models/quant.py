"""Quantization modes: how an FP32 model becomes the model under evaluation, what that model
weighs as shipped, and, for the int8 modes, the fake-quant twin a white-box attacker differentiates.

    fp32              the trained model
    dynamic_int8      the notebook's: torch.ao quantize_dynamic, nn.Linear weights int8, activations
                      quantized on the fly (here per image), convolutions in float
    int8_dynamic      torchao Int8DynamicActivationInt8WeightConfig: the same layers, per-row
                      symmetric activation scales
    int8_weight_only  torchao Int8WeightOnlyConfig: int8 Linear weights, float activations
    int8_static       PT2E post-training static quantization of convolutions and linears (x86
                      inductor quantizer, calibrated on training images), lowered by torch.compile
    bf16, fp16        the model cast to half precision
"""
from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import Registry
from .rowwise_int8 import RowwiseWeights, probe_rows, rowwise_linear


class CastInput(nn.Module):
    """Runs a half-precision model on [0,1] float32 images and returns float32 logits."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model = model.to(dtype)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype)).float()


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """torch.ao's deprecation notices and torchao's import-time log lines are not the user's business."""
    loggers = [logging.getLogger(n) for n in ("torch.utils._pytree", "torch.utils.cpp_extension", "torchao", "torch._inductor", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


# --- fp32, half ---------------------------------------------------------------------------------

def _fp32(model: nn.Module, calibration: torch.Tensor | None = None) -> nn.Module:
    return model


# --- dynamic_int8: the notebook's mode ------------------------------------------------------------

def _dynamic_int8(model: nn.Module, calibration: torch.Tensor | None = None) -> nn.Module:
    """nn.Linear weights in qint8, activations quantized on the fly, each image with its own
    activation range (see PerImageDynamicLinear)."""
    from torch.ao.quantization import quantize_dynamic
    with quiet():
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
    evaluator batched: each row is quantized with its own range, as if the image came alone.

    The rows go through fbgemm's op one at a time where `per_row_op` is set (the reference pipeline's
    models: the oracle) or where the batched pass (rowwise_int8) differs from it on probe rows;
    otherwise through the batched pass, which equals the op row for row."""

    per_row_op = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed_params.dtype != torch.qint8:
            return super().forward(x)          # fp16 weights: no activation scale to share
        rows = x.reshape(-1, x.shape[-1])
        out = None if self.per_row_op or not self._batched_pass_agrees() else rowwise_linear(rows.float(), self._rowwise)
        if out is None:
            out = self._op_per_row(rows)
        return out.to(x.dtype).reshape(*x.shape[:-1], out.shape[-1])

    def _op_per_row(self, rows: torch.Tensor) -> torch.Tensor:
        # the op the parent's forward calls, once per row (the module call around it cost as much as the op)
        op, packed = torch.ops.quantized.linear_dynamic, self._packed_params._packed_params
        return torch.cat([op(r, packed) if self._legacy() else op(r, packed, reduce_range=True) for r in rows.split(1)])

    def _legacy(self) -> bool:
        """Saved before reduce_range existed (version < 4): the op's full 0..255 range, which the pass does not do."""
        return self.version is None or self.version < 4

    def _batched_pass_agrees(self) -> bool:
        """Checked once per layer: the batched pass against the op on probe rows (ranges wide, narrow,
        one-signed, tiny and empty), bit for bit; legacy modules (no reduce_range) keep the op."""
        if getattr(self, "_agrees", None) is None:
            self._rowwise = RowwiseWeights(self._packed_params._packed_params)
            probe = probe_rows(self.in_features)
            self._agrees = not self._legacy() and self._rowwise.supported and torch.equal(
                rowwise_linear(probe, self._rowwise), self._op_per_row(probe))
        return self._agrees


def per_row_op(model: nn.Module) -> nn.Module:
    """The model with its dynamic int8 Linears on fbgemm's op one row at a time (the reference pipeline's
    oracle for the batched pass); other modes as they are."""
    for m in model.modules():
        if isinstance(m, PerImageDynamicLinear):
            m.per_row_op = True
    return model


# --- torchao --------------------------------------------------------------------------------------

def _torchao(config: str) -> Callable[..., nn.Module]:
    def convert(model: nn.Module, calibration: torch.Tensor | None = None) -> nn.Module:
        with quiet():
            import torchao.quantization as tq
            tq.quantize_(model.cpu(), getattr(tq, config)())
        return model
    return convert


# --- int8_static: PT2E ----------------------------------------------------------------------------

CALIBRATION_BATCH = 100


def _int8_static(model: nn.Module, calibration: torch.Tensor | None = None) -> nn.Module:
    """Export with a dynamic batch, observe activations on the calibration images (in a fixed
    order and batching: deterministic), convert, and compile: the compiled graph runs int8 kernels."""
    if calibration is None or len(calibration) == 0:
        raise ValueError("int8_static needs calibration images (evaluate.calibration_images > 0)")
    prepared = _calibrated(model.cpu().eval(), calibration.cpu())
    with quiet():
        from torchao.quantization.pt2e import allow_exported_model_train_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e
        converted = allow_exported_model_train_eval(convert_pt2e(prepared))   # eval() is a no-op on it
    return StaticInt8(converted)


def _calibrated(model: nn.Module, calibration: torch.Tensor) -> nn.Module:
    with quiet():
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
        from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e
        batch = torch.export.Dim("batch", min=1, max=1 << 20)
        example = calibration[:2].float()
        exported = torch.export.export(model, (example,), dynamic_shapes=({0: batch},)).module()
        quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
        prepared = prepare_pt2e(exported, quantizer)
        with torch.no_grad():
            for i in range(0, len(calibration), CALIBRATION_BATCH):
                prepared(calibration[i:i + CALIBRATION_BATCH].float())
    return prepared


class StaticInt8(nn.Module):
    """The converted PT2E graph (quantize / dequantize around float ops: what is shipped) and its
    torch.compile lowering (int8 convolutions and matmuls: what runs), compiled on first use."""

    def __init__(self, converted: torch.fx.GraphModule):
        super().__init__()
        self.converted = converted
        self._compiled = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._compiled is None:
            with quiet():
                self._compiled = torch.compile(self.converted, dynamic=True)
        with quiet(), torch.no_grad():
            return self._compiled(x)

    def shipped(self) -> dict[str, torch.Tensor]:
        """The tensors the graph reads (int8 weights, their scales, float biases): the artifact."""
        return {n.target: _attr(self.converted, n.target) for n in self.converted.graph.nodes if n.op == "get_attr"}


def _attr(module: nn.Module, target: str):
    for part in target.split("."):
        module = getattr(module, part)
    return module


# --- fake-quant twins (white-box attacks through a straight-through estimator) -----------------------

def _ste(x: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Forward: the fake-quantized value; backward: the identity (the rounding passed straight through)."""
    return x + (fake - x).detach()


class FakeQuantLinear(nn.Module):
    """A quantized Linear as float arithmetic: dequantized int8 weights, activations fake-quantized
    per row the way the real kernel quantizes them, rounding passed straight through."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, activations: str):
        super().__init__()
        self.register_buffer("weight", weight.detach().float().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.activations = activations

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activations == "uint7_asymmetric":
            x = _ste(x, _fake_uint_per_row(x, 127))
        elif self.activations == "int8_symmetric":
            x = _ste(x, _fake_int8_symmetric_per_row(x))
        return F.linear(x, self.weight, self.bias)


def _fake_uint_per_row(x: torch.Tensor, qmax: int) -> torch.Tensor:
    """fbgemm's dynamic activation quantization (reduce_range: 0..127), one range per row, 0 inside it."""
    lo = x.detach().amin(-1, keepdim=True).clamp(max=0)
    hi = x.detach().amax(-1, keepdim=True).clamp(min=0)
    scale = ((hi - lo) / qmax).clamp_min(torch.finfo(torch.float32).eps)
    zero = torch.clamp(torch.round(-lo / scale), 0, qmax)
    q = torch.clamp(torch.round(x / scale) + zero, 0, qmax)
    return (q - zero) * scale


def _fake_int8_symmetric_per_row(x: torch.Tensor) -> torch.Tensor:
    """torchao's choose_qparams_affine, symmetric over [-128, 127]: scale = max|x| / 127.5."""
    amax = x.detach().abs().amax(-1, keepdim=True)
    scale = (amax / 127.5).clamp_min(torch.finfo(torch.float32).eps)
    return torch.clamp(torch.round(x / scale), -128, 127) * scale


def _linear_twin(fp32: nn.Module, quantized: nn.Module, activations: str) -> nn.Module:
    """fp32's architecture with each quantized Linear replaced by its fake-quant form."""
    twin = copy.deepcopy(fp32).cpu().eval()
    qmods = dict(quantized.named_modules())
    for name, module in list(twin.named_modules()):
        if isinstance(module, nn.Linear):
            weight, bias = _dequantized(qmods[name])
            parent = _attr(twin, name.rpartition(".")[0]) if "." in name else twin
            setattr(parent, name.rpartition(".")[2], FakeQuantLinear(weight, bias, activations))
    return twin


def _dequantized(qmod: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    if hasattr(qmod, "_weight_bias"):                       # torch.ao dynamic Linear
        w, b = qmod._weight_bias()
        return w.dequantize(), b
    w = qmod.weight
    return (w.dequantize() if hasattr(w, "dequantize") else w.detach()), qmod.bias


class _STEFakeQuant(nn.Module):
    def forward(self, x, scale, zero_point, qmin, qmax):
        q = torch.clamp(torch.round(x * (1.0 / scale)) + zero_point, qmin, qmax)
        return _ste(x, (q - zero_point) * scale)


def _static_twin(fp32: nn.Module, quantized: "StaticInt8") -> nn.Module:
    """The converted graph itself with each activation's quantize -> dequantize pair replaced by a
    straight-through fake quantization (same scale, zero point and range); weights stay int8."""
    gm = copy.deepcopy(quantized.converted)
    ops = torch.ops.quantized_decomposed
    quantizes = {ops.quantize_per_tensor.default, ops.quantize_per_tensor.tensor}
    dequantizes = {ops.dequantize_per_tensor.default, ops.dequantize_per_tensor.tensor}
    gm.add_submodule("_ste_fake_quant", _STEFakeQuant())
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in dequantizes:
            src = node.args[0]
            if getattr(src, "op", None) == "call_function" and src.target in quantizes:
                x, scale, zero, qmin, qmax = src.args[:5]
                with gm.graph.inserting_before(node):
                    fq = gm.graph.call_module("_ste_fake_quant", (x, scale, zero, qmin, qmax))
                node.replace_all_uses_with(fq)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm.eval()


# --- modes ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class QuantMode:
    name: str
    convert: Callable[..., nn.Module]   # (fp32 model, calibration images or None) -> model
    cpu_only: bool          # quantized kernels exist for the CPU only
    has_input_grad: bool    # white-box attacks need a gradient w.r.t. the input
    needs_cuda: bool = False
    precision: str | None = None   # the arithmetic of its predictions; None: the device's fp32
    twin: Callable[[nn.Module, nn.Module], nn.Module] | None = None   # (fp32, quantized) -> fake-quant twin
    needs_calibration: bool = False
    notebook: bool = False


QUANT = Registry("quant mode")
for _mode in (
    QuantMode("fp32", _fp32, cpu_only=False, has_input_grad=True),
    QuantMode("dynamic_int8", _dynamic_int8, cpu_only=True, has_input_grad=False, precision="int8 linear, fp32 conv",
              twin=lambda f, q: _linear_twin(f, q, "uint7_asymmetric"), notebook=True),
    QuantMode("int8_dynamic", _torchao("Int8DynamicActivationInt8WeightConfig"), cpu_only=True, has_input_grad=False,
              precision="int8 linear (torchao), fp32 conv", twin=lambda f, q: _linear_twin(f, q, "int8_symmetric")),
    QuantMode("int8_weight_only", _torchao("Int8WeightOnlyConfig"), cpu_only=True, has_input_grad=False,
              precision="int8 linear weights, fp32 arithmetic", twin=lambda f, q: _linear_twin(f, q, "none")),
    QuantMode("int8_static", _int8_static, cpu_only=True, has_input_grad=False, precision="int8 conv + linear (PT2E)",
              twin=_static_twin, needs_calibration=True),
    QuantMode("bf16", lambda m, c=None: CastInput(m, torch.bfloat16), cpu_only=False, has_input_grad=True,
              precision="bf16"),
    QuantMode("fp16", lambda m, c=None: CastInput(m, torch.float16), cpu_only=False, has_input_grad=True,
              precision="fp16"),
):
    QUANT.add(_mode.name, _mode)


def quant_mode(name: str) -> QuantMode:
    return QUANT.get(name).obj


def quantize(model: nn.Module, mode: str, calibration: torch.Tensor | None = None) -> nn.Module:
    """A new model in `mode`; the FP32 model passed in is left untouched."""
    if mode == "fp32":
        quant_mode(mode)
        return model
    return quant_mode(mode).convert(copy.deepcopy(model), calibration).eval()


def fake_quant_twin(fp32: nn.Module, quantized: nn.Module, mode: str) -> nn.Module | None:
    """The differentiable stand-in a white-box (STE) attacker uses for an int8 mode; None where the
    mode has none (then it is attacked by transfer only, never with a faked row)."""
    make = quant_mode(mode).twin
    return None if make is None else make(fp32, quantized).eval()


# --- what a mode weighs ---------------------------------------------------------------------------

def shipped_tensors(model: nn.Module) -> dict:
    """What a user ships for the model: the state_dict, or for a PT2E graph the tensors it reads."""
    if isinstance(model, StaticInt8):
        return model.shipped()
    return model.state_dict()


def shipped_bytes(model: nn.Module) -> int:
    """Bytes of torch.save of what is shipped, as the notebooks measured sizes."""
    from .checkpoint import saved_bytes
    with quiet():
        return saved_bytes(shipped_tensors(model))


INT8_DTYPES = {torch.int8, torch.qint8, torch.quint8}


def int8_share(fp32: nn.Module, model: nn.Module) -> float:
    """Share of the FP32 model's parameters that the mode stores in 8 bits."""
    total = sum(p.numel() for p in fp32.parameters())
    return sum(_int8_numel(v) for v in shipped_tensors(model).values()) / total


def _int8_numel(v) -> int:
    if isinstance(v, (tuple, list)):
        return sum(_int8_numel(x) for x in v)
    if not isinstance(v, torch.Tensor):
        return 0
    if v.dtype in INT8_DTYPES:
        return v.numel()
    inner = getattr(v, "qdata", None)          # torchao's Int8Tensor keeps its int8 data here
    return inner.numel() if isinstance(inner, torch.Tensor) and inner.dtype in INT8_DTYPES else 0


def sizes_per_mode(model: nn.Module, on_mode: Callable[[str], None] | None = None) -> dict[str, tuple[int, float]]:
    """Per quant mode: the bytes it ships (torch.save of what it stores, measured) and the share of the parameters it
    holds in 8 bits. int8_static's calibration images are random: its scales' number, so its size, does not depend
    on them. on_mode(mode) is called before each (quantizing every model takes minutes: int8_static compiles)."""
    calibration = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = {}
    for mode in QUANT.names():
        if on_mode:
            on_mode(mode)
        quantized = quantize(model, mode, calibration)
        out[mode] = (shipped_bytes(quantized), int8_share(model, quantized))
    return out
