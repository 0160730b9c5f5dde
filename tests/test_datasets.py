"""The dataset registry's fetchers against files made here in the exact official formats (CIFAR-100's python
pickles in its tar.gz, SVHN's .mat), served on loopback with their checksums: fetched, read, a corrupt download
refused, an unreachable host answered with what to place where; a CIFAR-100 sweep trains 100-way."""
from __future__ import annotations

import functools
import hashlib
import http.server
import io
import pickle
import tarfile
import threading

import numpy as np
import pytest
import torch
import yaml
from robustgrid.runner.data import DATASETS, DownloadError, cifar100, load_splits, load_test_split, svhn
from robustgrid.runner.spec import DataSpec


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """A plain HTTP server on 127.0.0.1 over a folder: the official host, stood in for."""
    folder = tmp_path_factory.mktemp("host")
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass
    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def cifar100_archive(n_train: int = 300, n_test: int = 60) -> tuple[bytes, dict]:
    """cifar-100-python.tar.gz as its authors publish it: train, test and meta, Python pickles of
    data (N, 3072) uint8 in R, G, B planes, fine_labels (0..99) and coarse_labels (0..19)."""
    g = np.random.default_rng(0)
    made, buf = {}, io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        def add(name, obj):
            blob = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
        for split, n in (("train", n_train), ("test", n_test)):
            fine = (np.arange(n) % 100).tolist()
            made[split] = (g.integers(0, 256, (n, 3072), dtype=np.uint8), fine)
            add(split, {"filenames": [f"{i}.png" for i in range(n)], "batch_label": split, "data": made[split][0],
                        "fine_labels": fine, "coarse_labels": [f // 5 for f in fine]})
        add("meta", {"fine_label_names": [f"fine{i}" for i in range(100)],
                     "coarse_label_names": [f"coarse{i}" for i in range(20)]})
    return buf.getvalue(), made


def serve_cifar100(host, monkeypatch, name: str, **sizes) -> dict:
    """A CIFAR-100 archive on the loopback host, the fetcher pointed at it with its md5; what it holds."""
    folder, url = host
    blob, made = cifar100_archive(**sizes)
    (folder / name).write_bytes(blob)
    monkeypatch.setattr(cifar100, "URL", f"{url}/{name}")
    monkeypatch.setattr(cifar100, "MD5", _md5(blob))
    return made


def test_cifar100_is_fetched_once_checked_and_read_with_its_fine_or_coarse_labels(host, tmp_path, monkeypatch):
    folder, _ = host
    made = serve_cifar100(host, monkeypatch, "c100.tar.gz")
    said = []
    s = load_splits(DataSpec(dataset="cifar100", root=str(tmp_path), val_size=30), progress=said.append)
    assert any("CIFAR-100" in m and "161 MB" in m for m in said)          # what, from where, how big
    assert len(s.classes) == 100 and s.classes[7] == "fine7"
    assert s.train_x.shape == (270, 3, 32, 32) and s.test_x.shape == (60, 3, 32, 32)
    assert torch.equal(s.test_x.reshape(60, -1), torch.from_numpy(made["test"][0]))
    assert s.test_y.tolist() == made["test"][1] and s.mean == cifar100.MEAN
    _, y, classes = load_test_split(DataSpec(dataset="cifar100", root=str(tmp_path), coarse_labels=True))
    assert len(classes) == 20 and y.tolist() == [f // 5 for f in made["test"][1]]
    (folder / "c100.tar.gz").unlink()                                     # fetched once: the host is not asked again
    assert load_test_split(DataSpec(dataset="cifar100", root=str(tmp_path)))[0].shape == (60, 3, 32, 32)


def test_a_corrupt_or_unreachable_download_keeps_nothing_and_says_what_to_place_where(host, tmp_path, monkeypatch):
    folder, url = host
    blob, _ = cifar100_archive(n_train=10, n_test=10)
    (folder / "bad.tar.gz").write_bytes(blob[:-100] + bytes(100))           # damaged on the way
    monkeypatch.setattr(cifar100, "URL", f"{url}/bad.tar.gz")
    monkeypatch.setattr(cifar100, "MD5", _md5(blob))
    with pytest.raises(DownloadError, match=r"md5 .*\(a corrupt or tampered download\)"):
        load_splits(DataSpec(dataset="cifar100", root=str(tmp_path)))
    assert not cifar100.present(tmp_path) and not list(tmp_path.rglob("*.part")) and not list(tmp_path.rglob("*.tar.gz"))
    monkeypatch.setattr(svhn, "HOST", "http://127.0.0.1:9")                  # nothing listens there
    with pytest.raises(DownloadError) as e:
        load_test_split(DataSpec(dataset="svhn", root=str(tmp_path)))
    said = str(e.value)
    assert "test_32x32.mat" in said and str(tmp_path / "svhn") in said and "robustgrid data fetch svhn" in said


def svhn_mat(path, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """SVHN's cropped-digit format: X (32, 32, 3, N) uint8 and y (N, 1) in 1..10, 10 standing for the digit 0."""
    from scipy.io import savemat
    g = np.random.default_rng(seed)
    x = g.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = (np.arange(n) % 10 + 1).astype(np.uint8).reshape(n, 1)
    savemat(path, {"X": x, "y": y})
    return x, y


def test_svhn_is_read_from_its_mat_files_with_label_10_as_0(host, tmp_path, monkeypatch):
    folder, url = host
    sums = {}
    for split, n, seed in (("train", 200, 0), ("test", 40, 1)):
        name = svhn.FILES[split][0]
        x, y = svhn_mat(folder / name, n, seed)
        sums[split] = (name, _md5((folder / name).read_bytes()), 1)
        if split == "test":
            test_x, test_y = x, y
    monkeypatch.setattr(svhn, "HOST", url)
    monkeypatch.setattr(svhn, "FILES", {**svhn.FILES, **sums})
    s = load_splits(DataSpec(dataset="svhn", root=str(tmp_path), val_size=20))
    assert s.classes == [str(d) for d in range(10)] and s.train_x.shape == (180, 3, 32, 32)
    assert s.test_y.tolist() == [int(v) % 10 for v in test_y.reshape(-1)] and 0 in s.test_y.tolist()
    # pixel (row 3, column 5), channel 2 of image 7: X[3, 5, 2, 7] in the file
    assert int(s.test_x[7, 2, 3, 5]) == int(test_x[3, 5, 2, 7])


def test_every_registered_dataset_declares_what_the_runner_asks(tmp_path):
    assert {"cifar10", "cifar100", "svhn", "imagefolder", "synthetic"} <= set(DATASETS.names())
    for name in DATASETS.names():
        d = DATASETS.get(name).obj
        assert d.name == name and callable(d.load) and callable(d.load_test) and callable(d.n_test) and d.source
        assert (d.mean is None) == (d.std is None)
    from robustgrid.runner.cli import main
    assert main(["data", "fetch", "imagenet"]) == 2


def test_a_cifar100_sweep_on_the_stand_in_trains_100_way_and_evaluates(host, tmp_path, monkeypatch):
    serve_cifar100(host, monkeypatch, "c100-sweep.tar.gz")
    import robustgrid
    from robustgrid.models import read_checkpoint
    sweep = {"name": "c100", "data": {"dataset": "cifar100", "root": str(tmp_path / "data"), "val_size": 30},
             "train": {"model": "simple_cnn", "epochs": 1, "batch_size": 64},
             "evaluate": {"n_images": 20, "eps": [0, "8/255"], "attacks": ["fgsm"], "defenses": ["none"],
                          "quant": ["fp32"], "examples": 0}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep))
    res = robustgrid.run(str(tmp_path / "s.yaml"), out=tmp_path / "out", executor="inline")
    trial = res.trials.iloc[0]
    assert trial["status"] == "ok" and trial["dataset"] == "cifar100"
    assert read_checkpoint(tmp_path / "out" / trial["checkpoint"])["model_kwargs"]["num_classes"] == 100
    assert len(res.eval) == 2 and set(res.eval["dataset"]) == {"cifar100"} and (res.eval["n"] == 20).all()


def test_cifar10c_cells_are_the_models_accuracy_on_the_corrupted_images_and_run_once(host, tmp_path, monkeypatch):
    """evaluate.corruptions: CIFAR-10-C fetched from its record (the md5 the record publishes), cells per corruption,
    severity, defense and quant mode, in shards; each `none` cell equals the model's accuracy on those images computed
    here directly; show prints RobustBench's mean; a second run computes nothing again."""
    import json

    import robustgrid
    from robustgrid.models import load_checkpoint
    from robustgrid.runner.data import cifar10c
    from robustgrid.runner.data.batches import to_float
    from robustgrid.runner.data.standins import cifar10c_archive, write_cifar10
    folder, url = host
    test_x, test_y = write_cifar10(tmp_path / "data")
    blob = cifar10c_archive(test_x, test_y)
    (folder / "CIFAR-10-C.tar").write_bytes(blob)
    (folder / "record.json").write_text(json.dumps({"files": [
        {"key": "CIFAR-10-C.tar", "checksum": f"md5:{_md5(blob)}", "links": {"self": f"{url}/CIFAR-10-C.tar"}}]}))
    monkeypatch.setattr(cifar10c, "RECORD", f"{url}/record.json")
    sweep = {"name": "c10c", "data": {"dataset": "cifar10", "root": str(tmp_path / "data"), "val_size": 30},
             "train": {"model": "simple_cnn", "epochs": 1, "batch_size": 64},
             "evaluate": {"n_images": 40, "shard_images": 20, "eps": [0], "attacks": ["fgsm"], "quant": ["fp32"],
                          "defenses": ["none", "median"], "examples": 0,
                          "corruptions": {"names": ["gaussian_noise", "fog"], "severities": [1, 5]}}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(sweep))
    from robustgrid.runner.evaluate import Models
    builds, build = [], Models.build.__func__
    monkeypatch.setattr(Models, "build", classmethod(lambda cls, *a, **k: builds.append(1) or build(cls, *a, **k)))
    res = robustgrid.run(str(tmp_path / "s.yaml"), out=tmp_path / "out", executor="inline")
    assert len(builds) == 2       # the models quantized once per shard task, not once per corruption and severity
    ev = res.eval
    corrupted = ev[ev["corruption"] != "none"]
    assert len(ev) == 2 + 2 * 2 * 2 and len(corrupted) == 8 and not ev.duplicated(
        ["trial_id", "defense", "corruption", "severity"]).any()
    model = load_checkpoint(tmp_path / "out" / res.trials.iloc[0]["checkpoint"])
    for (name, severity), row in corrupted[corrupted["defense"] == "none"].set_index(["corruption", "severity"]).iterrows():
        x, y = cifar10c.load_corrupted(tmp_path / "data", name, severity, 40)
        with torch.no_grad():
            right = int((model(to_float(x)).argmax(1) == y).sum())
        assert row["correct"] == right and row["n"] == 40, (name, severity)
        assert row["data_digest"] != ev[ev["corruption"] == "none"]["data_digest"].iloc[0]
        assert json.loads(row["shards"]) and len(json.loads(row["shards"])) == 2
    severe = corrupted.set_index(["corruption", "severity", "defense"])["accuracy"]
    assert severe[("gaussian_noise", 5, "none")] <= severe[("gaussian_noise", 1, "none")]
    table = res.table("markdown")
    assert "common corruptions (CIFAR-10-C)" in table and "CIFAR-10-C accuracy %" in table
    mean = corrupted[corrupted["defense"] == "none"]["accuracy"].mean()
    assert f"{100 * mean:.1f}" in table
    parts = len(list((tmp_path / "out" / "eval").glob("part-*")))
    again = robustgrid.run(str(tmp_path / "s.yaml"), out=tmp_path / "out", executor="inline")
    assert len(list((tmp_path / "out" / "eval").glob("part-*"))) == parts and len(again.eval) == len(ev)
