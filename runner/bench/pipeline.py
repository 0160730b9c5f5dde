"""(a) A sweep's grid through the reference pipeline (every cell on its own, defenses one image at a time through
OpenCV / scikit-image, as the notebooks did) and through the engine (image sets and defended sets shared across
cells, batched defenses): cells per second, whether every cell agrees, and the attack passes' floor and roofline.
`run_bench` prints (b) and (c) beside it."""
from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

import torch

from ..console import console
from ..device import clock, pick_device
from ..evaluate import Engine, plan_cells, reference_rows, run_cells
from ..spec import EvaluateSpec
from .common import (
    best_seconds,
    machine,
    matmul_peak_gflops,
    model_and_images,
    print_table,
    sweep_spec,
    write_json,
)
from .defenses import bench_defenses
from .training import bench_training

GRIDS = {"quickstart": ("quickstart.yaml", "simple_cnn"), "notebook": ("cifar10_notebook.yaml", "improved_cnn"),
         "adaptive": ("adaptive.yaml", "simple_cnn")}


def _grid(name: str, batch_size: int, device: torch.device) -> EvaluateSpec:
    """A sweep file's evaluation grid, batched backend; on CUDA the notebook grid adds bf16."""
    spec = sweep_spec(GRIDS[name][0])
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
    from ...attacks import input_gradient, input_gradients_only
    from ..evaluate.batching import to_model
    dev, n = engine.devices[source], min(len(images), engine.ev.batch_size)
    x, y = to_model(images[:n], dev), labels[:n].to(dev)
    with input_gradients_only(engine.built.attacker(source)) as model:
        input_gradient(model, x, y)                                   # warm-up
        seconds, _ = best_seconds(lambda: (input_gradient(model, x, y), clock(dev)))
    return seconds / n


def _flops_per_pass_image(engine: Engine, source: str, images: torch.Tensor, labels: torch.Tensor) -> float:
    """FLOPs of one attack pass per image on `source`'s attacked model (its forward and the backward to the
    input, weights frozen as attacks run them), counted by torch.utils.flop_counter on one engine batch."""
    from torch.utils.flop_counter import FlopCounterMode

    from ...attacks import input_gradients_only
    from ..evaluate.batching import to_model
    dev, n = engine.devices[source], min(len(images), engine.ev.batch_size)
    x, y = to_model(images[:n], dev).requires_grad_(), labels[:n].to(dev)
    # backward() rather than input_gradient's autograd.grad, which the counter's module hooks do not support
    with input_gradients_only(engine.built.attacker(source)) as model, FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(model(x).float(), y).backward()
    return counter.get_total_flops() / n


def run_bench(quick: bool = False, json_path: str | None = None, device: str = "auto", grid: str = "quickstart",
              images: int | None = None) -> int:
    dev = pick_device(device)
    n = images or (200 if quick else 1000)
    model, images, labels, dataset, _ = model_and_images(n, quick, GRIDS[grid][1], dev.type)
    console.print(f"bench on {machine()}; {dataset}, {len(images)} test images, device {dev}")
    defenses = bench_defenses(images, dev)
    print_table(f"(b) defenses: reference (per image, OpenCV/skimage) vs batched ({dev})", defenses,
                 {"defense": "{}", "reference_img_per_s": "{:.0f}", "batched_img_per_s": "{:.0f}",
                  "speedup": "{:.1f}x", "max_abs_diff": "{:.1e}", "adaptive_img_per_s": "{:.0f}"})
    pipe = bench_pipeline(model, images, labels, dev, grid)
    print_table(f"(a) {grid} grid ({', '.join(pipe['quant'])}): reference pipeline vs engine", [pipe],
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
        print_table("(c) training input paths (notebook recipe)", training,
                     {"path": "{}", "epochs": "{}", "img_per_s": "{:.0f}", "first_epoch_s": "{:.1f}",
                      "train_seconds": "{:.1f}", "test_accuracy": "{:.4f}", "seconds_to_target": "{}"})
    else:
        console.print("(c) training input paths: skipped, it compares GPU-resident training with a DataLoader "
                      "feeding a GPU and needs CUDA")
    if json_path:
        write_json(json_path, {"machine": machine(), "device": str(dev), "dataset": dataset, "defenses": defenses,
                                "pipeline": pipe, "training": training})
    return 0
