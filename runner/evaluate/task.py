"""An evaluation task: one checkpoint, one grid, the test images. What a Ray task or the inline
executor runs, as a plain function of a typed `EvalTask`."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ...models import load_checkpoint, load_model
from ...models.external import ExternalModel, load_external
from ..data import load_splits, load_test_split, to_float
from ..device import ieee_fp32, pick_device
from ..provenance import images_digest
from ..spec import DataSpec, EvaluateSpec
from .engine import Engine, Models, run_cells
from .examples import save_examples
from .plan import Cell, ImageSet, image_key, plan_cells


@dataclass(frozen=True)
class EvalTask:
    checkpoint: str
    trial_id: str
    sweep: str
    run_id: str
    model: str
    data: DataSpec
    evaluate: EvaluateSpec
    threads: int | None = None
    examples_path: str | None = None
    training: str = "none"        # the trial's training method (train.adversarial)
    shard: tuple[int, int] | None = None   # [start, stop) of the first n_images this task judges (None: all)
    data_digest: str | None = None         # of the whole image set, computed once by the driver
    model_source: str = "trial"            # trial, or a model robustgrid did not train (file, robustbench, python)
    external: ExternalModel | None = None  # how to load the latter (checkpoint is then unused)
    model_sha256: str | None = None
    grid: EvaluateSpec | None = None       # the whole grid, where `evaluate` is this task's share (the judge's cells)

    @property
    def meta(self) -> dict[str, str]:
        """What every row of this task says about where it came from."""
        return {"sweep": self.sweep, "run_id": self.run_id, "trial_id": self.trial_id, "model": self.model,
                "dataset": self.data.dataset, "training": self.training, "model_source": self.model_source,
                "model_sha256": self.model_sha256}

    def with_grid(self, **updates) -> EvalTask:
        """The same task on part of its grid (e.g. quant=['dynamic_int8'], defenses={...}, device='cpu')."""
        return replace(self, evaluate=self.evaluate.model_copy(update=updates), grid=self.grid or self.evaluate)

    def for_shard(self, start: int, stop: int, data_digest: str) -> EvalTask:
        """The same task on images [start, stop) of its set (examples only where the set starts)."""
        return replace(self, shard=(start, stop), data_digest=data_digest,
                       examples_path=self.examples_path if start == 0 else None)

    def cells_left(self, done: Iterable[tuple], n: int) -> list[Cell]:
        done = set(done)
        return [c for c in plan_cells(self.evaluate) if c.key(self.trial_id, n, self.evaluate.seed) not in done]


def test_images(data: DataSpec, n_images: int | None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    x, y, classes = load_test_split(data)
    if n_images:
        x, y = x[:n_images], y[:n_images]  # the first N test images: the same subset everywhere
    return to_float(x), y, classes


def _calibration_images(data: DataSpec, ev: EvaluateSpec) -> torch.Tensor | None:
    """The first evaluate.calibration_images training images, where a quant mode of the whole grid calibrates on them
    (the judge of an image set may ask a mode this task does not score)."""
    from ...models import quant_mode
    if not any(quant_mode(q).needs_calibration for q in ev.quant):
        return None
    return to_float(load_splits(data).train_x[:ev.calibration_images])


@dataclass(frozen=True)
class _Prepared:
    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    calibration: torch.Tensor | None
    cells: list[Cell]
    shard: tuple[int, int]     # [start, stop) of the image set
    n: int                     # the whole image set's size (a cell's n)
    data_digest: str


def _prepare(task: EvalTask, done: Iterable[tuple]) -> _Prepared:
    """The task's shard of test images (the test split alone is read), calibration images where a mode needs
    them, and the cells still to do."""
    if task.threads:
        torch.set_num_threads(int(task.threads))
    torch.manual_seed(task.evaluate.seed)
    x, y, classes = load_test_split(task.data)
    n = min(task.evaluate.n_images or len(y), len(y))    # the first N test images: the same subset everywhere
    a, b = task.shard or (0, n)
    digest = task.data_digest or images_digest(x[:n], y[:n])
    return _Prepared(to_float(x[a:b]), y[a:b], classes, _calibration_images(task.data, task.grid or task.evaluate),
                     task.cells_left(done, n), (a, b), n, digest)


def _engine(task: EvalTask, ev: EvaluateSpec, p: _Prepared, weights: dict | None = None,
            built: Models | None = None) -> Engine:
    """The engine of the task's checkpoint on image set `p`; `built`: its models from an earlier engine."""
    if built is not None:
        model = None
    elif task.external is not None:
        model = load_external(task.external)
    else:
        model = load_model(weights, task.checkpoint) if weights is not None else load_checkpoint(task.checkpoint)
    return Engine(model, ev, p.images, p.labels, pick_device(ev.device), p.calibration,
                  first_index=p.shard[0], data_digest=p.data_digest, built=built, grid=task.grid or task.evaluate)


