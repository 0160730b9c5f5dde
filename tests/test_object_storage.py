"""Results on object storage, against a real S3-compatible server (moto's server mode) started here on loopback
with throwaway credentials: a sweep to s3:// has the cells of a folder, `show`/`report`/`load` read it, a second run
is refused by the store's lock, and a killed run resumes from the store alone (its working copy deleted)."""
from __future__ import annotations

import os
import shutil
import sys
import time

import pandas as pd
import pytest
import yaml

moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")

from robustgrid import files
from robustgrid.runner.cli import main

BUCKET = "robustgrid-test"
CELL = ["trial_id", "quant", "attack", "attack_params", "threat", "eps", "defense", "defense_params"]
SAME = ["n", "correct", "accuracy", "ci_low", "ci_high", "candidates", "delivered_linf", "correct_mask"]
SWEEP = {"name": "on_s3", "data": {"dataset": "synthetic", "synthetic_train": 300, "synthetic_test": 60},
         "train": {"model": "simple_cnn", "lr": 0.003, "epochs": 1, "batch_size": 64},
         "evaluate": {"n_images": 60, "shard_images": 10, "eps": [0, "16/255"], "batch_size": 10, "examples": 2,
                      "attacks": [{"pgd": {"steps": 20}}], "defenses": ["none", "median"], "quant": ["fp32"]}}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on 127.0.0.1 (a port of its choosing), the AWS environment pointing at it."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    mp = pytest.MonkeyPatch()
    for k, v in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
                 "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                 "ROBUSTGRID_STORE_CACHE": str(tmp_path_factory.mktemp("store-cache"))}.items():
        mp.setenv(k, v)
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        mp.delenv(k, raising=False)
    client = boto3.client("s3", endpoint_url=f"http://{host}:{port}")
    client.create_bucket(Bucket=BUCKET)
    yield client
    mp.undo()
    server.stop()


@pytest.fixture(autouse=True)
def no_mirror_leaks(monkeypatch):
    """A working copy registered by one test is not another's (the registry lives in the environment)."""
    monkeypatch.setenv(files.MIRRORS_ENV, "")     # recorded, so the test's mirrors are undone after it
    files._store.cache_clear()
    yield
    files._store.cache_clear()


