"""An evaluation task: one checkpoint, one grid, the test images. What a Ray task or the inline
executor runs, as a plain function of a typed `EvalTask`."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ...models import load_checkpoint
from ..data import load_splits, to_float
from ..device import ieee_fp32, pick_device
from ..spec import DataSpec, EvaluateSpec
from .engine import Engine, run_cells
from .examples import save_examples
from .plan import Cell, image_key, plan_cells


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

    @property
    def meta(self) -> dict[str, str]:
        """What every row of this task says about where it came from."""
        return {"sweep": self.sweep, "run_id": self.run_id, "trial_id": self.trial_id, "model": self.model,
                "dataset": self.data.dataset, "training": self.training}

    def with_grid(self, **updates) -> EvalTask:
        """The same task on part of its grid (e.g. quant=['dynamic_int8'], defenses={...}, device='cpu')."""
        return replace(self, evaluate=self.evaluate.model_copy(update=updates))

    def cells_left(self, done: Iterable[tuple], n: int) -> list[Cell]:
        done = set(done)
        return [c for c in plan_cells(self.evaluate) if c.key(self.trial_id, n, self.evaluate.seed) not in done]


def test_images(data: DataSpec, n_images: int | None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    splits = load_splits(data)
    return (*_first_test_images(splits, n_images), splits.classes)


def _first_test_images(splits, n_images: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = splits.test_x, splits.test_y
    if n_images:
        x, y = x[:n_images], y[:n_images]  # the first N test images: the same subset everywhere
    return to_float(x), y


def _calibration_images(splits, ev: EvaluateSpec) -> torch.Tensor | None:
    """The first evaluate.calibration_images training images, where a quant mode calibrates on them."""
    from ...models import quant_mode
    if not any(quant_mode(q).needs_calibration for q in ev.quant):
        return None
    return to_float(splits.train_x[:ev.calibration_images])


@dataclass(frozen=True)
class _Prepared:
    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    calibration: torch.Tensor | None
    cells: list[Cell]


def _prepare(task: EvalTask, done: Iterable[tuple]) -> _Prepared:
    """The task's test images, calibration images and cells still to do, the data read once."""
    if task.threads:
        torch.set_num_threads(int(task.threads))
    torch.manual_seed(task.evaluate.seed)
    splits = load_splits(task.data)
    images, labels = _first_test_images(splits, task.evaluate.n_images)
    return _Prepared(images, labels, splits.classes, _calibration_images(splits, task.evaluate),
                     task.cells_left(done, len(images)))


def _engine(task: EvalTask, ev: EvaluateSpec, p: _Prepared) -> Engine:
    return Engine(load_checkpoint(task.checkpoint), ev, p.images, p.labels, pick_device(ev.device), p.calibration)


def evaluate_checkpoint(task: EvalTask, done: Iterable[tuple] = (),
                        on_rows: Callable[[list[dict]], None] | None = None,
                        progress: Callable[[int], None] | None = None,
                        adversarials: dict | None = None) -> list[dict]:
    """Evaluate one checkpoint over task.evaluate's grid, skipping cells in `done`.

    adversarials: FP32-made images {image key: uint8} made elsewhere (make_adversarials),
    used instead of making them again.
    """
    p = _prepare(task, done)
    if not p.cells:
        return []
    ev = task.evaluate
    engine = _engine(task, ev, p)
    if adversarials:
        engine.import_adversarials(adversarials)
    rows = run_cells(engine, p.cells, task.meta, on_rows, progress)
    if task.examples_path and ev.examples and "fp32" in engine.models:
        with ieee_fp32():
            save_examples(engine, ev, p.classes, Path(task.examples_path))
    return rows


def make_adversarials(task: EvalTask, done: Iterable[tuple] = ()) -> dict[tuple, torch.Tensor]:
    """The FP32-made adversarial images {image key: uint8} of the cells still to do, for other
    tasks to share (an attack task on the GPU feeds the int8 CPU tasks and the GPU cells task)."""
    p = _prepare(task, done)
    wanted = {image_key(c) for c in p.cells if image_key(c)[0] == "fp32"}
    if not wanted:
        return {}
    ev = task.evaluate.model_copy(update={"quant": ["fp32"]})
    engine = _engine(task, ev, p)
    with ieee_fp32():
        return engine.export_adversarials(sorted(wanted))
