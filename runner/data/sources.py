"""Datasets as whole uint8 tensors (airbench-style): cifar10, imagefolder, synthetic, and splits.

Every split is (images uint8 NCHW, labels int64). Images become [0,1] floats only in the
batch that is fed to a model; mean/std live in the model.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..spec import IMAGE_EXTENSIONS, DataSpec
from .download import CIFAR_DIR, cifar10_present, fetch_cifar10
from .download import CLASSES as CIFAR10_CLASSES

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class DataError(RuntimeError):
    """A data set that is missing or malformed."""


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


def default_data_root() -> Path:
    """One copy per machine, shared by every checkout and every Ray worker."""
    if os.environ.get("ROBUSTGRID_DATA"):
        return Path(os.environ["ROBUSTGRID_DATA"]).expanduser().resolve()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return (Path(cache) / "robustgrid").resolve()


def resolve_root(root: str | os.PathLike | None) -> Path:
    return Path(root).expanduser().resolve() if root else default_data_root()


# --- the three sources -----------------------------------------------------------------

def load_cifar10(root: Path, download: bool = True, progress=None):
    if not cifar10_present(root):
        if not download:
            raise DataError(f"CIFAR-10 not found under {root}; run `robustgrid data fetch cifar10`")
        fetch_cifar10(root, progress)
    parts = [_read_cifar_batch(root, f"data_batch_{i}") for i in range(1, 6)]
    train_x = torch.cat([p[0] for p in parts])
    train_y = torch.cat([p[1] for p in parts])
    test_x, test_y = _read_cifar_batch(root, "test_batch")
    return train_x, train_y, test_x, test_y, list(CIFAR10_CLASSES)


def _read_cifar_batch(root: Path, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    with open(root / CIFAR_DIR / name, "rb") as f:
        entry = pickle.load(f, encoding="latin1")  # the official files are Python 2 pickles
    data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return torch.from_numpy(data.copy()), torch.tensor(entry["labels"], dtype=torch.int64)


def check_imagefolder(path: str | os.PathLike) -> Path:
    path = Path(path).expanduser()
    for split in ("train", "test"):
        if not (path / split).is_dir():
            raise DataError(f"{path / split}: folder not found (imagefolder needs train/ and test/ with one folder per class)")
    return path.resolve()


def verify_imagefolder(path: str | os.PathLike) -> None:
    """Refuse a folder-per-class set that no trial could train on, before any trial starts, naming what is wrong:
    a missing split, train and test with different classes, a class folder without images, an image that does
    not decode (each one is decoded: a truncated file passes a header check)."""
    from PIL import Image
    path = check_imagefolder(path)
    classes = {split: sorted(p.name for p in (path / split).iterdir() if p.is_dir()) for split in ("train", "test")}
    if classes["train"] != classes["test"]:
        only = lambda a, b: ", ".join(sorted(set(classes[a]) - set(classes[b]))) or "none"
        raise DataError(f"{path}: train/ and test/ hold different classes (only in train/: {only('train', 'test')}; "
                        f"only in test/: {only('test', 'train')})")
    if not classes["train"]:
        raise DataError(f"{path / 'train'}: no class folders")
    for split in ("train", "test"):
        for cls in classes[split]:
            files = [f for f in sorted((path / split / cls).iterdir()) if f.suffix.lower() in IMAGE_EXTENSIONS]
            if not files:
                raise DataError(f"{path / split / cls}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in this class folder")
            for f in files:
                try:
                    with Image.open(f) as im:
                        im.load()
                except Exception as e:     # PIL raises OSError, SyntaxError, ValueError... for a damaged file
                    raise DataError(f"{f}: not a readable image ({type(e).__name__}: {e})") from None


def _read_folder(split_dir: Path, classes: list[str], size: int):
    from PIL import Image
    images, labels = [], []
    for label, cls in enumerate(classes):
        for f in sorted((split_dir / cls).iterdir()):
            if f.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            try:
                with Image.open(f) as im:
                    im = im.convert("RGB")
                    if im.size != (size, size):
                        im = im.resize((size, size), Image.BILINEAR)
                    images.append(np.asarray(im, dtype=np.uint8))
            except Exception as e:     # changed since the run checked it: the trial's error names the file
                raise DataError(f"{f}: not a readable image ({type(e).__name__}: {e})") from None
            labels.append(label)
    if not images:
        raise DataError(f"{split_dir}: no images found")
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels, dtype=torch.int64)


def _folder_classes(path: Path) -> list[str]:
    classes = sorted(p.name for p in (path / "train").iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{path / 'train'}: no class folders")
    return classes


def load_imagefolder(path: str | os.PathLike, size: int = 32):
    path = check_imagefolder(path)
    classes = _folder_classes(path)
    train_x, train_y = _read_folder(path / "train", classes, size)
    test_x, test_y = _read_folder(path / "test", classes, size)
    return train_x, train_y, test_x, test_y, classes


def make_synthetic(n: int, num_classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A learnable 32x32 RGB set: each class is a colour and a stripe orientation, plus noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    palette = torch.rand(num_classes, 3, 1, 1, generator=torch.Generator().manual_seed(1234)) * 0.6 + 0.2
    angle = torch.arange(num_classes, dtype=torch.float32) * (torch.pi / num_classes)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    phase = torch.rand(n, generator=g) * 2 * torch.pi
    a = angle[labels].view(n, 1, 1)
    stripes = torch.sin((xx * torch.cos(a) + yy * torch.sin(a)) * 0.8 + phase.view(n, 1, 1))
    img = palette[labels] + 0.25 * stripes.unsqueeze(1) + 0.1 * torch.randn(n, 3, 32, 32, generator=g)
    return torch.round(img.clamp(0, 1) * 255).to(torch.uint8), labels


def load_synthetic(n_train: int, n_test: int, num_classes: int = 10):
    train_x, train_y = make_synthetic(n_train, num_classes, seed=0)
    test_x, test_y = make_synthetic(n_test, num_classes, seed=1)
    return train_x, train_y, test_x, test_y, [f"class_{i}" for i in range(num_classes)]


def fetch_data(data: DataSpec, progress=None) -> None:
    """Fetch what a data section needs, once, before any trial or evaluation task starts (the driver's
    job: trials then only read it; a trial on another machine of a cluster still fetches for its own)."""
    if data.dataset == "cifar10":
        root = resolve_root(data.root)
        if not cifar10_present(root):
            fetch_cifar10(root, progress)


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
    if data.dataset == "cifar10":
        train_x, train_y, test_x, test_y, classes = load_cifar10(resolve_root(data.root), progress=progress)
        mean, std = CIFAR10_MEAN, CIFAR10_STD
    elif data.dataset == "imagefolder":
        if not data.path:
            raise DataError("data.path: imagefolder needs a folder with train/ and test/")
        train_x, train_y, test_x, test_y, classes = load_imagefolder(data.path)
        mean, std = _channel_stats(train_x)
    else:
        train_x, train_y, test_x, test_y, classes = load_synthetic(data.synthetic_train, data.synthetic_test)
        mean, std = _channel_stats(train_x)
    val_size = min(data.val_size, len(train_x) // 10) if data.dataset != "cifar10" else data.val_size
    tr_x, tr_y, va_x, va_y = split_train_val(train_x, train_y, val_size, data.split_seed)
    if data.train_subset:
        tr_x, tr_y = tr_x[:data.train_subset], tr_y[:data.train_subset]
    return Splits(tr_x, tr_y, va_x, va_y, test_x, test_y, classes, mean, std)


def load_test_split(data: DataSpec) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The test split alone (an evaluation shard reads no training image): images, labels, class names."""
    if data.dataset == "cifar10":
        root = resolve_root(data.root)
        if not cifar10_present(root):
            fetch_cifar10(root)
        return (*_read_cifar_batch(root, "test_batch"), list(CIFAR10_CLASSES))
    if data.dataset == "imagefolder":
        if not data.path:
            raise DataError("data.path: imagefolder needs a folder with train/ and test/")
        path = check_imagefolder(data.path)
        classes = _folder_classes(path)
        return (*_read_folder(path / "test", classes, 32), classes)
    _, _, test_x, test_y, classes = load_synthetic(0, data.synthetic_test)
    return test_x, test_y, classes


def _channel_stats(x: torch.Tensor):
    f = x.to(torch.float32) / 255
    mean = tuple(round(v, 4) for v in f.mean((0, 2, 3)).tolist())
    std = tuple(round(max(v, 1e-3), 4) for v in f.std((0, 2, 3)).tolist())
    return mean, std