def keys(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/")
    # (pyarrow leaves an empty "folder/" marker where it deleted a folder's last object: not a file)
    return [o["Key"][len(prefix) + 1:] for page in pages for o in page.get("Contents", []) if not o["Key"].endswith("/")]


def cells(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(CELL).reset_index(drop=True)[CELL + SAME]


def test_a_sweep_on_s3_has_a_folders_cells_and_a_killed_run_resumes_from_the_store_alone(s3, tmp_path, capsys, kill_once):
    """The same sweep into a folder and into s3://: the same cells. Killed (SIGKILL) once some shards are in the
    store, its working copy then deleted (another machine), the resumed run takes the trained trial and the
    shards from the store, computes only what is missing, and writes each cell once."""
    import robustgrid
    from robustgrid.objectstore import working_copy
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(SWEEP))
    assert main(["run", str(p), "--out", str(tmp_path / "folder"), "--executor", "inline"]) == 0
    uri = f"s3://{BUCKET}/runs/cut"
    cmd = [sys.executable, "-m", "robustgrid.runner.cli", "run", str(p), "--out", uri, "--executor", "inline"]
    kill_once(cmd, lambda: any(k.startswith("shards/part-") for k in keys(s3, "runs/cut")), timeout_s=180,
              env={**os.environ, files.MIRRORS_ENV: "", "ROBUSTGRID_LOCK_LEASE_S": "2"})
    stored = keys(s3, "runs/cut")
    assert "trials.parquet" in stored and any(k.startswith("checkpoints/") and k.endswith("best.pt") for k in stored)
    assert not any(k.startswith("eval/") for k in stored), "killed mid-evaluation: no cell whole yet"
    best = next(k for k in stored if k.endswith("best.pt"))
    trained = s3.head_object(Bucket=BUCKET, Key=f"runs/cut/{best}")["ETag"]
    shutil.rmtree(working_copy(uri))          # a fresh machine: everything comes from the store
    assert main(["run", str(p), "--out", uri, "--executor", "inline"]) == 2, "the killed run's lease still runs"
    assert "in use by another robustgrid run" in capsys.readouterr().err.replace("\n", " ")
    time.sleep(2.1)                           # ... until it runs out, unrenewed
    assert main(["run", str(p), "--out", uri, "--resume", "--executor", "inline"]) == 0
    assert s3.head_object(Bucket=BUCKET, Key=f"runs/cut/{best}")["ETag"] == trained, "the trained trial was kept"
    shards = pd.concat(pd.read_parquet(working_copy(uri) / "shards" / k.split("/")[-1])
                       for k in keys(s3, "runs/cut") if k.startswith("shards/part-"))
    assert not shards.duplicated(CELL + ["shard_start"]).any(), "a shard stored before the kill ran again"
    on_s3 = robustgrid.load(uri).eval
    assert len(on_s3) == 2 * 2 and not on_s3.duplicated(CELL).any()
    assert cells(on_s3).equals(cells(robustgrid.load(tmp_path / "folder").eval))
    assert ".robustgrid.lock" not in keys(s3, "runs/cut"), "the lock is released when the run ends"

    shutil.rmtree(working_copy(uri))          # show and report read the store, the report lands in it
    assert main(["show", uri]) == 0
    assert "pgd" in capsys.readouterr().out
    assert main(["report", uri]) == 0
    assert "report.html" in keys(s3, "runs/cut") and any(k.startswith("examples/") for k in keys(s3, "runs/cut"))


def test_a_second_run_into_a_held_store_is_refused_naming_the_holder(s3, tmp_path, capsys):
    """Another machine holds the store's lock (a lease in the store, not this machine's flock): refused,
    exit 2, the holder named, nothing written. Once its lease has run out unrenewed, the store is taken over."""
    from robustgrid.objectstore import ObjectStore, StoreBusy, StoreLease
    uri = f"s3://{BUCKET}/runs/held"
    other = StoreLease(ObjectStore(uri), lease_s=30).acquire()
    try:
        p = tmp_path / "s.yaml"
        p.write_text(yaml.safe_dump(SWEEP))
        assert main(["run", str(p), "--out", uri, "--executor", "inline"]) == 2
        assert other.holder in capsys.readouterr().err.replace("\n", " ")
        assert keys(s3, "runs/held") == [".robustgrid.lock"]
        with pytest.raises(StoreBusy):
            StoreLease(ObjectStore(uri)).acquire()
    finally:
        other.release()
    assert keys(s3, "runs/held") == []
    killed = StoreLease(ObjectStore(uri), lease_s=0.6).acquire()
    killed._stop.set()                         # the holder dies: its lease is no longer renewed, nor released
    with pytest.raises(StoreBusy):
        StoreLease(ObjectStore(uri)).acquire()
    time.sleep(0.8)
    taken = StoreLease(ObjectStore(uri)).acquire()
    taken.release()


@pytest.mark.parametrize("uri, said", [("gs://bucket/x", "gs:// is not supported"),
                                       (f"s3://{BUCKET}", "name a prefix inside the bucket"),
                                       ("s3://no-such-bucket/x", "no bucket 'no-such-bucket'")])
@pytest.mark.parametrize("command", [["run", "quickstart", "--out"], ["show"], ["eval"]])
def test_a_location_robustgrid_cannot_use_is_refused_before_anything_is_written(s3, tmp_path, monkeypatch, capsys,
                                                                               uri, said, command):
    monkeypatch.chdir(tmp_path)
    assert main([*command, uri]) == 2
    assert said in capsys.readouterr().err.replace("\n", " ")
    assert not any(tmp_path.iterdir()), "nothing written, no folder named after the URI"


def test_a_write_reaches_the_store_before_the_working_copy_and_pull_makes_the_copy_equal(s3, tmp_path):
    """atomic_write uploads first (a copy never holds what its store lacks); pull downloads what changed and
    removes what the store does not hold; ensure_local fetches a file another node wrote."""
    from robustgrid.objectstore import ObjectStore
    store = ObjectStore(f"s3://{BUCKET}/unit")
    local = tmp_path / "copy"
    files.add_mirror(local, store.uri)
    with files.atomic_write(local / "a" / "x.bin") as f:
        f.write(b"written here")
    assert s3.get_object(Bucket=BUCKET, Key="unit/a/x.bin")["Body"].read() == b"written here"
    s3.put_object(Bucket=BUCKET, Key="unit/checkpoints/t1/best.pt", Body=b"from another node")
    assert files.ensure_local(local / "checkpoints" / "t1" / "best.pt")
    assert (local / "checkpoints" / "t1" / "best.pt").read_bytes() == b"from another node"
    assert not files.ensure_local(local / "checkpoints" / "t2" / "best.pt")
    (local / "stale.parquet").write_bytes(b"not in the store")
    (local / ".part-1.parquet.1a2b3c4d.tmp").write_bytes(b"another run is writing it")
    s3.put_object(Bucket=BUCKET, Key="unit/a/x.bin", Body=b"rewritten elsewhere")
    counts = store.pull(local)
    assert not (local / "stale.parquet").exists() and (local / "a" / "x.bin").read_bytes() == b"rewritten elsewhere"
    assert (local / ".part-1.parquet.1a2b3c4d.tmp").exists(), "a write in flight is not a stale file"
    assert store.pull(local) == {"objects": 2, "downloaded": 0, "removed": 0}, counts
    files.replace(local / "a" / "x.bin", local / "a" / ".damaged-x.bin")
    assert sorted(keys(s3, "unit")) == ["a/.damaged-x.bin", "checkpoints/t1/best.pt"]


@pytest.mark.slow
def test_a_sweep_through_ray_keeps_everything_in_the_store(s3, tmp_path, capsys):
    """The path users take on a cluster without a shared disk: `robustgrid run` on Ray into s3:// (an Optuna search:
    its parameter space once split the store's mirrors, a dict keyed by paths, into nested parameters). Tune keeps its
    experiment in the store (storage_path), each trial's checkpoints and the examples its tasks draw go there
    from the worker that made them, and the cells read back from the store alone are every planned cell, once."""
    import ray
    import robustgrid
    from robustgrid.objectstore import working_copy
    if ray.is_initialized():       # a Ray started before the store's environment: its workers could not reach it
        ray.shutdown()
    # a searcher's trials (Optuna through Tune): the store's mirrors travel in its parameter space, whole
    sweep = {**SWEEP, "name": "on_s3_ray", "train": {**SWEEP["train"], "lr": {"loguniform": [0.003, 0.01]}},
             "search": {"algorithm": "optuna", "seed": 0}, "num_samples": 2, "evaluate": {**SWEEP["evaluate"], "n_images": 20}}
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(sweep))
    uri = f"s3://{BUCKET}/runs/ray"
    try:
        assert main(["run", str(p), "--out", uri]) == 0
    finally:
        ray.shutdown()
    stored = keys(s3, "runs/ray")
    assert sum(k.startswith("checkpoints/") and k.endswith("/best.pt") for k in stored) == 2
    assert any(k.startswith("ray/train-") for k in stored), "Tune's experiment is in the store"
    from robustgrid.runner.execute.ray_trials import _restorable
    assert _restorable(f"{uri}/ray").startswith(f"{uri}/ray/train-"), "--resume finds it there"
    assert {"trials.parquet", "epochs.parquet", "sweep.yaml"} <= set(stored)
    assert any(k.startswith("examples/") for k in stored) and any(k.startswith("plots/") for k in stored)
    shutil.rmtree(working_copy(uri))
    res = robustgrid.load(uri)
    assert (res.trials["status"] == "ok").all() and len(res.trials) == 2
    assert len(res.eval) == 2 * 2 * 2 and not res.eval.duplicated(CELL).any()
