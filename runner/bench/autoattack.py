"""`robustgrid bench --grid autoattack`: our AutoAttack against the authors' code and torchattacks', where every
component works.

AutoAttack's cost is spent on the images that stay robust: each pays APGD-T's 9 x 100 steps, FAB-T's 9 x 100
and Square's 5000 queries. So the cases (CASES) are ones where many do: a standard model at a small eps, and an
adversarially trained one (FGSM-RS at 8/255, the robust_training recipe) at RobustBench's radii, L-inf and L2.
Every implementation attacks the same images of the same model, and every verdict is judged alike (the image
delivered on the 8-bit grid, the undefended fp32 model).

Per implementation: seconds in all, per component (ours: timed around each; the authors': their log's
cumulative times; torchattacks: its components chained as the authors chain them, each timed), per robust
image, and how many verdicts differ from ours. Ours runs twice: in this process, with torch's threads over the
cores as the others run; and as a sweep runs it on a CPU, its images in one shard per core, each shard a
process of one thread (the eval tasks' way; starting the processes is in its seconds).

The roofline line: the model passes our run made (forward only, and forward + input gradient, counted by a
hook), times their FLOPs per image (torch.utils.flop_counter), over our seconds, beside the machine's measured
dense-matmul peak.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Iterator

import torch
from torch import nn

from ..console import console
from ..device import clock, pick_device
from ..evaluate import Engine, plan_cells, run_cells
from ..spec import EvaluateSpec
from .common import machine, matmul_peak_gflops, model_and_images, print_table, write_json

# (model, norm, eps): the standard model at radii where images stay robust, the adversarially trained one at
# RobustBench's CIFAR-10 radii
CASES = (("standard", "linf", 1 / 255), ("standard", "l2", 0.1), ("fgsm_rs", "linf", 8 / 255), ("fgsm_rs", "l2", 0.5))
COMPONENTS = ("apgd-ce", "apgd-t", "fab-t", "square")
META = {"sweep": "bench", "run_id": "", "trial_id": "bench", "model": "simple_cnn", "dataset": ""}


def _spec(norm: str, eps: float, device: str) -> EvaluateSpec:
    return EvaluateSpec.model_validate({"attacks": [{"autoattack": {"norm": norm, "eps": [eps]}}], "sources": ["self"],
                                        "quant": ["fp32"], "defenses": ["none"], "batch_size": 500, "examples": 0,
                                        "device": device})


def _robust_mask(row: dict) -> torch.Tensor:
    from ..evaluate.rows import unpack_mask
    return torch.from_numpy(unpack_mask(row["correct_mask"], row["n"]))


@contextlib.contextmanager
def _timed_components() -> Iterator[Counter]:
    """Seconds spent in each AutoAttack component while ours runs (every component goes through autoattack._run)."""
    from ...attacks import autoattack as aa
    seconds: Counter = Counter()
    run = aa._run

    def timed(c, *args, **kwargs):
        t0 = time.perf_counter()
        out = run(c, *args, **kwargs)
        seconds[c["name"]] += time.perf_counter() - t0
        return out
    aa._run = timed
    try:
        yield seconds
    finally:
        aa._run = run


@contextlib.contextmanager
def _counting_passes(model: nn.Module) -> Iterator[Counter]:
    """Images through the model, forward only ("forward") and with an input gradient ("gradient")."""
    passes: Counter = Counter()

    def count(module, inputs, output):
        with_grad = torch.is_grad_enabled() and inputs[0].requires_grad
        passes["gradient" if with_grad else "forward"] += len(inputs[0])
    handle = model.register_forward_hook(count)
    try:
        yield passes
    finally:
        handle.remove()


def flops_per_image(model: nn.Module, images: torch.Tensor) -> dict[str, float]:
    """FLOPs of one image's forward, and of its forward + input gradient (weights frozen, as attacks run them)."""
    from torch.utils.flop_counter import FlopCounterMode

    from ...attacks import input_gradients_only
    x = images[:8].clone()
    with input_gradients_only(model) as m:
        with FlopCounterMode(display=False) as fwd, torch.no_grad():
            m(x)
        x.requires_grad_()
        with FlopCounterMode(display=False) as both:
            m(x).float().sum().backward()
    return {"forward": fwd.get_total_flops() / len(x), "gradient": both.get_total_flops() / len(x)}


def ours(model, images, labels, device, norm: str, eps: float):
    """Our AutoAttack in this process: (robust mask, seconds, seconds per component, broken_by, passes)."""
    ev = _spec(norm, eps, device.type)
    cells = [c for c in plan_cells(ev) if c.eps > 0]
    with _timed_components() as parts, _counting_passes(model) as passes:
        t0 = clock(device)
        row = run_cells(Engine(model, ev, images, labels, device), cells, META)[0]
        seconds = clock(device) - t0
    return _robust_mask(row), seconds, dict(parts), row["broken_by"], passes


