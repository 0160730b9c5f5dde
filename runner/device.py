"""Devices, chosen once and explicitly, and the numerics and clocks that go with them.

- `pick_device`: 'auto' means CUDA only where this process may see a GPU; a Ray trial or
  task that was given no GPU is handed 'cpu' and hides CUDA (runner/tune.py).
- `ieee_fp32`: evaluation runs fp32 convolutions and matmuls as IEEE fp32; torch leaves
  cuDNN convolutions in TF32 by default, which would make "fp32" cells something else.
- `clock`: a GPU runs asynchronously; a timer that does not synchronize measures launches.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch


def pick_device(setting: str, local_rank: int = 0) -> torch.device:
    if setting == "cuda" or (setting == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device: cuda asked for, but no CUDA device is visible")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


@contextlib.contextmanager
def ieee_fp32() -> Iterator[None]:
    """TF32 off for cuDNN convolutions and CUDA matmuls inside the block (restored after)."""
    matmul = torch.backends.cuda.matmul
    old_matmul = matmul.allow_tf32
    try:
        matmul.allow_tf32 = False
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, benchmark=torch.backends.cudnn.benchmark,
                                        deterministic=torch.backends.cudnn.deterministic, allow_tf32=False,
                                        fp32_precision="ieee"):
            yield
    finally:
        matmul.allow_tf32 = old_matmul


def fp32_precision(device: torch.device) -> str:
    """What an fp32 convolution computes in right now on `device`: recorded with every fp32 row."""
    if device.type != "cuda":
        return "fp32"
    tf32 = torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32
    return "tf32" if tf32 else "fp32"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clock(*devices: torch.device) -> float:
    """perf_counter after the devices have finished their queued work."""
    for d in set(devices):
        synchronize(d)
    return time.perf_counter()
