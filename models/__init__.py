"""Architectures (registry by name), checkpoints and quantization modes."""
from . import improved_cnn as _improved_cnn  # noqa: F401  (registers)
from . import resnet as _resnet  # noqa: F401  (registers)
from . import simple_cnn as _simple_cnn  # noqa: F401  (registers)
from .checkpoint import (
           CheckpointError,
           load_checkpoint,
           load_model,
           read_checkpoint,
           save_checkpoint,
           state_dict_bytes,
)
from .quant import (
           QUANT,
           QuantMode,
           fake_quant_twin,
           int8_share,
           per_row_op,
           quant_mode,
           quantize,
           shipped_bytes,
           sizes_per_mode,
)
from .registry import MODELS, create_model, model_names, register_model

__all__ = ["CheckpointError", "MODELS", "QUANT", "QuantMode", "create_model", "fake_quant_twin", "int8_share", "load_checkpoint", "load_model", "model_names",
           "per_row_op", "quant_mode", "quantize", "read_checkpoint", "register_model", "save_checkpoint", "shipped_bytes", "sizes_per_mode",
           "state_dict_bytes"]
