"""CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019): CIFAR-10's 10,000 test images under 15 common corruptions, each
at severities 1-5, as RobustBench evaluates them. `<root>/CIFAR-10-C/<corruption>.npy` holds (50000, 32, 32, 3)
uint8, severity 1's 10,000 images first, in the test split's order; `labels.npy` their labels. Fetched once from
Zenodo (record 2535967, 2.9 GB), held to the md5 Zenodo publishes for it."""
from __future__ import annotations

import json
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import torch

from .catalog import DataError
from .fetch import DownloadError, fetch_lock, fetch_verified

# RobustBench's 15 (robustbench/data.py CORRUPTIONS), in its order
CORRUPTIONS = ("shot_noise", "motion_blur", "snow", "pixelate", "gaussian_noise", "defocus_blur", "brightness", "fog",
               "zoom_blur", "frost", "glass_blur", "impulse_noise", "contrast", "jpeg_compression", "elastic_transform")
RECORD = "https://zenodo.org/api/records/2535967"     # its files, each with the md5 Zenodo publishes
ARCHIVE = "CIFAR-10-C.tar"
GB = 2.9          # as Zenodo lists it: said when fetching
DIR = "CIFAR-10-C"


def present(root: Path, names=CORRUPTIONS) -> bool:
    return (root / DIR / "labels.npy").is_file() and all((root / DIR / f"{n}.npy").is_file() for n in names)


def fetch_cifar10c(root: Path, progress=None) -> None:
    say = progress or (lambda msg: None)
    root.mkdir(parents=True, exist_ok=True)
    with fetch_lock(root, "cifar10c", say):
        if present(root):
            return
        try:
            url, md5 = _published(RECORD)
            say(f"fetching CIFAR-10-C into {root / DIR} from {url} ({GB} GB)")
            with tempfile.TemporaryDirectory(dir=root, prefix=".cifar10c-") as tmp:
                archive = Path(tmp) / ARCHIVE
                fetch_verified(url, archive, md5, timeout_s=60)
                with tarfile.open(archive) as tar:
                    tar.extractall(tmp, filter="data")
                if not present(Path(tmp)):
                    raise DownloadError(f"{url}: the archive does not hold {DIR}/labels.npy and the 15 corruptions")
                (Path(tmp) / DIR).replace(root / DIR)
        except DownloadError as e:
            raise DownloadError(f"could not fetch CIFAR-10-C ({e}). Place {ARCHIVE} from {RECORD} (its md5 is on that "
                                f"page) unpacked as {root / DIR}, or fetch it where Zenodo can be reached") from None


def _published(record: str) -> tuple[str, str]:
    """The archive's address and md5 as Zenodo's record lists them."""
    try:
        with urllib.request.urlopen(record, timeout=30) as r:
            files = json.load(r)["files"]
    except (OSError, ValueError, KeyError) as e:
        raise DownloadError(f"{record}: {type(e).__name__}: {e}") from None
    entry = next((f for f in files if f.get("key") == ARCHIVE), None)
    if entry is None:
        raise DownloadError(f"{record}: no {ARCHIVE} listed")
    return entry["links"]["self"], entry["checksum"].removeprefix("md5:")


def load_corrupted(root: Path, name: str, severity: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n test images under `name` at `severity` (NCHW uint8) and their labels: the same images, in the
    same order, as the clean cells' first n."""
    path, labels_path = root / DIR / f"{name}.npy", root / DIR / "labels.npy"
    if not path.is_file() or not labels_path.is_file():
        raise DataError(f"{path}: CIFAR-10-C not found; run `robustgrid data fetch cifar10c`")
    images = np.load(path, mmap_mode="r")
    labels = np.load(labels_path, mmap_mode="r")
    per = len(images) // 5             # 10,000 in the official files: severity 1 first
    if images.shape[1:] != (32, 32, 3) or len(labels) != len(images) or not 0 < n <= per:
        raise DataError(f"{path}: expected (5 x N, 32, 32, 3) images with as many labels and N >= {n}, got "
                        f"{images.shape} and {len(labels)} labels")
    start = (severity - 1) * per
    x = torch.from_numpy(np.ascontiguousarray(images[start:start + n].transpose(0, 3, 1, 2)))
    return x, torch.from_numpy(np.asarray(labels[start:start + n], dtype=np.int64))
