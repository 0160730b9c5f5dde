"""JPEG compression round trip on the 8-bit image; equals cv2.imencode/imdecode at quality q."""
from __future__ import annotations

import cv2
import numpy as np
import torch
from torchvision.io import decode_jpeg, encode_jpeg

from .base import Defense, register_defense, to_uint8


def reference(img: np.ndarray, quality: int = 30) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("cv2.imencode failed")
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(np.float64) / 255.0


def batched(images: torch.Tensor, quality: int = 30) -> torch.Tensor:
    # libjpeg(-turbo) through torchvision on lists; same codec settings as OpenCV's
    # (4:2:0, islow DCT, fancy upsampling), which tests/test_defenses.py checks pixel for pixel.
    # Always on the CPU: nvJPEG is not proven to decode to the same pixels.
    x = list(to_uint8(images).cpu())
    decoded = decode_jpeg(encode_jpeg(x, quality=int(quality)))
    return (torch.stack(decoded).to(torch.float32) / 255).to(images.device)


DEFENSE = register_defense(Defense("jpeg", {"quality": 30}, reference, batched, {"quality": int}))
