"""SVHN (Netzer et al. 2011), the cropped-digit format: 73,257 training and 26,032 test images of house
numbers, 10 classes (the files' label 10 is the digit 0); `data.svhn_extra: true` adds the 531,131 easier
`extra` images to training. Fetched once from its authors' host, each file held to its published md5."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .catalog import DataError, Dataset, register, resolve_root
from .fetch import DownloadError, fetch_lock, fetch_verified

HOST = "http://ufldl.stanford.edu/housenumbers"
# name, md5 (torchvision's), MB as the host lists them: said when fetching (what, from where, how big)
FILES = {"train": ("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373", 182),
         "test": ("test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3", 64),
         "extra": ("extra_32x32.mat", "a93ce644f1a588dc4d68dda5feec44a7", 1330)}
DIR = "svhn"
CLASSES = [str(d) for d in range(10)]
MEAN = (0.4377, 0.4438, 0.4728)
STD = (0.1980, 0.2010, 0.1970)


def _splits(data) -> list[str]:
    return ["train", "test", "extra"] if data.svhn_extra else ["train", "test"]


def fetch_svhn(root: Path, splits: list[str], progress=None) -> None:
    say = progress or (lambda msg: None)
    with fetch_lock(root, "svhn", say):
        for split in splits:
            name, md5, mb = FILES[split]
            dest = root / DIR / name
            if dest.is_file():
                continue
            say(f"fetching SVHN {split} into {dest} from {HOST}/{name} ({mb} MB)")
            try:
                fetch_verified(f"{HOST}/{name}", dest, md5)
            except DownloadError as e:
                raise DownloadError(f"could not fetch SVHN ({e}). Place {name} (md5 {md5}) from {HOST}/{name} at "
                                    f"{dest}, or run `robustgrid data fetch svhn` where the host can be reached") from None


def read_mat(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The format's X (32, 32, 3, N) uint8 and y (N, 1) in 1..10 as NCHW images and labels 0..9."""
    from scipy.io import loadmat
    try:
        mat = loadmat(path)
    except Exception as e:       # scipy raises ValueError, MatReadError, OSError... for a damaged file
        raise DataError(f"{path}: not a readable SVHN .mat file ({type(e).__name__}: {e})") from None
    x = np.ascontiguousarray(mat["X"].transpose(3, 2, 0, 1))
    y = mat["y"].reshape(-1).astype(np.int64) % 10          # label 10 is the digit 0
    return torch.from_numpy(x), torch.from_numpy(y)


def _root(data, progress=None) -> Path:
    root = resolve_root(data.root)
    if not all((root / DIR / FILES[s][0]).is_file() for s in _splits(data)):
        fetch_svhn(root, _splits(data), progress)
    return root


def load(data, progress=None):
    root = _root(data, progress)
    parts = [read_mat(root / DIR / FILES[s][0]) for s in _splits(data) if s != "test"]
    test_x, test_y = read_mat(root / DIR / FILES["test"][0])
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), test_x, test_y, list(CLASSES)


def load_test(data) -> tuple:
    root = resolve_root(data.root)
    if not (root / DIR / FILES["test"][0]).is_file():
        fetch_svhn(root, ["test"])
    return (*read_mat(root / DIR / FILES["test"][0]), list(CLASSES))


SVHN = register(Dataset("svhn", load=load, load_test=load_test, n_test=lambda data: 26032,
                        fetch=lambda data, progress=None: _root(data, progress), mean=MEAN, std=STD, fixed_val=True,
                        source=f"{HOST}/{{train,test,extra}}_32x32.mat (md5s published with torchvision)"))
