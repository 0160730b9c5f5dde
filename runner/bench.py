"""`robustgrid bench`: the engine against the reference pipeline, and each defense, side by side.

(a) the quickstart grid on the same model and images: the reference pipeline (every cell on
    its own, defenses one image at a time through OpenCV / scikit-image, as the notebooks
    did) vs the engine (image sets and defended sets shared across cells, batched defenses),
    cells per second and whether every cell agrees;
(b) each defense, reference vs batched, on the same images: images per second, max difference;
    and what one adaptive step pays for it (real forward + backward through its declared gradient);
(c) on CUDA, training: the GPU-resident path (with and without torch.compile) against the
    torchvision DataLoader path, images per second and time to the notebook's accuracy.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import torch
from rich.table import Table

from ..defenses import apply_defense, defend_differentiably, defense_names
from ..files import atomic_write
from .console import console
from .device import clock, pick_device
from .evaluate import Engine, plan_cells, reference_rows, run_cells
from .spec import DataSpec, EvaluateSpec
from .train import train

GRIDS = {"quickstart": ("quickstart.yaml", "simple_cnn"), "notebook": ("cifar10_notebook.yaml", "improved_cnn"),
         "adaptive": ("adaptive.yaml", "simple_cnn")}


def _bench_dataset() -> str:
    """CIFAR-10 when it is on disk, else synthetic: a bench never downloads."""
    from .data import cifar10_present, default_data_root
    return "cifar10" if cifar10_present(default_data_root()) else "synthetic"


def _sweep_spec(file: str):
    from .bundled import resolve_sweep
    from .spec import load_spec
    return load_spec(resolve_sweep(file))[0]


# the robust_training sweep's recipe for its FGSM-RS trial (5 epochs of 10k images, AdamW, 8/255)
FGSM_RS_RECIPE = {"epochs": 5, "train_subset": 10000, "optimizer": "adamw", "lr": 0.001, "batch_size": 128,
                  "adversarial": "fgsm_rs", "adv_eps": 8 / 255, "robust_val_images": 200}


def _model_and_images(n: int, quick: bool, model: str = "simple_cnn", device: str = "auto", calibration: int = 0,
                      adversarial: str = "none"):
    """A briefly trained model (adversarial "fgsm_rs": FGSM_RS_RECIPE), n test images (and the first `calibration`
    training images, or None): CIFAR-10 when it is on disk, else synthetic; the data read once. The model is kept
    in $TMPDIR and trained once."""
    from .data import load_splits, to_float
    dataset = _bench_dataset()
    tag = "" if adversarial == "none" else f"-{adversarial}"
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"robustgrid-bench-{dataset}-{model}{tag}"
    cfg = {"model": model, "dataset": dataset, "epochs": 1, "out_dir": str(out), "batch_size": 256, "device": device,
           "train_subset": 5000 if quick else 20000, "synthetic_train": 2000, "synthetic_test": max(n, 500),
           **(FGSM_RS_RECIPE if adversarial == "fgsm_rs" else {})}
    if not (out / "best.pt").exists():
        train(cfg)
    from ..models import load_checkpoint
    splits = load_splits(DataSpec(dataset=dataset, synthetic_train=2000, synthetic_test=max(n, 500)))
    cal = to_float(splits.train_x[:calibration]) if calibration else None
    return load_checkpoint(out / "best.pt"), to_float(splits.test_x[:n]), splits.test_y[:n], dataset, cal


def _grid(name: str, batch_size: int, device: torch.device) -> EvaluateSpec:
    """A sweep file's evaluation grid, batched backend; on CUDA the notebook grid adds bf16."""
    spec = _sweep_spec(GRIDS[name][0])
    quant = list(spec.evaluate.quant)
    if name == "notebook" and device.type == "cuda" and "bf16" not in quant:
        quant.insert(1, "bf16")
    return spec.evaluate.model_copy(update={"defense_backend": "batched", "batch_size": batch_size, "examples": 0,
                                            "quant": quant, "device": device.type})


