"""Datasets as whole uint8 tensors (airbench-style), read through the dataset registry (catalog.py), and splits.

Every split is (images uint8 NCHW, labels int64). Images become [0,1] floats only in the
batch that is fed to a model; mean/std live in the model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..spec import DataSpec
from .catalog import DataError, dataset_of


@dataclass
class Splits:
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def fetch_data(data: DataSpec, progress=None) -> None:
    """Fetch what a data section needs, once, before any trial or evaluation task starts (the driver's
    job: trials then only read it; a trial on another machine of a cluster still fetches for its own)."""
    fetch = dataset_of(data.dataset).fetch
    if fetch is not None:
        fetch(data, progress)


# --- splits ------------------------------------------------------------------------------

def split_train_val(x: torch.Tensor, y: torch.Tensor, val_size: int, seed: int = 0):
    """A fixed-seed split, the same in every trial and on every worker."""
    if not 0 <= val_size < len(x):
        raise DataError(f"val_size {val_size} must be in [0, {len(x)})")
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    val, train = perm[:val_size], perm[val_size:]
    return x[train], y[train], x[val], y[val]


def load_splits(data: DataSpec, progress=None) -> Splits:
    """The train / validation / test splits a DataSpec describes (validation: a fixed-seed slice of train)."""
    dataset = dataset_of(data.dataset)
    train_x, train_y, test_x, test_y, classes = dataset.load(data, progress)
    mean, std = (dataset.mean, dataset.std) if dataset.mean else _channel_stats(train_x)
    val_size = data.val_size if dataset.fixed_val else min(data.val_size, len(train_x) // 10)
    tr_x, tr_y, va_x, va_y = split_train_val(train_x, train_y, val_size, data.split_seed)
    if data.train_subset:
        tr_x, tr_y = tr_x[:data.train_subset], tr_y[:data.train_subset]
    return Splits(tr_x, tr_y, va_x, va_y, test_x, test_y, classes, mean, std)


def load_test_split(data: DataSpec) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The test split alone (an evaluation shard reads no training image): images, labels, class names."""
    return dataset_of(data.dataset).load_test(data)


def _channel_stats(x: torch.Tensor):
    f = x.to(torch.float32) / 255
    mean = tuple(round(v, 4) for v in f.mean((0, 2, 3)).tolist())
    std = tuple(round(max(v, 1e-3), 4) for v in f.std((0, 2, 3)).tolist())
    return mean, std