def evaluate_checkpoint(task: EvalTask, done: Iterable[tuple] = (),
                        on_rows: Callable[[list[dict]], None] | None = None,
                        progress: Callable[[int], None] | None = None,
                        adversarials: dict | None = None, weights: dict | None = None) -> list[dict]:
    """Evaluate one checkpoint over task.evaluate's grid on the task's shard of images, skipping cells in
    `done`: one shard row per cell (runner/evaluate/shards.py merges a cell's shards).

    adversarials: FP32-made images {image key: uint8} made elsewhere (make_adversarials),
    used instead of making them again. weights: the checkpoint as read_checkpoint returns it (handed
    over by Ray's object store), instead of reading task.checkpoint.
    """
    p = _prepare(task, done)
    if not p.cells:
        return []
    ev = task.evaluate
    where = {"cell_n": p.n, "shard_start": p.shard[0], "shard_stop": p.shard[1]}

    def stamped(rows: list[dict]) -> None:
        for r in rows:
            r.update(where)
        if on_rows:
            on_rows(rows)
    rows, built = [], None
    test_cells = [c for c in p.cells if c.corruption == "none"]
    if test_cells:
        engine = _engine(task, ev, p, weights)
        built = engine.built
        if adversarials:
            engine.import_adversarials(adversarials)
        rows += run_cells(engine, test_cells, task.meta, stamped, progress)
        if task.examples_path and ev.examples and "fp32" in engine.models:
            with ieee_fp32():
                save_examples(engine, ev, p.classes, Path(task.examples_path))
    for (corruption, severity), cells in _by_corruption(p.cells).items():
        # the same images of the set, corrupted: an engine of their own (the clean cells' images are theirs) over
        # the same models, loaded and quantized once per task (not once per corruption and severity)
        corrupted = replace(p, **_corrupted_images(task.data, corruption, severity, p.n, p.shard), cells=cells)
        engine = _engine(task, ev, corrupted, weights, built)
        built = engine.built
        rows += run_cells(engine, cells, task.meta, stamped, progress)
    return rows


def _by_corruption(cells: list[Cell]) -> dict[tuple[str, int], list[Cell]]:
    groups: dict[tuple[str, int], list[Cell]] = {}
    for c in cells:
        if c.corruption != "none":
            groups.setdefault((c.corruption, c.severity), []).append(c)
    return groups


def _corrupted_images(data: DataSpec, corruption: str, severity: int, n: int, shard: tuple[int, int]) -> dict:
    """The first n test images under a CIFAR-10-C corruption: this shard's, and the digest of all n (what the
    cell's rows record as the images they were judged on)."""
    from ..data import resolve_root
    from ..data.cifar10c import load_corrupted
    x, y = load_corrupted(resolve_root(data.root), corruption, severity, n)
    a, b = shard
    return {"images": to_float(x[a:b]), "labels": y[a:b], "data_digest": images_digest(x, y)}


def make_adversarials(task: EvalTask, done: Iterable[tuple] = (), weights: dict | None = None) -> dict[ImageSet, torch.Tensor]:
    """The FP32-made adversarial images {image set: uint8} of the cells still to do, for other
    tasks to share (an attack task on the GPU feeds the int8 CPU tasks and the GPU cells task)."""
    p = _prepare(task, done)
    wanted = {image_key(c) for c in p.cells if image_key(c).source == "fp32"}
    if not wanted:
        return {}
    ev = task.evaluate.model_copy(update={"quant": ["fp32"]})
    engine = _engine(task, ev, p, weights)
    with ieee_fp32():
        return engine.export_adversarials(sorted(wanted, key=lambda k: k.run_order))
