"""The dataset registry: one file per data set (cifar10.py, cifar100.py, svhn.py, imagefolder.py, synthetic.py)
registers a `Dataset` declaring how it is fetched and checked, how its splits and its test split alone are read,
its size and its normalisation: defined once, asked by name. Adding a data set is its own file and a test."""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ...registry import Registry

# (train images uint8 NCHW, train labels, test images, test labels, class names)
RawSplits = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[str]]


class DataError(RuntimeError):
    """A data set that is missing or malformed."""


@dataclass(frozen=True)
class Dataset:
    name: str
    load: Callable[..., RawSplits]              # (data spec, progress) -> the splits
    load_test: Callable[..., tuple]             # (data spec) -> (test images, labels, class names): a shard's read
    n_test: Callable[..., int | None]           # (data spec) -> the test split's size without reading it
    fetch: Callable[..., None] | None = None    # (data spec, progress): the driver fetches once, before any trial
    mean: tuple[float, float, float] | None = None   # None: measured on the training images
    std: tuple[float, float, float] | None = None
    fixed_val: bool = False                     # a standard set: val_size as given (else at most a tenth of train)
    source: str = ""                            # where it comes from, in words (`robustgrid data`)


DATASETS = Registry("dataset")


def register(dataset: Dataset) -> Dataset:
    DATASETS.add(dataset.name, dataset)
    return dataset


def dataset_of(name: str) -> Dataset:
    return DATASETS.get(name).obj


def default_data_root() -> Path:
    """One copy per machine, shared by every checkout and every Ray worker."""
    if os.environ.get("ROBUSTGRID_DATA"):
        return Path(os.environ["ROBUSTGRID_DATA"]).expanduser().resolve()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return (Path(cache) / "robustgrid").resolve()


def resolve_root(root: str | os.PathLike | None) -> Path:
    return Path(root).expanduser().resolve() if root else default_data_root()