def bench_pipeline(model, images, labels, device, grid: str = "quickstart", ev: EvaluateSpec | None = None) -> dict:
    """A sweep's grid (or `ev`) through the reference pipeline (every cell on its own, defenses one
    image at a time) and through the engine; both predict in the same batches, so the cells must
    agree exactly. Also: the engine's attack passes (forward + backward of the attacked model, the
    work an image set needs by definition) and their time alone, the floor under the engine's time,
    and so the ceiling of the speedup on this machine."""
    meta = {"sweep": "bench", "run_id": "", "trial_id": "bench", "model": GRIDS[grid][1], "dataset": ""}
    ev = ev or _grid(grid, 1000 if device.type == "cuda" else 500, device)
    cells = plan_cells(ev)
    # cuDNN may pick non-deterministic gradient kernels; both paths must see one gradient. Scoped:
    # the training figures of (c) are measured in the mode sweeps use.
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=False):
        t0 = clock(device)
        ref_rows = reference_rows(model, ev, images, labels, device, meta)
        t_ref = clock(device) - t0
        engine = Engine(model, ev, images, labels, device)
        with _counting_attack_passes(engine) as passes:
            t0 = clock(device)
            rows = run_cells(engine, cells, meta)
            t_engine = clock(device) - t0
        pass_s = sum(n * _seconds_per_pass_image(engine, source, images, labels) for source, n in passes.items())
        flops = sum(n * _flops_per_pass_image(engine, source, images, labels) for source, n in passes.items())

    def cells_of(rs):
        return {(r["quant"], r["attack"], r["attack_params"], r["attack_source"], r["threat"], r["eps"], r["defense"]):
                r["correct"] for r in rs}
    ref, eng = cells_of(ref_rows), cells_of(rows)
    differing = sorted((k, ref.get(k), v) for k, v in eng.items() if ref.get(k) != v)
    # Across devices (reference on the CPU, engine on CUDA) float differences may move a few images:
    # how many, and where, says whether that is all it is.
    moved = max((abs((r if r is not None else 0) - e) for _, r, e in differing), default=0)
    return {"grid": grid, "quant": ev.quant, "images": len(images), "cells": len(cells), "reference_s": t_ref, "engine_s": t_engine,
            "reference_cells_per_s": len(cells) / t_ref, "engine_cells_per_s": len(cells) / t_engine,
            "speedup": t_ref / t_engine, "all_cells_agree": ref == eng, "cells_differing": len(differing),
            "most_images_moved": moved, "differing": [[*k, r, e] for k, r, e in differing[:40]],
            "attack_passes": {s: n // len(images) for s, n in passes.items()}, "attack_pass_s": pass_s,
            "speedup_ceiling": t_ref / pass_s if pass_s else float("inf"),
            "attack_gflop": flops / 1e9, "engine_gflop_per_s": flops / 1e9 / t_engine,
            "pass_gflop_per_s": flops / 1e9 / pass_s if pass_s else 0.0}


@contextlib.contextmanager
def _counting_attack_passes(engine: Engine) -> Iterator[Counter]:
    """Images sent through each attacked model with an input gradient (by source), while the engine runs."""
    passes: Counter = Counter()
    handles = []
    for source in engine.models:
        def count(module, inputs, output, source=source):
            if torch.is_grad_enabled() and inputs[0].requires_grad:
                passes[source] += len(inputs[0])
        handles.append(engine.built.attacker(source).register_forward_hook(count))
    try:
        yield passes
    finally:
        for h in handles:
            h.remove()


def _seconds_per_pass_image(engine: Engine, source: str, images: torch.Tensor, labels: torch.Tensor) -> float:
    """One attack pass (forward + input gradient) per image on `source`'s attacked model, in the
    engine's batches: the fastest of repeats."""
    from ..attacks import input_gradient, input_gradients_only
    from .evaluate.batching import to_model
    dev, n = engine.devices[source], min(len(images), engine.ev.batch_size)
    x, y = to_model(images[:n], dev), labels[:n].to(dev)
    with input_gradients_only(engine.built.attacker(source)) as model:
        input_gradient(model, x, y)                                   # warm-up
        seconds, _ = _best_seconds(lambda: (input_gradient(model, x, y), clock(dev)))
    return seconds / n


def _flops_per_pass_image(engine: Engine, source: str, images: torch.Tensor, labels: torch.Tensor) -> float:
    """FLOPs of one attack pass per image on `source`'s attacked model (its forward and the backward to the
    input, weights frozen as attacks run them), counted by torch.utils.flop_counter on one engine batch."""
    from torch.utils.flop_counter import FlopCounterMode

    from ..attacks import input_gradients_only
    from .evaluate.batching import to_model
    dev, n = engine.devices[source], min(len(images), engine.ev.batch_size)
    x, y = to_model(images[:n], dev).requires_grad_(), labels[:n].to(dev)
    # backward() rather than input_gradient's autograd.grad, which the counter's module hooks do not support
    with input_gradients_only(engine.built.attacker(source)) as model, FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(model(x).float(), y).backward()
    return counter.get_total_flops() / n


def matmul_peak_gflops(device: torch.device, n: int = 2048) -> float:
    """This machine's dense fp32 matmul rate (GFLOP/s, the fastest of repeats of an n x n x n product with
    torch's threads): the roof the attack passes' achieved rate is read against."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    torch.mm(a, b)
    clock(device)
    seconds, _ = _best_seconds(lambda: (torch.mm(a, b), clock(device)), min_total=1.0)
    return 2 * n ** 3 / seconds / 1e9


def _best_seconds(fn, min_total: float = 0.3, max_reps: int = 20) -> tuple[float, object]:
    """Fastest of repeated runs (at least 3, or until min_total seconds): a 15 ms run is noise otherwise."""
    best, total, reps, out = float("inf"), 0.0, 0, None
    while reps < 3 or (total < min_total and reps < max_reps):
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
        best, total, reps = min(best, dt), total + dt, reps + 1
    return best, out


def bench_defenses(images: torch.Tensor, device: torch.device) -> list[dict]:
    rows = []
    x = images.to(device)
    for name in defense_names():
        t_ref, ref = _best_seconds(lambda name=name: apply_defense(name, images, backend="reference"))

        t_fast, (fast, _) = _best_seconds(lambda name=name: (apply_defense(name, x, backend="batched"), clock(device)))
        t_adaptive, _ = _best_seconds(lambda name=name: _through_defense(name, x))
        rows.append({"defense": name, "images": len(images), "reference_img_per_s": len(images) / t_ref,
                     "batched_img_per_s": len(images) / t_fast, "speedup": t_ref / t_fast,
                     "max_abs_diff": (fast.cpu().double() - ref.double()).abs().max().item(),
                     "adaptive_img_per_s": len(images) / t_adaptive})
    return rows


def _through_defense(name: str, images: torch.Tensor) -> torch.Tensor:
    """What an adaptive attacker pays per step for the defense: the real defense forward (batched)
    and the backward through its declared gradient (BPDA stand-in, or exact)."""
    x = images.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(defend_differentiably(name, x).sum(), x)
    clock(grad.device)
    return grad


def bench_quant_modes(model, images: torch.Tensor, labels: torch.Tensor, calibration: torch.Tensor,
                      device: torch.device) -> list[dict]:
    """(d) Each quant mode's inference: images/s (batches of 500, fastest of repeats, after a warm-up
    that includes int8_static's compilation), accuracy, bytes shipped and its int8 share."""
    from ..models import QUANT, int8_share, quant_mode, quantize, shipped_bytes
    from .evaluate.batching import predict
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
        seconds, preds = _best_seconds(lambda: predict(q, images, dev, 500), min_total=2.0, max_reps=5)
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
    from ..attacks.fgsm import fgsm
    from ..models import fake_quant_twin
    from ..pixels import from_levels, to_levels
    from .evaluate.batching import predict
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


def bench_training(device: torch.device, quick: bool, dataset: str | None = None, train_subset: int | None = None,
                   target: float = 0.867, variants: tuple[str, ...] | None = None) -> list[dict]:
    """(c) Training input paths side by side on the notebook's recipe (ImprovedCNN, AdamW, bf16 on CUDA):
    the GPU-resident tensor path (the split on the device as uint8, crop/flip there), the same under
    torch.compile, and the torchvision DataLoader path. Images per second count the epochs after
    the first (compilation and cuDNN autotuning fall in the first); time to target is the training
    seconds until validation accuracy first reaches `target`."""
    import tempfile

    recipe = _sweep_spec("cifar10_notebook.yaml").trial_configs()[0]
    dataset = dataset or _bench_dataset()
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


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {gpu}, torch {torch.__version__}"


def run_quant_bench(json_path: str | None = None, device: str = "auto", images: int | None = None,
                    model_name: str = "simple_cnn") -> int:
    """(d) alone: every quant mode's speed, accuracy and size on this machine."""
    dev = pick_device(device)
    model, x, y, dataset, calibration = _model_and_images(images or 2000, False, model_name, dev.type, calibration=1000)
    console.print(f"bench on {machine()}; {model_name}, {dataset}, {len(x)} test images")
    with torch.no_grad():
        rows = bench_quant_modes(model.eval(), x, y, calibration, dev)
    _print_table(f"(d) quant modes: inference ({model_name}, batches of 500)", rows,
                 {"mode": "{}", "device": "{}", "img_per_s": "{:.0f}", "accuracy": "{:.4f}", "mb": "{:.2f}",
                  "int8_share": "{:.2%}", "convert_s": "{:.1f}", "twin_agrees_clean": "{:.4f}",
                  "twin_agrees_fgsm": "{:.4f}", "fgsm_accuracy_real": "{:.4f}", "fgsm_accuracy_twin": "{:.4f}"})
    if json_path:
        _write_json(json_path, {"machine": machine(), "device": str(dev), "dataset": dataset, "quant_modes": rows})
    return 0


def run_bench(quick: bool = False, json_path: str | None = None, device: str = "auto", grid: str = "quickstart",
              images: int | None = None) -> int:
    dev = pick_device(device)
    n = images or (200 if quick else 1000)
    model, images, labels, dataset, _ = _model_and_images(n, quick, GRIDS[grid][1], dev.type)
    console.print(f"bench on {machine()}; {dataset}, {len(images)} test images, device {dev}")
    defenses = bench_defenses(images, dev)
    _print_table(f"(b) defenses: reference (per image, OpenCV/skimage) vs batched ({dev})", defenses,
                 {"defense": "{}", "reference_img_per_s": "{:.0f}", "batched_img_per_s": "{:.0f}",
                  "speedup": "{:.1f}x", "max_abs_diff": "{:.1e}", "adaptive_img_per_s": "{:.0f}"})
    pipe = bench_pipeline(model, images, labels, dev, grid)
    _print_table(f"(a) {grid} grid ({', '.join(pipe['quant'])}): reference pipeline vs engine", [pipe],
                 {"cells": "{}", "images": "{}", "reference_s": "{:.1f}", "engine_s": "{:.1f}",
                  "reference_cells_per_s": "{:.2f}", "engine_cells_per_s": "{:.2f}", "speedup": "{:.1f}x",
                  "all_cells_agree": "{}", "cells_differing": "{}", "most_images_moved": "{}", "attack_pass_s": "{:.1f}", "speedup_ceiling": "{:.1f}x"})
    console.print(f"attack passes per image: {pipe['attack_passes']} (forward + input gradient of the attacked "
                  f"model; the engine makes each once) take {pipe['attack_pass_s']:.1f} s alone: no engine beats "
                  f"{pipe['speedup_ceiling']:.1f}x the reference on this machine without making them cheaper")
    peak = matmul_peak_gflops(dev)
    pipe["matmul_peak_gflop_per_s"] = peak
    console.print(f"roofline: the attack passes are {pipe['attack_gflop']:.1f} GFLOP (torch.utils.flop_counter); alone "
                  f"they run at {pipe['pass_gflop_per_s']:.1f} GFLOP/s, the engine as a whole at "
                  f"{pipe['engine_gflop_per_s']:.1f} GFLOP/s, against a dense fp32 matmul peak of {peak:.0f} GFLOP/s "
                  f"here ({pipe['pass_gflop_per_s'] / peak:.1%} and {pipe['engine_gflop_per_s'] / peak:.1%} of it)")
    training = None
    if dev.type == "cuda":
        training = bench_training(dev, quick)
        _print_table("(c) training input paths (notebook recipe)", training,
                     {"path": "{}", "epochs": "{}", "img_per_s": "{:.0f}", "first_epoch_s": "{:.1f}",
                      "train_seconds": "{:.1f}", "test_accuracy": "{:.4f}", "seconds_to_target": "{}"})
    else:
        console.print("(c) training input paths: skipped, it compares GPU-resident training with a DataLoader "
                      "feeding a GPU and needs CUDA")
    if json_path:
        _write_json(json_path, {"machine": machine(), "device": str(dev), "dataset": dataset, "defenses": defenses,
                                "pipeline": pipe, "training": training})
    return 0


def run_adversarial_training_bench(json_path: str | None = None, device: str = "auto", images: int | None = None,
                                   model_name: str = "simple_cnn") -> int:
    """(f) what adversarial training costs: one epoch of each method on the same images and model, seconds per
    epoch and the multiple of a standard epoch (FGSM-RS should cost about two: one more forward and backward)."""
    import tempfile
    dev = pick_device(device)
    dataset = _bench_dataset()
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
    _print_table(f"(f) adversarial training: one epoch of {n} images ({model_name}, batch 128, {dev}; roofline: "
                 f"the epoch's FLOPs by torch.utils.flop_counter over its seconds, dense fp32 matmul peak "
                 f"{peak:.0f} GFLOP/s here)", rows,
                 {"method": "{}", "epoch_s": "{:.1f}", "img_per_s": "{:.0f}", "x_standard": "{:.2f}x",
                  "gflop_per_s": "{:.1f}", "of_peak": "{:.1%}"})
    if json_path:
        _write_json(json_path, {"machine": machine(), "device": str(dev), "dataset": dataset, "adversarial_training": rows})
    return 0


def _training_flops_per_image(model_name: str, device: torch.device) -> dict[str, float]:
    """FLOPs per image of a training step's forward + backward (weights' gradients too) and of an attack step's
    forward + input gradient (weights frozen), by torch.utils.flop_counter on a batch of 8."""
    from torch.utils.flop_counter import FlopCounterMode

    from ..attacks import input_gradients_only
    from ..models import create_model
    model = create_model(model_name).to(device)
    x, y = torch.rand(8, 3, 32, 32, device=device), torch.zeros(8, dtype=torch.long, device=device)
    with FlopCounterMode(display=False) as train_step:
        torch.nn.functional.cross_entropy(model(x), y).backward()
    x.requires_grad_()
    with input_gradients_only(model), FlopCounterMode(display=False) as attack_step:
        torch.nn.functional.cross_entropy(model(x), y).backward()
    return {"train": train_step.get_total_flops() / len(x), "attack": attack_step.get_total_flops() / len(x)}


def run_autoattack_bench(json_path: str | None = None, device: str = "auto", images: int | None = None) -> int:
    """`bench --grid autoattack`: our AutoAttack against the authors' code and torchattacks', on a standard and an
    adversarially trained model, L-inf and L2 (runner/bench_autoattack.py)."""
    from .bench_autoattack import CASES, bench_case
    dev = pick_device(device)
    shards = 1 if dev.type == "cuda" else min(os.cpu_count() or 1, 8)
    rows, roofs = [], []
    for kind in dict.fromkeys(k for k, _, _ in CASES):
        model, x, y, dataset, _ = _model_and_images(images or 100, False, "simple_cnn", dev.type,
                                                     adversarial="none" if kind == "standard" else kind)
        console.print(f"bench on {machine()}; simple_cnn trained {kind}, {dataset}, {len(x)} test images, device {dev}")
        for _, norm, eps in (c for c in CASES if c[0] == kind):
            case_rows, roof = bench_case(model, x, y, dev, norm, eps, shards)
            rows += [{"model": kind, **r} for r in case_rows]
            roofs.append({"model": kind, **roof})
    _print_table("(e) AutoAttack standard: robustgrid vs the authors' code and torchattacks, the same images (x ours: "
                 "seconds over ours in one process; differ: verdicts not ours)", rows,
                 {"model": "{}", "norm": "{}", "eps": "{:.4g}", "implementation": "{}", "robust": "{}", "differ": "{}",
                  "seconds": "{:.1f}", "x_ours": "{:.2f}", "s_per_robust_image": "{:.2f}"})
    _print_table("(e) seconds per component", [r for r in rows if r["apgd-t_s"] is not None],
                 {"model": "{}", "norm": "{}", "eps": "{:.4g}", "implementation": "{}", "apgd-ce_s": "{:.1f}",
                  "apgd-t_s": "{:.1f}", "fab-t_s": "{:.1f}", "square_s": "{:.1f}"})
    peak = matmul_peak_gflops(dev)
    for r in roofs:
        r["matmul_peak_gflop_per_s"], r["of_peak"] = peak, r["gflop_per_s"] / peak
        console.print(f"roofline ({r['model']}, {r['norm']} {r['eps']:.4g}): ours passed {r['gradient_images']} images "
                      f"with an input gradient and {r['forward_images']} forward only, {r['gflop']:.1f} GFLOP "
                      f"(torch.utils.flop_counter), {r['gflop_per_s']:.1f} GFLOP/s against a dense fp32 matmul peak of "
                      f"{peak:.0f} GFLOP/s here ({r['of_peak']:.1%} of it)")
    if json_path:
        _write_json(json_path, {"machine": machine(), "device": str(dev), "autoattack": rows, "roofline": roofs})
    return 0


def _write_json(path: str, data: dict) -> None:
    with atomic_write(path, "w") as f:
        json.dump(data, f, indent=2)


def _print_table(title: str, rows: list[dict], columns: dict[str, str]) -> None:
    """The bench's tables as robustgrid's views: they fit the terminal without cutting a figure."""
    from .results import View, render
    cells = [["-" if r.get(c) is None else fmt.format(r[c]) for c, fmt in columns.items()] for r in rows]
    render([View(title, [c.replace("_", " ") for c in columns], cells)], "rich", console)


def bench_ray_overhead(json_path: str | None = None, epochs: int = 3, train_subset: int = 24000) -> int:
    """A 4-trial sweep through Ray on this machine: how much wall time is spent outside trials and
    evaluation? Ideal = busy seconds / concurrent slots; overhead = wall - ideal."""
    import tempfile

    import ray

    from .execute import Sweep, evaluate_ray, init_ray, train_ray
    from .spec import validate
    dataset = _bench_dataset()
    raw = {"name": "overhead", "data": {"dataset": dataset, "train_subset": train_subset, "synthetic_train": 20000},
           "train": {"model": "simple_cnn", "lr": {"grid_search": [0.001, 0.0015, 0.002, 0.003]}, "epochs": epochs},
           "resources": {"cpus_per_trial": 1, "eval_cpus": 1},
           "evaluate": {"n_images": 500, "eps": [0, "8/255"], "defenses": ["none", "jpeg", "median"], "examples": 0}}
    out = Path(tempfile.mkdtemp(prefix="robustgrid-overhead-"))
    sweep = Sweep(validate(raw), raw, out)
    sweep.write_spec()
    t0 = time.perf_counter()
    init_ray(None)
    t_init = time.perf_counter() - t0
    slots = int(ray.cluster_resources().get("CPU", 1))
    t1 = time.perf_counter()
    train_ray(sweep, resume=False)
    t_train = time.perf_counter() - t1
    t2 = time.perf_counter()
    evaluate_ray(sweep)
    t_eval = time.perf_counter() - t2
    wall = time.perf_counter() - t0
    trials, ev = sweep.store.read("trials"), sweep.store.read_eval()
    busy_train, busy_eval = float(trials["seconds"].sum()), float(ev["seconds"].sum())
    ideal = busy_train / min(slots, len(trials)) + busy_eval / min(slots, 2 * len(trials))
    result = {"machine": machine(), "dataset": dataset, "trials": len(trials), "slots": slots,
              "mean_trial_s": busy_train / len(trials), "ray_init_s": t_init, "train_phase_s": t_train,
              "eval_phase_s": t_eval, "wall_s": wall, "busy_train_s": busy_train, "busy_eval_s": busy_eval,
              "ideal_s": ideal, "overhead_fraction": (wall - ideal) / wall}
    t = Table(title="Ray overhead: 4-trial sweep")
    for k in ("trials", "slots", "mean_trial_s", "ray_init_s", "train_phase_s", "eval_phase_s", "wall_s", "ideal_s", "overhead_fraction"):
        t.add_row(k, f"{result[k]:.3f}" if isinstance(result[k], float) else str(result[k]))
    console.print(t)
    if json_path:
        _write_json(json_path, result)
    return 0
