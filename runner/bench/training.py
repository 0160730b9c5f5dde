"""(c) On CUDA, training input paths: the GPU-resident path (with and without torch.compile) against the
torchvision DataLoader path, images per second and time to the notebook's accuracy."""
from __future__ import annotations

import os

import torch

from ..train import train
from .common import (
    bench_dataset,
    sweep_spec,
)


def bench_training(device: torch.device, quick: bool, dataset: str | None = None, train_subset: int | None = None,
                   target: float = 0.867, variants: tuple[str, ...] | None = None) -> list[dict]:
    """(c) Training input paths side by side on the notebook's recipe (ImprovedCNN, AdamW, bf16 on CUDA):
    the GPU-resident tensor path (the split on the device as uint8, crop/flip there), the same under
    torch.compile, and the torchvision DataLoader path. Images per second count the epochs after
    the first (compilation and cuDNN autotuning fall in the first); time to target is the training
    seconds until validation accuracy first reaches `target`."""
    import tempfile

    recipe = sweep_spec("cifar10_notebook.yaml").trial_configs()[0]
    dataset = dataset or bench_dataset()
    full_epochs = 2 if quick else recipe["epochs"]
    paths = [("gpu-resident", {"loader": "tensor"}, full_epochs),
             ("gpu-resident + compile", {"loader": "tensor", "compile": True}, 2 if quick else 3),
             ("dataloader", {"loader": "dataloader", "loader_workers": min(8, os.cpu_count() or 1)}, 2 if quick else 3)]
    variants = [v for v in paths if variants is None or v[0] in variants]
    rows = []
    for name, overrides, epochs in variants:
        with tempfile.TemporaryDirectory(prefix="robustgrid-bench-train-") as out:
            cfg = {**recipe, **overrides, "epochs": epochs, "dataset": dataset, "device": device.type, "out_dir": out,
                   "early_stopping_patience": None, "train_subset": train_subset}
            result = train(cfg)
        hist = result["history"]
        n_train = result["train_images"]
        steady = [h["train_seconds"] for h in hist[1:]] or [hist[0]["train_seconds"]]
        elapsed, to_target = 0.0, None
        for h in hist:
            elapsed += h["train_seconds"]
            if to_target is None and h["val_accuracy"] >= target:
                to_target = elapsed
        rows.append({"path": name, "epochs": len(hist), "train_images": n_train,
                     "img_per_s": n_train * len(steady) / sum(steady),
                     "first_epoch_s": hist[0]["train_seconds"], "train_seconds": elapsed,
                     "best_val_accuracy": result["best_val_accuracy"], "test_accuracy": result["test_accuracy"],
                     "seconds_to_target": to_target, "target": target})
    return rows
