"""(f) What adversarial training costs: one epoch of each method on the same images and model, and each epoch's
achieved GFLOP/s against the machine's matmul peak."""
from __future__ import annotations

import torch

from ..console import console
from ..device import pick_device
from ..train import train
from .common import (
    bench_dataset,
    machine,
    matmul_peak_gflops,
    print_table,
    write_json,
)


def run_adversarial_training_bench(json_path: str | None = None, device: str = "auto", images: int | None = None,
                                   model_name: str = "simple_cnn") -> int:
    """(f) what adversarial training costs: one epoch of each method on the same images and model, seconds per
    epoch and the multiple of a standard epoch (FGSM-RS should cost about two: one more forward and backward)."""
    import tempfile
    dev = pick_device(device)
    dataset = bench_dataset()
    n = images or 5000
    console.print(f"bench on {machine()}; {model_name}, {dataset}, {n} training images, device {dev}")
    rows = []
    for method, steps in (("none", None), ("fgsm_rs", None), ("pgd", 7), ("trades", 10)):
        with tempfile.TemporaryDirectory(prefix="robustgrid-bench-adv-") as out:
            r = train({"model": model_name, "dataset": dataset, "train_subset": n, "synthetic_train": n + 500,
                       "val_size": 500, "epochs": 1, "batch_size": 128, "device": dev.type, "adversarial": method,
                       "adv_steps": steps, "robust_val_images": 200, "out_dir": out})
        train_s = r["history"][0]["train_seconds"]
        rows.append({"method": method + (f" ({steps} steps)" if steps else ""), "epoch_s": train_s,
                     "img_per_s": n / train_s, "robust_val_accuracy": r["history"][0].get("robust_val_accuracy")})
    flops = _training_flops_per_image(model_name, dev)
    peak = matmul_peak_gflops(dev)
    for row, passes in zip(rows, (0, 1, 7, None)):
        row["x_standard"] = row["epoch_s"] / rows[0]["epoch_s"]
        if passes is not None:      # TRADES' KL passes are not counted here
            row["gflop_per_s"] = n * (flops["train"] + passes * flops["attack"]) / row["epoch_s"] / 1e9
            row["of_peak"] = row["gflop_per_s"] / peak
    print_table(f"(f) adversarial training: one epoch of {n} images ({model_name}, batch 128, {dev}; roofline: "
                 f"the epoch's FLOPs by torch.utils.flop_counter over its seconds, dense fp32 matmul peak "
                 f"{peak:.0f} GFLOP/s here)", rows,
                 {"method": "{}", "epoch_s": "{:.1f}", "img_per_s": "{:.0f}", "x_standard": "{:.2f}x",
                  "gflop_per_s": "{:.1f}", "of_peak": "{:.1%}"})
    if json_path:
        write_json(json_path, {"machine": machine(), "device": str(dev), "dataset": dataset, "adversarial_training": rows})
    return 0


def _training_flops_per_image(model_name: str, device: torch.device) -> dict[str, float]:
    """FLOPs per image of a training step's forward + backward (weights' gradients too) and of an attack step's
    forward + input gradient (weights frozen), by torch.utils.flop_counter on a batch of 8."""
    from torch.utils.flop_counter import FlopCounterMode

    from ...attacks import input_gradients_only
    from ...models import create_model
    model = create_model(model_name).to(device)
    x, y = torch.rand(8, 3, 32, 32, device=device), torch.zeros(8, dtype=torch.long, device=device)
    with FlopCounterMode(display=False) as train_step:
        torch.nn.functional.cross_entropy(model(x), y).backward()
    x.requires_grad_()
    with input_gradients_only(model), FlopCounterMode(display=False) as attack_step:
        torch.nn.functional.cross_entropy(model(x), y).backward()
    return {"train": train_step.get_total_flops() / len(x), "attack": attack_step.get_total_flops() / len(x)}
