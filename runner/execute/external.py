"""Models robustgrid did not train (`models:`, `eval --model`, `robustgrid.evaluate(module)`), made rows of
`trials` (status ok, model_source file / robustbench / python) so that evaluation treats them as it treats
checkpoints. Each is loaded and checked against the dataset's classes before anything is written."""
from __future__ import annotations

import dataclasses
import hashlib
import json

from torch import nn

from ...files import atomic_write
from ...models.external import (
    ExternalModel,
    architecture_of,
    check_classifier,
    load_external,
    weights_sha256,
)
from ..console import console
from ..data import load_test_split, to_float
from .sweep import Sweep


@dataclasses.dataclass
class Outside:
    """One checked model: its description, the row it makes, and (API modules) the module to pickle."""
    external: ExternalModel
    row: dict
    module: nn.Module | None = None


def check_external_models(sweep: Sweep, modules: list[nn.Module] = ()) -> list[Outside]:
    """Load every outside model and check it classifies this dataset's classes (ExternalModelError if not)."""
    wanted = [(m.external(), None) for m in sweep.spec.models]
    wanted += [(ExternalModel(spec="", source="python"), module.eval()) for module in modules]
    if not wanted:
        return []
    sweep.fetch_data()
    x, _, classes = load_test_split(sweep.data())
    images = to_float(x[:8])
    out = []
    for ext, module in wanted:
        model = module if module is not None else load_external(ext)
        for warning in check_classifier(ext if module is None else dataclasses.replace(ext, spec=type(module).__name__),
                                        model, images, len(classes)):
            console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
        sha = weights_sha256(ext, model)
        trial_id = "x" + hashlib.sha256(json.dumps([ext.source, sha, ext.mean, ext.std]).encode()).hexdigest()[:10]
        if module is not None:     # pickled into the folder under the lock; stored relative to it
            ext = dataclasses.replace(ext, spec=f"models/{trial_id}.pkl")
        out.append(Outside(ext, _row(sweep, ext, model, sha, trial_id, module), module))
    return out


def record_external_models(sweep: Sweep, outside: list[Outside]) -> None:
    """Under the folder's lock: API modules pickled into models/, every model a row of `trials`."""
    from ..results import TRIAL_KEY
    for o in outside:
        if o.module is not None:
            from ray import cloudpickle  # by value: a class defined in a notebook loads in a Ray worker
            path = sweep.out / o.external.spec
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(path) as f:
                cloudpickle.dump(o.module.cpu(), f)
    if outside:
        sweep.store.upsert("trials", [o.row for o in outside], TRIAL_KEY)


def _row(sweep: Sweep, ext: ExternalModel, model: nn.Module, sha: str, trial_id: str, module) -> dict:
    name = type(module).__name__ if module is not None else ext.name
    return {"sweep": sweep.spec.name, "run_id": sweep.run_id, "trial_id": trial_id, "status": "ok", "model": name,
            "checkpoint": ext.spec if ext.source == "python" else str(ext.checkpoint_file()),
            "dataset": sweep.spec.data.dataset, "model_source": ext.source,
            "model_spec": json.dumps(dataclasses.asdict(ext)), "model_sha256": sha,
            "architecture": architecture_of(ext, model), "n_params": sum(p.numel() for p in model.parameters())}
