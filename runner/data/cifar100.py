"""CIFAR-100 (Krizhevsky 2009): 50,000 training and 10,000 test images, 100 fine classes (20 coarse ones with
`data.coarse_labels: true`). Fetched once from its authors' host, the archive held to its published md5."""
from __future__ import annotations

import pickle
import tarfile
import tempfile
from pathlib import Path

from .catalog import DataError, Dataset, register, resolve_root
from .cifar10 import read_cifar_batch
from .fetch import DownloadError, fetch_lock, fetch_verified

URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
MD5 = "eb9058c3a382ffc7106e4002c42a8d85"      # the authors' and torchvision's
MB = 161          # as its host lists it: said when fetching (what, from where, how big)
DIR = "cifar-100-python"
MEAN = (0.5071, 0.4865, 0.4409)
STD = (0.2673, 0.2564, 0.2762)


def present(root: Path) -> bool:
    return all((root / DIR / f).is_file() for f in ("train", "test", "meta"))


def fetch_cifar100(root: Path, progress=None) -> None:
    say = progress or (lambda msg: None)
    with fetch_lock(root, "cifar100", say):
        if present(root):
            return
        say(f"fetching CIFAR-100 into {root / DIR} from {URL} ({MB} MB)")
        with tempfile.TemporaryDirectory(dir=root, prefix=".cifar100-") as tmp:
            archive = Path(tmp) / "cifar-100-python.tar.gz"
            try:
                fetch_verified(URL, archive, MD5)
            except DownloadError as e:
                raise DownloadError(f"could not fetch CIFAR-100 ({e}). Place {archive.name} (md5 {MD5}) from {URL} "
                                    f"unpacked as {root / DIR}, or run `robustgrid data fetch cifar100` where the "
                                    "host can be reached") from None
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
            if not present(Path(tmp)):
                raise DownloadError(f"{URL}: the archive does not hold {DIR}/train, test and meta")
            (Path(tmp) / DIR).replace(root / DIR)


def _labels(data) -> str:
    return "coarse_labels" if data.coarse_labels else "fine_labels"


def _classes(root: Path, data) -> list[str]:
    with open(root / DIR / "meta", "rb") as f:
        meta = pickle.load(f, encoding="latin1")
    return list(meta["coarse_label_names" if data.coarse_labels else "fine_label_names"])


def _root(data, progress=None) -> Path:
    root = resolve_root(data.root)
    if not present(root):
        fetch_cifar100(root, progress)
    return root


def load(data, progress=None):
    root = _root(data, progress)
    train_x, train_y = read_cifar_batch(root / DIR / "train", _labels(data))
    test_x, test_y = read_cifar_batch(root / DIR / "test", _labels(data))
    classes = _classes(root, data)
    if int(train_y.max()) >= len(classes):
        raise DataError(f"{root / DIR}: labels up to {int(train_y.max())} for {len(classes)} classes")
    return train_x, train_y, test_x, test_y, classes


def load_test(data) -> tuple:
    root = _root(data)
    return (*read_cifar_batch(root / DIR / "test", _labels(data)), _classes(root, data))


def _fetch(data, progress=None) -> None:
    _root(data, progress)


CIFAR100 = register(Dataset("cifar100", load=load, load_test=load_test, n_test=lambda data: 10000, fetch=_fetch,
                            mean=MEAN, std=STD, fixed_val=True, source=f"{URL} (md5 {MD5})"))
