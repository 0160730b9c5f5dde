"""Results on disk: Parquet tables with explicit schemas, written atomically.

    results/<sweep>/trials.parquet, epochs.parquet, eval/part-*.parquet

`eval` is a dataset of part files: each finished unit of work adds one part (a crash
loses no finished cell), and a cell already present is never computed or written again.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ...files import atomic_write, replace
from ..console import console
from ..evaluate.plan import eps_key

# Provenance (runner/provenance.py): which code and libraries made a row, and which images it saw.
PROVENANCE_FIELDS = [
    ("data_digest", pa.string()), ("code_version", pa.string()), ("git_commit", pa.string()),
    ("git_dirty", pa.bool_()), ("torch_version", pa.string()), ("torchvision_version", pa.string()),
    ("opencv_version", pa.string()), ("skimage_version", pa.string()), ("ray_version", pa.string()),
    ("torchao_version", pa.string()), ("kornia_version", pa.string()),
]

EVAL_SCHEMA = pa.schema([
    ("sweep", pa.string()), ("run_id", pa.string()), ("trial_id", pa.string()), ("model", pa.string()),
    ("training", pa.string()),       # the trial's training method: none, fgsm_rs, pgd, trades (unknown: not ours)
    ("model_source", pa.string()),   # trial (trained here), file (torch.export / TorchScript), robustbench, python
    ("model_sha256", pa.string()),   # of the weights evaluated: the checkpoint or model file, or the module's tensors
    ("dataset", pa.string()), ("quant", pa.string()),
    ("quant_params", pa.string()),   # canonical JSON of what made the quantized model (int8_static: calibration_images)
    ("model_bytes", pa.int64()), ("attack", pa.string()),
    ("attack_params", pa.string()), ("attack_source", pa.string()), ("threat", pa.string()),
    ("eps", pa.float64()), ("defense", pa.string()),
    ("corruption", pa.string()),     # CIFAR-10-C: the corruption of the test images (none: the test images)
    ("severity", pa.int64()),        # its severity, 1-5 (0 with none)
    ("defense_params", pa.string()), ("n", pa.int64()), ("correct", pa.int64()), ("accuracy", pa.float64()),
    ("ci_low", pa.float64()), ("ci_high", pa.float64()),
    # a randomized defense is scored over defense_draws of the defender's draws: `correct` counts the images
    # right under every draw (and every candidate), accuracy_draw_mean the accuracy averaged over draws
    ("accuracy_draw_mean", pa.float64()), ("defense_draws", pa.int64()),
    ("candidates", pa.int64()),       # images per test image the attack delivered and the scored system judged
    ("delivered_linf", pa.float64()),  # the largest L-infinity distance of a delivered image from its clean one
    ("norm", pa.string()),            # the threat model's norm: linf or l2 (eps is in its units)
    ("delivered_l2", pa.float64()),   # the largest L2 distance of a delivered image from its clean one
    ("broken_by", pa.string()),       # JSON {component: images it broke first} (AutoAttack), else null
    ("attack_success_rate", pa.float64()),
    ("seconds", pa.float64()), ("device", pa.string()), ("precision", pa.string()), ("seed", pa.int64()),
    ("created_at", pa.timestamp("us", tz="UTC")), *PROVENANCE_FIELDS,
    ("correct_mask", pa.binary()),   # which images were right, a bit each (evaluate.rows.unpack_mask)
    ("dead_gradients", pa.int64()),  # images whose input gradient was all zero or NaN (single-step attacks)
    ("shards", pa.string()),         # JSON [{images: [start, stop], node, gpus}]: where the cell's shards ran
])

# A shard's row of a cell (shards/part-*.parquet): the cell's columns over the shard's images, and what the
# merge needs (runner/evaluate/shards.py). A cell reaches eval/ once, when its last shard has landed.
SHARD_SCHEMA = pa.schema([f for f in EVAL_SCHEMA if f.name != "shards"] + [
    ("cell_n", pa.int64()), ("shard_start", pa.int64()), ("shard_stop", pa.int64()),
    ("clean_correct", pa.int64()), ("flipped", pa.int64()), ("node", pa.string()), ("gpu_ids", pa.string()),
])

EPOCH_SCHEMA = pa.schema([
    ("sweep", pa.string()), ("run_id", pa.string()), ("trial_id", pa.string()), ("epoch", pa.int64()),
    ("train_loss", pa.float64()), ("train_accuracy", pa.float64()), ("val_loss", pa.float64()),
    ("val_accuracy", pa.float64()), ("lr", pa.float64()), ("seconds", pa.float64()),
    ("train_seconds", pa.float64()),   # the training steps alone (seconds adds the validation pass)
    # adversarial training: PGD-10 accuracy on the first robust_val_images validation images and on a fixed
    # training batch; catastrophic overfitting: the latter collapsed (Wong et al. 2020)
    ("robust_val_accuracy", pa.float64()), ("robust_train_accuracy", pa.float64()),
    ("catastrophic_overfitting", pa.bool_()),
])

_TRIAL_RESULT_FIELDS = [
    ("sweep", pa.string()), ("run_id", pa.string()), ("trial_id", pa.string()), ("status", pa.string()),
    ("error", pa.string()), ("best_val_accuracy", pa.float64()), ("best_epoch", pa.int64()),
    # with adversarial training best_val_accuracy and best_epoch are chosen by robust validation accuracy
    ("best_robust_val_accuracy", pa.float64()), ("catastrophic_overfitting_epoch", pa.int64()),
    ("test_accuracy", pa.float64()), ("epochs_run", pa.int64()), ("seconds", pa.float64()),
    ("world_size", pa.int64()), ("device", pa.string()), ("node", pa.string()), ("node_ip", pa.string()), ("node_id", pa.string()),
    ("gpu_ids", pa.string()), ("cuda_visible_devices", pa.string()), ("checkpoint", pa.string()),
    ("fp32_bytes", pa.int64()), ("int8_bytes", pa.int64()), *PROVENANCE_FIELDS,
    # population-based training: whose weights the trial took, at which epoch, with which hyperparameters (JSON)
    ("lineage", pa.string()),
    # a model robustgrid did not train (`models:`, eval --model, robustgrid.evaluate): where from, its spec
    # (JSON: models/external.py's ExternalModel), the weights' sha256, its architecture and parameter count
    ("model_source", pa.string()), ("model_spec", pa.string()), ("model_sha256", pa.string()),
    ("architecture", pa.string()), ("n_params", pa.int64()),
]


def trials_schema() -> pa.Schema:
    """Result columns plus the trial's configuration, one flat column per TrainConfig key."""
    from ..spec import TrainConfig
    types = {int: pa.int64(), float: pa.float64(), bool: pa.bool_(), str: pa.string()}
    results = dict(_TRIAL_RESULT_FIELDS)
    config_fields = []
    for name, field in TrainConfig.flat_fields().items():
        ann = field.annotation
        base = next((t for t in (bool, int, float) if ann is t or ann == (t | None)), str)
        config_fields.append((f"config_{name}" if name in results else name, types[base]))
    return pa.schema(_TRIAL_RESULT_FIELDS + config_fields)


