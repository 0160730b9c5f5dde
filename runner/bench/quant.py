"""(d) Every quant mode's inference on this machine: images per second, accuracy, bytes shipped, and how often the
fake-quant twin a white-box attacker differentiates predicts what the real int8 model predicts."""
from __future__ import annotations

import time

import torch

from ..console import console
from ..device import pick_device
from .common import (
    best_seconds,
    machine,
    model_and_images,
    print_table,
    write_json,
)


def bench_quant_modes(model, images: torch.Tensor, labels: torch.Tensor, calibration: torch.Tensor,
                      device: torch.device) -> list[dict]:
    """(d) Each quant mode's inference: images/s (batches of 500, fastest of repeats, after a warm-up
    that includes int8_static's compilation), accuracy, bytes shipped and its int8 share."""
    from ...models import QUANT, int8_share, quant_mode, quantize, shipped_bytes
    from ..evaluate.batching import predict
    rows = []
    for mode in QUANT.names():
        qm = quant_mode(mode)
        if qm.needs_cuda and device.type != "cuda":
            continue
        dev = torch.device("cpu") if qm.cpu_only else device
        t0 = time.perf_counter()
        q = quantize(model.cpu(), mode, calibration).to(dev) if mode != "fp32" else model.to(dev)
        convert_s = time.perf_counter() - t0
        predict(q, images, dev, 500)                                   # warm-up (compiles int8_static)
        seconds, preds = best_seconds(lambda: predict(q, images, dev, 500), min_total=2.0, max_reps=5)
        rows.append({"mode": mode, "device": str(dev), "img_per_s": len(images) / seconds,
                     "accuracy": (preds == labels).float().mean().item(), "mb": shipped_bytes(q) / 1e6,
                     "int8_share": int8_share(model, q), "convert_s": convert_s,
                     **_twin_agreement(model, q, mode, images, labels, dev)})
    return rows


def _twin_agreement(model, quantized, mode: str, images: torch.Tensor, labels: torch.Tensor, device: torch.device,
                    eps: float = 8 / 255) -> dict:
    """How often the fake-quant twin a white-box (STE) attacker differentiates predicts what the real int8 model
    predicts: on the clean images, and on FGSM images made on the twin (the images of an STE cell, on the 8-bit
    grid), where a twin that misleads the attacker would show; with each model's accuracy on the latter."""
    from ...attacks.fgsm import fgsm
    from ...models import fake_quant_twin
    from ...pixels import from_levels, to_levels
    from ..evaluate.batching import predict
    twin = fake_quant_twin(model.cpu(), quantized, mode)
    if twin is None:
        return {}
    twin = twin.to(device)
    with torch.enable_grad():
        adv = torch.cat([from_levels(to_levels(fgsm(twin, images[i:i + 500].to(device), labels[i:i + 500].to(device),
                                                      eps).cpu())) for i in range(0, len(images), 500)])
    out = {}
    for name, x in (("clean", images), ("fgsm", adv)):
        real, fake = predict(quantized, x, device, 500), predict(twin, x, device, 500)
        out[f"twin_agrees_{name}"] = (real == fake).float().mean().item()
    out["fgsm_accuracy_real"] = (predict(quantized, adv, device, 500) == labels).float().mean().item()
    out["fgsm_accuracy_twin"] = (predict(twin, adv, device, 500) == labels).float().mean().item()
    return out


def run_quant_bench(json_path: str | None = None, device: str = "auto", images: int | None = None,
                    model_name: str = "simple_cnn") -> int:
    """(d) alone: every quant mode's speed, accuracy and size on this machine."""
    dev = pick_device(device)
    model, x, y, dataset, calibration = model_and_images(images or 2000, False, model_name, dev.type, calibration=1000)
    console.print(f"bench on {machine()}; {model_name}, {dataset}, {len(x)} test images")
    with torch.no_grad():
        rows = bench_quant_modes(model.eval(), x, y, calibration, dev)
    print_table(f"(d) quant modes: inference ({model_name}, batches of 500)", rows,
                 {"mode": "{}", "device": "{}", "img_per_s": "{:.0f}", "accuracy": "{:.4f}", "mb": "{:.2f}",
                  "int8_share": "{:.2%}", "convert_s": "{:.1f}", "twin_agrees_clean": "{:.4f}",
                  "twin_agrees_fgsm": "{:.4f}", "fgsm_accuracy_real": "{:.4f}", "fgsm_accuracy_twin": "{:.4f}"})
    if json_path:
        write_json(json_path, {"machine": machine(), "device": str(dev), "dataset": dataset, "quant_modes": rows})
    return 0
