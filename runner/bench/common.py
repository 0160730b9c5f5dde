"""What every benchmark shares: the machine it names, its model and images (trained once, kept in $TMPDIR), the
best of repeated timings, the matmul peak a roofline reads against, its tables and JSON."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from ...files import atomic_write
from ..console import console
from ..device import clock
from ..spec import DataSpec
from ..train import train


def bench_dataset() -> str:
    """CIFAR-10 when it is on disk, else synthetic: a bench never downloads."""
    from ..data import cifar10_present, default_data_root
    return "cifar10" if cifar10_present(default_data_root()) else "synthetic"


def sweep_spec(file: str):
    from ..bundled import resolve_sweep
    from ..spec import load_spec
    return load_spec(resolve_sweep(file))[0]


# the robust_training sweep's recipe for its FGSM-RS trial (5 epochs of 10k images, AdamW, 8/255)
FGSM_RS_RECIPE = {"epochs": 5, "train_subset": 10000, "optimizer": "adamw", "lr": 0.001, "batch_size": 128,
                  "adversarial": "fgsm_rs", "adv_eps": 8 / 255, "robust_val_images": 200}


def model_and_images(n: int, quick: bool, model: str = "simple_cnn", device: str = "auto", calibration: int = 0,
                      adversarial: str = "none"):
    """A briefly trained model (adversarial "fgsm_rs": FGSM_RS_RECIPE), n test images (and the first `calibration`
    training images, or None): CIFAR-10 when it is on disk, else synthetic; the data read once. The model is kept
    in $TMPDIR and trained once."""
    from ..data import load_splits, to_float
    dataset = bench_dataset()
    tag = "" if adversarial == "none" else f"-{adversarial}"
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"robustgrid-bench-{dataset}-{model}{tag}"
    cfg = {"model": model, "dataset": dataset, "epochs": 1, "out_dir": str(out), "batch_size": 256, "device": device,
           "train_subset": 5000 if quick else 20000, "synthetic_train": 2000, "synthetic_test": max(n, 500),
           **(FGSM_RS_RECIPE if adversarial == "fgsm_rs" else {})}
    if not (out / "best.pt").exists():
        train(cfg)
    from ...models import load_checkpoint
    splits = load_splits(DataSpec(dataset=dataset, synthetic_train=2000, synthetic_test=max(n, 500)))
    cal = to_float(splits.train_x[:calibration]) if calibration else None
    return load_checkpoint(out / "best.pt"), to_float(splits.test_x[:n]), splits.test_y[:n], dataset, cal


def matmul_peak_gflops(device: torch.device, n: int = 2048) -> float:
    """This machine's dense fp32 matmul rate (GFLOP/s, the fastest of repeats of an n x n x n product with
    torch's threads): the roof the attack passes' achieved rate is read against."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    torch.mm(a, b)
    clock(device)
    seconds, _ = best_seconds(lambda: (torch.mm(a, b), clock(device)), min_total=1.0)
    return 2 * n ** 3 / seconds / 1e9


def best_seconds(fn, min_total: float = 0.3, max_reps: int = 20) -> tuple[float, object]:
    """Fastest of repeated runs (at least 3, or until min_total seconds): a 15 ms run is noise otherwise."""
    best, total, reps, out = float("inf"), 0.0, 0, None
    while reps < 3 or (total < min_total and reps < max_reps):
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
        best, total, reps = min(best, dt), total + dt, reps + 1
    return best, out


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {gpu}, torch {torch.__version__}"


def write_json(path: str, data: dict) -> None:
    with atomic_write(path, "w") as f:
        json.dump(data, f, indent=2)


def print_table(title: str, rows: list[dict], columns: dict[str, str]) -> None:
    """The bench's tables as robustgrid's views: they fit the terminal without cutting a figure."""
    from ..results import View, render
    cells = [["-" if r.get(c) is None else fmt.format(r[c]) for c, fmt in columns.items()] for r in rows]
    render([View(title, [c.replace("_", " ") for c in columns], cells)], "rich", console)