def key_of_row(row: dict, n: int | None = None) -> tuple:
    """A row's cell key in EVAL_KEY's order, as eval_keys spells it (n: the whole cell's, where the row is a shard's)."""
    return tuple(eps_key(row["eps"]) if k == "eps" else int(row["n"] if n is None else n) if k == "n" else row[k]
                 for k in EVAL_KEY)


EVAL_KEY = ["trial_id", "quant", "quant_params", "attack", "attack_params", "attack_source", "threat", "eps",
            "defense", "defense_params", "n", "seed", "corruption", "severity"]
# What rows of an earlier release (before attack parameters, threat models, quant parameters) were:
# FGSM, oblivious, a quant mode without parameters.
EVAL_DEFAULTS = {"attack_params": "{}", "threat": "oblivious", "quant_params": "{}", "corruption": "none", "severity": 0}
TRIAL_KEY = ["trial_id"]


def write_table(table: pa.Table, path: Path) -> None:
    with atomic_write(path) as f:
        pq.write_table(table, f)


def _clean(value, field: pa.Field):
    """Rows read back through pandas carry NaN for missing strings and ints: make them nulls."""
    if isinstance(value, float) and value != value and not pa.types.is_floating(field.type):
        return None
    if value is pd.NaT:
        return None
    return value


def _table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    cols = {f.name: [_clean(r.get(f.name), f) for r in rows] for f in schema}
    return pa.Table.from_pydict(cols, schema=schema)


def results_folder(root: str | Path) -> Path:
    """The folder (an s3:// URI's working copy, pulled), or a SpecError (exit 2) where it is not a results folder."""
    from ..spec import SpecError
    from .location import results_location
    folder = results_location(root, "results")
    if not (folder / "trials.parquet").exists():
        raise SpecError(f"{root}: not a results folder (no trials.parquet)")
    return folder


class DamagedTable(ValueError):
    """A results table that cannot be read; the message says what to do."""


class ResultStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()

    # --- paths ---
    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    def path(self, table: str) -> Path:
        return self.root / f"{table}.parquet"

    # --- eval: append-only part files ---
    def eval_keys(self) -> set[tuple]:
        df = self.read_eval(columns=EVAL_KEY)
        return {tuple(r) for r in df.assign(eps=eps_key(df["eps"])).itertuples(index=False)} if len(df) else set()

    def append_eval(self, rows: list[dict]) -> Path | None:
        if not rows:
            return None
        part = self.eval_dir / f"part-{uuid.uuid4().hex}.parquet"
        write_table(_table(rows, EVAL_SCHEMA), part)
        return part

    def read_eval(self, columns: list[str] | None = None) -> pd.DataFrame:
        parts = sorted(self.eval_dir.glob("part-*.parquet")) if self.eval_dir.is_dir() else []
        if not parts:
            return EVAL_SCHEMA.empty_table().select(columns or EVAL_SCHEMA.names).to_pandas()
        try:
            df = pq.ParquetDataset(parts, schema=EVAL_SCHEMA).read(columns=columns).to_pandas()
        except (pa.ArrowException, OSError):
            df = self._read_readable_parts(parts, columns)
        df = df.fillna({k: v for k, v in EVAL_DEFAULTS.items() if k in df})   # rows of an earlier release
        if "severity" in df:
            df["severity"] = df["severity"].astype("int64")
        if columns is None or set(EVAL_KEY) <= set(columns):
            # Two writers racing on the same cell is prevented upstream; keep reads exact anyway.
            df = df.assign(_k=eps_key(df["eps"])).drop_duplicates(subset=[c if c != "eps" else "_k" for c in EVAL_KEY])
            df = df.drop(columns="_k").reset_index(drop=True)
        return df

    def set_aside_damaged(self) -> list[Path]:
        """Rename unreadable part files to a dot-name that Parquet readers skip (`pd.read_parquet(eval/)`
        included); their bytes are kept, their cells count as not done. Call with the folder's lock held."""
        moved = []
        for part in sorted(self.eval_dir.glob("part-*.parquet")) if self.eval_dir.is_dir() else []:
            try:
                pq.read_metadata(part)
            except (pa.ArrowException, OSError):
                target = part.with_name(f".damaged-{part.name}")
                replace(part, target)        # in the store too, where this is a working copy
                moved.append(target)
                console.print(f"[yellow]warning: {part.name} is unreadable; set aside as {target.name}, its cells "
                              "are computed again[/yellow]", highlight=False, soft_wrap=True)
        return moved

    def _read_readable_parts(self, parts: list[Path], columns: list[str] | None) -> pd.DataFrame:
        """Part by part, leaving out (and naming) the damaged ones: their cells count as not done, so a
        rerun computes exactly those again."""
        good = []
        for part in parts:
            try:
                pq.read_metadata(part)
                good.append(part)
            except (pa.ArrowException, OSError) as e:
                console.print(f"[yellow]warning: {part} is unreadable and left out "
                              f"({type(e).__name__}); its cells will be computed again[/yellow]", highlight=False, soft_wrap=True)
        if not good:
            return EVAL_SCHEMA.empty_table().select(columns or EVAL_SCHEMA.names).to_pandas()
        return pq.ParquetDataset(good, schema=EVAL_SCHEMA).read(columns=columns).to_pandas()

    # --- shards: the rows of cells not yet whole ---
    @property
    def shard_dir(self) -> Path:
        return self.root / "shards"

    def append_shards(self, rows: list[dict]) -> None:
        if rows:
            write_table(_table(rows, SHARD_SCHEMA), self.shard_dir / f"part-{uuid.uuid4().hex}.parquet")

    def read_shards(self) -> list[dict]:
        """Every stored shard row (unreadable parts left out with a warning: their shards run again)."""
        parts = sorted(self.shard_dir.glob("part-*.parquet")) if self.shard_dir.is_dir() else []
        rows = []
        for part in parts:
            try:
                rows += pq.read_table(part, schema=SHARD_SCHEMA).to_pylist()
            except (pa.ArrowException, OSError) as e:
                console.print(f"[yellow]warning: {part} is unreadable ({type(e).__name__}); its shards run "
                              "again[/yellow]", highlight=False, soft_wrap=True)
        return rows

    # --- trials / epochs: small tables, upserted by key ---
    def upsert(self, table: str, rows: Iterable[dict], key: list[str]) -> None:
        rows = list(rows)
        schema = trials_schema() if table == "trials" else EPOCH_SCHEMA
        new = _table(rows, schema).to_pandas()
        old = self.read(table)
        if len(old):
            keys = set(map(tuple, new[key].itertuples(index=False)))
            old = old[[tuple(k) not in keys for k in old[key].itertuples(index=False)]]
            new = pd.concat([old, new], ignore_index=True) if len(old) else new
        write_table(pa.Table.from_pandas(new, schema=schema, preserve_index=False), self.path(table))

    def read(self, table: str) -> pd.DataFrame:
        if table == "eval":
            return self.read_eval()
        p = self.path(table)
        if not p.exists():
            schema = trials_schema() if table == "trials" else EPOCH_SCHEMA
            return schema.empty_table().to_pandas()
        try:
            return pq.read_table(p).to_pandas()
        except (pa.ArrowException, OSError) as e:
            raise DamagedTable(f"{p}: damaged ({type(e).__name__}); restore it from a copy, or move it away "
                               "and rerun to retrain (checkpoints and eval cells are kept)") from None
