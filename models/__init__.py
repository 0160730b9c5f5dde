"""Architectures (registry by name), checkpoints and quantization modes."""
from . import improved_cnn as _improved_cnn  # noqa: F401  (registers)
from . import simple_cnn as _simple_cnn  # noqa: F401  (registers)
from .checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint, state_dict_bytes
from .quant import QUANT_MODES, quantize
from .registry import create_model, model_names, register_model

__all__ = ["CheckpointError", "QUANT_MODES", "create_model", "load_checkpoint", "model_names",
           "quantize", "read_checkpoint", "register_model", "save_checkpoint", "state_dict_bytes"]
