"""A folder-per-class image set (Linnaeus 5's layout): <path>/train/<class>/*.png and <path>/test/<class>/*.png,
resized to 32x32; normalised by its own training images' channel statistics."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .catalog import DataError, Dataset, register

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


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


def _path(data) -> str:
    if not data.path:
        raise DataError("data.path: imagefolder needs a folder with train/ and test/")
    return data.path


def _test(data) -> tuple:
    path = check_imagefolder(_path(data))
    classes = _folder_classes(path)
    return (*_read_folder(path / "test", classes, 32), classes)


def _n_test(data) -> int | None:
    test = Path(data.path).expanduser() / "test" if data.path else None
    return sum(1 for f in test.glob("*/*") if f.suffix.lower() in IMAGE_EXTENSIONS) if test and test.is_dir() else None


IMAGEFOLDER = register(Dataset("imagefolder", load=lambda data, progress=None: load_imagefolder(_path(data)),
                               load_test=_test, n_test=_n_test, source="data.path: train/<class>/*, test/<class>/*"))
