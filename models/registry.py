"""Models built by name (timm-style): `@register_model` adds a constructor, `create_model` builds one."""
from __future__ import annotations

import inspect

import torch.nn as nn

from ..registry import Param, Registry

MODELS = Registry("model")


def register_model(fn):
    """Register an architecture under its function's name; its keyword defaults are its parameters."""
    params = {k: Param(p.default, type(p.default)) for k, p in inspect.signature(fn).parameters.items()
              if p.default is not inspect.Parameter.empty}
    MODELS.add(fn.__name__, fn, params)
    return fn


def model_names() -> list[str]:
    return sorted(MODELS.names())


def create_model(name: str, **kwargs) -> nn.Module:
    return MODELS.get(name).obj(**kwargs)