def _shard(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, first_index: int, norm: str,
           eps: float) -> torch.Tensor:
    """One shard's AutoAttack cell in a process of one thread, as an eval task runs it."""
    torch.set_num_threads(1)
    ev = _spec(norm, eps, "cpu")
    cells = [c for c in plan_cells(ev) if c.eps > 0]
    engine = Engine(model, ev, images, labels, torch.device("cpu"), first_index=first_index)
    return _robust_mask(run_cells(engine, cells, META)[0])


def ours_sharded(model, images, labels, norm: str, eps: float, shards: int) -> tuple[torch.Tensor, float]:
    """Our AutoAttack with the images in `shards` contiguous shards, one process each: (robust mask, wall seconds,
    the processes' start included)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    bounds = [(len(images) * k // shards, len(images) * (k + 1) // shards) for k in range(shards)]
    model = model.cpu()
    t0 = time.perf_counter()
    with ProcessPoolExecutor(shards, mp_context=mp.get_context("spawn")) as pool:
        parts = [pool.submit(_shard, model, images[a:b], labels[a:b], a, norm, eps) for a, b in bounds]
        robust = torch.cat([p.result(timeout=3600) for p in parts])
    return robust, time.perf_counter() - t0


def torchattacks_chain(model, images, labels, device, norm: str, eps: float):
    """torchattacks' components with the authors' settings passed explicitly (its AutoAttack passes no `steps`:
    10 iterations, not 100), each on the images every earlier one left right: (images, seconds per component)."""
    import torchattacks
    ta_norm = {"linf": "Linf", "l2": "L2"}[norm]
    chain = [("apgd-ce", torchattacks.APGD(model, norm=ta_norm, eps=eps, steps=100, n_restarts=1, loss="ce", seed=0)),
             ("apgd-t", torchattacks.APGDT(model, norm=ta_norm, eps=eps, steps=100, n_restarts=1, n_classes=10, seed=0)),
             ("fab-t", torchattacks.FAB(model, norm=ta_norm, eps=eps, steps=100, n_restarts=1, multi_targeted=True,
                                        n_classes=10, seed=0)),
             ("square", torchattacks.Square(model, norm=ta_norm, eps=eps, n_queries=5000, n_restarts=1, p_init=0.8,
                                            resc_schedule=False, seed=0))]
    x, y = images.to(device), labels.to(device)
    adv, seconds = x.clone(), {}
    with torch.no_grad():
        left = model(x).argmax(1) == y
    for name, attack in chain:
        t0 = clock(device)
        todo = left.nonzero().squeeze(1)
        if len(todo):
            found = attack(x[todo], y[todo])
            with torch.no_grad():
                fooled = model(found).argmax(1) != y[todo]
            adv[todo[fooled]], left[todo[fooled]] = found[fooled], False
        seconds[name] = clock(device) - t0
    return adv, seconds


class _Log(logging.Handler):
    """The authors' log lines 'robust accuracy after X: ... (total time T s)': cumulative seconds per component."""
    AFTER = re.compile(r"robust accuracy after ([A-Z-]+): .*\(total time ([0-9.]+) s\)")

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.total: dict[str, float] = {}

    def emit(self, record):
        m = self.AFTER.search(record.getMessage())
        if m:
            self.total[m.group(1).lower()] = float(m.group(2))

    def per_component(self) -> dict[str, float]:
        out, before = {}, 0.0
        for name, total in self.total.items():
            out[name], before = total - before, total
        return out


def authors(model, images, labels, device, norm: str, eps: float):
    """The authors' own AutoAttack (`pyautoattack`): (images, seconds per component), or None where not installed."""
    try:
        from pyautoattack import AutoAttack
    except ImportError:
        return None
    aa = AutoAttack(model, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps, version="standard", seed=0, device=device)
    log, logger = _Log(), logging.getLogger("auto-attack")
    level, propagate = logger.level, logger.propagate
    logger.addHandler(log)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        # their code views gradients: it takes NCHW-contiguous images (the model stays as it is)
        adv, _ = aa.run_standard_evaluation(images.to(device).contiguous(), labels.to(device), batch_size=500)
    finally:
        logger.removeHandler(log)
        logger.setLevel(level)
        logger.propagate = propagate
    return adv, log.per_component()


def _judge(model, images, labels, adv, device, norm: str, eps: float) -> torch.Tensor:
    """Per image: still right on the image delivered on the 8-bit grid."""
    from ...attacks import deliver
    x, y = images.to(device), labels.to(device)
    with torch.no_grad():
        return (model(deliver(adv.to(device), x, eps, norm)).argmax(1) == y).cpu()


