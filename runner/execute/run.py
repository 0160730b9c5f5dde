"""One run flow, for `robustgrid run` and `robustgrid.run(...)` alike: the output folder checked, the
checkpoints of finished trials readable, the executor's resources checked, then under the folder's lock
the damaged parts set aside, the sweep recorded, the trials trained and the cells evaluated.

Nothing is written before every check has passed; a folder another run holds is refused, naming it."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ..results.location import refresh
from ..spec import SweepSpec
from .lock import FolderLock, check_out
from .sweep import Sweep, resolve_out


def run_sweep(spec: SweepSpec, raw: dict, out: str | os.PathLike | None = None, executor: str = "ray",
              address: str | None = None, resume: bool = False,
              on_start: Callable[[Sweep], None] | None = None,
              on_done: Callable[[Path], None] | None = None, modules: list = ()) -> Sweep:
    """Run a validated sweep into `out`; on_start(sweep) once the lock is held, on_done(folder) before it is
    released (the views are drawn from a folder no other run is writing). modules: nn.Modules handed to the
    API, evaluated beside the sweep's trials and `models:`."""
    sweep = Sweep(spec, raw, resolve_out(spec, out), evaluate_only=bool(modules) and "train" not in raw)
    check_out(sweep.out)
    if spec.data.dataset == "imagefolder":
        from ..data import verify_imagefolder
        verify_imagefolder(spec.data.path)
    check_checkpoints_readable(sweep)
    from .external import check_external_models, record_external_models
    outside = check_external_models(sweep, list(modules))
    if executor == "inline":
        from .inline import check_inline
        check_inline(sweep)
    else:                              # the cluster is checked before a file is written
        from .ray_setup import check_cluster, init_ray
        init_ray(address)
        check_cluster(sweep, address)
    with FolderLock(sweep.out):
        refresh(sweep.out)
        sweep.store.set_aside_damaged()
        sweep.write_spec()
        record_external_models(sweep, outside)
        if on_start:
            on_start(sweep)
        if executor == "inline":
            from .inline import run_inline
            run_inline(sweep, resume=True)
        else:
            from .ray_run import run_ray
            run_ray(sweep, address=address, resume=resume)
        if on_done:
            on_done(sweep.out)
    return sweep


def check_checkpoints_readable(sweep: Sweep) -> None:
    """On a rerun, a trial already marked done must have a readable checkpoint."""
    from ...models import read_checkpoint
    for row in sweep.finished_trials().values():
        read_checkpoint(row["checkpoint"])
