"""`robustgrid bench`: a file per benchmark.

pipeline (a): a sweep's grid through the reference pipeline and through the engine, with (b) defenses, reference
vs batched, and (c) training input paths on CUDA; quant (d): every quant mode's inference; autoattack (e): ours
against the authors' code and torchattacks'; adversarial_training (f): an epoch of each method; ray_overhead: wall
time outside trials and evaluation. common: what they share (model and images, timing, roofline peak, tables).
"""
from .adversarial_training import run_adversarial_training_bench
from .autoattack import run_autoattack_bench
from .pipeline import run_bench
from .quant import run_quant_bench
from .ray_overhead import bench_ray_overhead

__all__ = ["bench_ray_overhead", "run_adversarial_training_bench", "run_autoattack_bench", "run_bench", "run_quant_bench"]
