"""Checkpoints: architecture name + constructor kwargs + weights, loaded weights_only."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..files import atomic_write, ensure_local
from .registry import create_model


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not describe a known model."""


def save_checkpoint(path: str | os.PathLike, model_name: str, model_kwargs: dict[str, Any],
                    state_dict: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> None:
    payload = {"model": model_name, "model_kwargs": dict(model_kwargs),
               "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
               "meta": dict(meta or {})}
    with atomic_write(path) as f:     # a crash mid-write never leaves a truncated checkpoint behind
        torch.save(payload, f)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not ensure_local(path):       # a working copy's checkpoint that a trial on another node wrote: from the store
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, not a torch file, pickled code...
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if not isinstance(payload, dict) or not {"model", "model_kwargs", "state_dict"} <= payload.keys():
        raise CheckpointError(f"{path}: not a robustgrid checkpoint (needs model, model_kwargs, state_dict)")
    return payload


def load_checkpoint(path: str | os.PathLike) -> nn.Module:
    """A ready model in eval mode on the CPU that takes [0,1] images."""
    return load_model(read_checkpoint(path), path)


def load_model(payload: dict[str, Any], path: str | os.PathLike = "checkpoint") -> nn.Module:
    """The model of a checkpoint already read (read_checkpoint's dict; `path` names it in errors)."""
    try:
        model = create_model(payload["model"], **payload["model_kwargs"])
        model.load_state_dict(payload["state_dict"])
    except (KeyError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"{path}: {str(e).splitlines()[0][:300]}") from None
    return model.eval()


def state_dict_bytes(model: nn.Module) -> int:
    """Size as the notebooks measured it: torch.save of the state_dict into a buffer."""
    return saved_bytes(model.state_dict())


def saved_bytes(tensors: dict) -> int:
    """Bytes of torch.save of a dict of tensors, plain tensors made contiguous first (a channels_last
    copy of a model weighs the same); tensor subclasses (torchao's) are saved as they are."""
    buf = io.BytesIO()
    flat = type(tensors)((k, v.contiguous() if type(v) is torch.Tensor else v) for k, v in tensors.items())
    if hasattr(tensors, "_metadata"):
        flat._metadata = tensors._metadata   # torch.save of a state_dict carries it
    torch.save(flat, buf)
    return buf.getbuffer().nbytes
