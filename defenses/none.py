"""The identity: the undefended model sees the (8-bit) image as delivered."""
import numpy as np

from .base import register_defense, to_uint8

register_defense(
    "none",
    reference=lambda img: img.astype(np.float64) / 255.0,
    batched=lambda images: to_uint8(images).to(images.dtype) / 255,
    gradient="exact",
)