def _in_process(model, images, labels, device, norm: str, eps: float) -> Iterator[tuple]:
    """Each in-process implementation once, in turn: (name, verdicts, seconds, seconds per component, broken_by,
    passes or None)."""
    robust, secs, parts, broken_by, passes = ours(model, images, labels, device, norm, eps)
    yield "robustgrid", robust, secs, parts, broken_by, passes
    t0 = clock(device)
    adv, parts_ta = torchattacks_chain(model, images, labels, device, norm, eps)
    yield "torchattacks", _judge(model, images, labels, adv, device, norm, eps), clock(device) - t0, parts_ta, "-", None
    t0 = clock(device)
    theirs = authors(model, images, labels, device, norm, eps)
    if theirs is not None:
        yield ("pyautoattack (authors)", _judge(model, images, labels, theirs[0], device, norm, eps),
               clock(device) - t0, theirs[1], "-", None)


def bench_case(model, images, labels, device, norm: str, eps: float, shards: int,
               repeats: int = 1) -> tuple[list[dict], dict]:
    """One case, every implementation on the same images: a row each, and the roofline of ours. With repeats > 1
    the in-process implementations run that many rounds in turn (ours, torchattacks', the authors'), and each
    keeps its fastest round (its components' seconds from that round): the machine's noise is one-sided, it
    only slows a run down. Every round must give the same verdicts (they draw nothing from the clock)."""
    from ..evaluate.stats import wilson_interval
    model = model.to(device).eval()
    best: dict[str, tuple] = {}
    for _ in range(repeats):
        for name, mask, seconds, comp, broken, passes in _in_process(model, images, labels, device, norm, eps):
            if name in best and not torch.equal(mask, best[name][0]):
                raise RuntimeError(f"{name}: verdicts differ between rounds")
            if name not in best or seconds < best[name][1]:
                best[name] = (mask, seconds, comp, broken, passes)
    if "pyautoattack (authors)" not in best:
        console.print("pyautoattack is not installed (pip install pyautoattack): the authors' code is left out")
    robust, secs, passes = best["robustgrid"][0], best["robustgrid"][1], best["robustgrid"][4]
    runs = [("robustgrid", *best["robustgrid"][:4])]
    if shards > 1:
        sharded, wall = ours_sharded(model, images, labels, norm, eps, shards)
        model.to(device)
        runs.append((f"robustgrid, {shards} shards", sharded, wall, {}, "-"))
    runs += [(name, *best[name][:4]) for name in best if name != "robustgrid"]
    rows = []
    for impl, mask, seconds, comp, broken in runs:
        c = int(mask.sum())
        lo, hi = wilson_interval(c, len(images))
        rows.append({"implementation": impl, "norm": norm, "eps": eps, "robust": c, "robust_accuracy": c / len(images),
                     "ci_low": lo, "ci_high": hi, "differ": int((mask != robust).sum()), "seconds": seconds,
                     "s_per_robust_image": seconds / max(c, 1), "x_ours": seconds / secs,
                     **{f"{k}_s": comp.get(k) for k in COMPONENTS}, "broken_by": broken})
    flops = flops_per_image(model, images)
    gflop = sum(passes[k] * flops[k] for k in flops) / 1e9
    roof = {"norm": norm, "eps": eps, "forward_images": passes["forward"], "gradient_images": passes["gradient"],
            "gflop": gflop, "gflop_per_s": gflop / secs}
    return rows, roof


def run_autoattack_bench(json_path: str | None = None, device: str = "auto", images: int | None = None,
                         repeats: int = 1) -> int:
    """`bench --grid autoattack`: our AutoAttack against the authors' code and torchattacks', on a standard and an
    adversarially trained model, L-inf and L2 (each in-process implementation its fastest of `repeats` rounds)."""
    dev = pick_device(device)
    shards = 1 if dev.type == "cuda" else min(os.cpu_count() or 1, 8)
    rows, roofs = [], []
    for kind in dict.fromkeys(k for k, _, _ in CASES):
        model, x, y, dataset, _ = model_and_images(images or 100, False, "simple_cnn", dev.type,
                                                     adversarial="none" if kind == "standard" else kind)
        console.print(f"bench on {machine()}; simple_cnn trained {kind}, {dataset}, {len(x)} test images, device {dev}")
        for _, norm, eps in (c for c in CASES if c[0] == kind):
            case_rows, roof = bench_case(model, x, y, dev, norm, eps, shards, repeats)
            rows += [{"model": kind, **r} for r in case_rows]
            roofs.append({"model": kind, **roof})
    print_table("(e) AutoAttack standard: robustgrid vs the authors' code and torchattacks, the same images (x ours: "
                 "seconds over ours in one process; differ: verdicts not ours)", rows,
                 {"model": "{}", "norm": "{}", "eps": "{:.4g}", "implementation": "{}", "robust": "{}", "differ": "{}",
                  "seconds": "{:.1f}", "x_ours": "{:.2f}", "s_per_robust_image": "{:.2f}"})
    print_table("(e) seconds per component", [r for r in rows if r["apgd-t_s"] is not None],
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
        write_json(json_path, {"machine": machine(), "device": str(dev), "repeats": repeats, "autoattack": rows,
                               "roofline": roofs})
    return 0
