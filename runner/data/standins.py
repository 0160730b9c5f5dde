"""Stand-ins in the official formats, small, made on the spot: what the tests and CI's miniature sweeps read where
the real hosts cannot be reached (the readers and fetchers under test are the real ones)."""
from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

from .cifar10c import CORRUPTIONS
from .cifar10c import DIR as CIFAR10C_DIR
from .download import CIFAR_DIR


def write_cifar10(root: Path, n_train: int = 60, n_test: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10's python batches (five training batches of n_train, the test batch, the meta file), each image a
    colour of its class plus noise; returns the test images (N, 32, 32, 3) and labels."""
    d = Path(root) / CIFAR_DIR
    d.mkdir(parents=True)
    palette = np.random.default_rng(3).integers(30, 226, (10, 3))

    def batch(n: int, seed: int):
        labels = np.arange(n) % 10
        noise = np.random.default_rng(seed).normal(0, 25, (n, 32, 32, 3))
        return np.clip(palette[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8), labels
    for name, (x, y) in [(f"data_batch_{i}", batch(n_train, i)) for i in range(1, 6)] + [("test_batch", batch(n_test, 0))]:
        with open(d / name, "wb") as f:
            pickle.dump({"data": x.transpose(0, 3, 1, 2).reshape(len(x), -1), "labels": y.tolist()}, f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return x, y


def cifar10c_files(test_x: np.ndarray, test_y: np.ndarray) -> dict[str, np.ndarray]:
    """CIFAR-10-C's arrays for these test images: each corruption (5 x N, 32, 32, 3), severity 1 first (here a
    noise growing with the severity), and labels.npy."""
    files = {}
    for k, name in enumerate(CORRUPTIONS):
        g = np.random.default_rng(k)
        files[f"{name}.npy"] = np.concatenate([np.clip(test_x + g.normal(0, 30 * s, test_x.shape), 0, 255).astype(np.uint8)
                                               for s in range(1, 6)])
    files["labels.npy"] = np.tile(test_y, 5).astype(np.uint8)
    return files


def write_cifar10c(root: Path, test_x: np.ndarray, test_y: np.ndarray) -> None:
    d = Path(root) / CIFAR10C_DIR
    d.mkdir(parents=True)
    for name, arr in cifar10c_files(test_x, test_y).items():
        np.save(d / name, arr)


def cifar10c_archive(test_x: np.ndarray, test_y: np.ndarray) -> bytes:
    """CIFAR-10-C.tar as Zenodo serves it: CIFAR-10-C/<corruption>.npy and labels.npy."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, arr in cifar10c_files(test_x, test_y).items():
            b = io.BytesIO()
            np.save(b, arr)
            info = tarfile.TarInfo(f"{CIFAR10C_DIR}/{name}")
            info.size = b.tell()
            b.seek(0)
            tar.addfile(info, b)
    return buf.getvalue()
