"""Ray as the engine: a simulated 2-node cluster with GPUs declared, DDP trials on CPU, kill and resume.

One Ray instance (a `ray.cluster_utils.Cluster`) is shared by every test here: Ray's start-up
is the expensive part.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

ray = pytest.importorskip("ray")

from robustgrid.runner.cli import main
from robustgrid.runner.results import ResultStore


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 2})
    c.add_node(num_cpus=2, num_gpus=2)
    c.wait_for_nodes()
    ray.init(address=c.address, include_dashboard=False, log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


def sweep_file(tmp_path, name, **overrides):
    sweep = {
        "name": name,
        "data": {"dataset": "synthetic", "synthetic_train": 300, "synthetic_test": 40},
        "train": {"model": "simple_cnn", "lr": {"grid_search": [0.001, 0.002, 0.003, 0.004]}, "epochs": 1,
                  "batch_size": 64},
        "resources": {"cpus_per_trial": 0.5, "gpus_per_trial": 1},
        "evaluate": {"n_images": 32, "eps": [0, "8/255"], "defenses": ["none", "median"], "batch_size": 32,
                     "examples": 0},
    }
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        sweep[section][field] = value
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(sweep))
    return p


def test_simulated_cluster_runs_trials_on_distinct_gpus(cluster, tmp_path):
    out = tmp_path / "out"
    assert main(["run", str(sweep_file(tmp_path, "cluster")), "--out", str(out)]) == 0
    trials = ResultStore(out).read("trials")
    assert len(trials) == 4 and set(trials["status"]) == {"ok"}
    pairs = set(zip(trials["node_id"], trials["gpu_ids"]))
    assert len(pairs) == 4 and all(g != "" for _, g in pairs)          # one (node, GPU id) each
    assert trials["node_id"].nunique() == 2                              # both nodes used
    assert set(trials["device"]) == {"cpu"}                               # declared GPUs, no CUDA: CPU compute
    assert (trials["cuda_visible_devices"] == trials["gpu_ids"]).all()    # each trial sees its own GPU alone
    assert (out / "ray").is_dir() and any((out / "ray").iterdir())       # Ray's experiment folder
    ev = ResultStore(out).read_eval()
    # per trial: eps0 fp32/self, int8/self, int8/fp32 + eps>0 fp32/self, int8/fp32, int8/self (STE) -> 6 x 2 defenses
    assert len(ev) == 4 * 6 * 2


def test_inline_executor_gives_the_same_tables(cluster, tmp_path):
    ray_out, inline_out = tmp_path / "ray", tmp_path / "inline"
    p = sweep_file(tmp_path, "same", train__lr={"grid_search": [0.002]}, resources__gpus_per_trial=0)
    assert main(["run", str(p), "--out", str(ray_out)]) == 0
    assert main(["run", str(p), "--out", str(inline_out), "--executor", "inline"]) == 0
    a, b = ResultStore(ray_out), ResultStore(inline_out)
    for table in ("trials", "epochs"):
        assert list(a.read(table).columns) == list(b.read(table).columns)
    key = ["trial_id", "quant", "attack_source", "eps", "defense"]
    ea, eb = a.read_eval().sort_values(key), b.read_eval().sort_values(key)
    assert list(ea.columns) == list(eb.columns)
    # same trial ids (a trial is its config), same cells, same counts: training is deterministic on CPU
    assert ea[key].values.tolist() == eb[key].values.tolist()
    assert ea["correct"].tolist() == eb["correct"].tolist()
    # a trial that asked for no GPU sees none, on a cluster that has them; it is handed the CPU
    trials = a.read("trials")
    assert trials["cuda_visible_devices"].tolist() == [""] and trials["config_device"].tolist() == ["cpu"]


def test_zero_gpu_task_sees_no_gpu_and_a_gpu_task_its_own(cluster):
    from robustgrid.runner.execute.ray_setup import run_task

    def visible():
        return os.environ.get("CUDA_VISIBLE_DEVICES")
    task = ray.remote(run_task)
    for _ in range(3):   # workers are reused between GPU and CPU tasks: each one sees what it was given
        assert ray.get(task.options(num_cpus=0.5, num_gpus=0).remote(visible)) == ""
        assert ray.get(task.options(num_cpus=0.5, num_gpus=1).remote(visible)) in {"0", "1"}
        assert ray.get(task.options(num_cpus=0.5, num_gpus=2).remote(visible)) in {"0,1", "1,0"}


@pytest.mark.slow
def test_ddp_trial_with_two_workers_on_cpu(cluster, tmp_path):
    """Ray Train workers, TRADES for two epochs: under Ray train() reports every epoch, the path on which adversarial
    training crashed in its second epoch ('bool' object has no attribute 'trainer') while every direct call of
    train() passed. (FGSM-RS and PGD-AT through Tune: e2e's robust_training and fast_at_preact18, two epochs.)"""
    out = tmp_path / "out"
    p = sweep_file(tmp_path, "ddp", train__lr={"grid_search": [0.002]}, resources__gpus_per_trial=0,
                   resources__workers_per_trial=2, resources__cpus_per_trial=1, train__epochs=2,
                   train__adversarial="trades", train__adv_steps=2, train__robust_val_images=16,
                   evaluate__defenses=["none"])
    assert main(["run", str(p), "--out", str(out)]) == 0
    trials = ResultStore(out).read("trials")
    assert trials["status"].tolist() == ["ok"] and trials["world_size"].tolist() == [2]
    epochs = ResultStore(out).read("epochs")
    assert len(epochs) == 2 and epochs["robust_val_accuracy"].notna().all()


def test_a_failed_trial_says_why(cluster, tmp_path, capsys):
    """A node that declares GPUs it cannot drive: the trial fails inside Ray, and the user reads the exception and
    where it arose in the run's closing lines, trials.parquet and show (Ray's own frames never stand in for it)."""
    bad = tmp_path / "bad"
    p = sweep_file(tmp_path, "bad", train__lr={"grid_search": [0.002]}, train__device="cuda")
    assert main(["run", str(p), "--out", str(bad)]) == 1
    said = capsys.readouterr()
    said = " ".join((said.out + said.err).split())
    (error,) = ResultStore(bad).read("trials")["error"]
    assert error.startswith("RuntimeError: device: cuda asked for, but no CUDA device is visible") and "device.py:" in error
    assert error in said          # the closing lines (rich may wrap: compared with whitespace collapsed)
    assert main(["show", str(bad)]) == 0
    assert "no CUDA device is visible" in " ".join(capsys.readouterr().out.split())


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["optuna", "hyperopt"])
def test_a_searcher_killed_mid_search_resumes_with_each_trial_once(cluster, tmp_path, algorithm):
    """Ray Tune's OptunaSearch / HyperOptSearch draws num_samples configurations inside the sweep's ranges, each
    recorded as it is drawn (status running) and a trial whose id is the hash of its configuration; killed after
    the first trial, `--resume` continues the searcher: every trial once, the finished one not trained again.
    (hyperopt is not in the test extra: skipped without it.)"""
    pytest.importorskip(algorithm)
    out = tmp_path / "out"
    p = sweep_file(tmp_path, algorithm, train__lr={"loguniform": [0.0005, 0.02]}, train__weight_decay={"uniform": [0.0, 0.05]},
                   train__epochs=2, data__synthetic_train=1500, resources__gpus_per_trial=0, evaluate__defenses=["none"],
                   evaluate__eps=[0])
    raw = yaml.safe_load(p.read_text())
    raw.update(search={"algorithm": algorithm, "seed": 3, "max_concurrent": 1}, num_samples=4)
    p.write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, "-m", "robustgrid.runner.cli", "run", str(p), "--out", str(out), "--address", cluster.address]
    _kill_after_first_trial(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                             start_new_session=True), out, until_the_next_is_drawn=True)
    before = ResultStore(out).read("trials")
    done = before.loc[before["status"] == "ok", "trial_id"].tolist()
    assert 1 <= len(done) < 4 and "running" in set(before["status"])      # the next draw was recorded before it trained
    mtime = (out / "checkpoints" / done[0] / "best.pt").stat().st_mtime
    assert main(["run", str(p), "--out", str(out), "--resume", "--address", cluster.address]) == 0
    trials = ResultStore(out).read("trials")
    ok = trials[trials["status"] == "ok"]
    assert len(ok) == 4 and ok["trial_id"].is_unique and "running" not in set(trials["status"])
    assert ok["lr"].between(0.0005, 0.02).all() and ok["weight_decay"].between(0.0, 0.05).all()
    assert (out / "checkpoints" / done[0] / "best.pt").stat().st_mtime == mtime     # not trained again
    assert not ResultStore(out).read("epochs").duplicated(["trial_id", "epoch"]).any()
    from robustgrid.runner.results.plots import plot_all
    from robustgrid.runner.results.views import searched_keys
    assert searched_keys(out) == {"lr": True, "weight_decay": False}     # lr on a log axis
    assert out / "plots" / "search_metric_by_key.png" in plot_all(out)


def _kill_after_first_trial(proc: subprocess.Popen, out: Path, until_the_next_is_drawn: bool = False) -> None:
    """Kill the run (its whole process group) once a trial has finished (and, if asked, the next one is recorded)."""
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            status = set(pd.read_parquet(out / "trials.parquet")["status"]) if (out / "trials.parquet").exists() else set()
            if "ok" in status and ("running" in status or not until_the_next_is_drawn):
                break
            time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()


RESUME_TIMEOUT = 300


def _pbt_story(out, killed, trials, stderr: str) -> str:
    """The rows before and after the resume, and the resumed driver's and Tune's last words."""
    cols = ["trial_id", "status", "error", "epochs_run", "lineage"]
    log = out / "ray" / "driver.log"
    tail = log.read_text()[-4000:] if log.exists() else "(no driver.log)"
    return (f"killed:\n{killed.reindex(columns=cols).to_string()}\nresumed:\n{trials.reindex(columns=cols).to_string()}"
            f"\nstderr:\n{stderr[-3000:]}\ndriver.log:\n{tail}")


@pytest.mark.slow
def test_pbt_clones_a_stronger_trials_checkpoint_records_the_lineage_and_resumes_after_a_kill(cluster, tmp_path):
    """Synchronous PBT, two trials, quantile 0.5: after epoch 1 the weaker takes the stronger's checkpoint (so
    both histories share their first epoch to the last digit, which lr 1e-5 and 0.05 would never give), its id
    and folder stay its own, and each clone is in the trials table's lineage. Killed after the first clone,
    `--resume` continues each trial from its own last.pt: each trial once, the lineage kept."""
    out = tmp_path / "out"
    p = sweep_file(tmp_path, "pbt", train__lr={"grid_search": [0.00001, 0.05]}, train__epochs=4, train__optimizer="sgd",
                   data__synthetic_train=1500, resources__gpus_per_trial=0, evaluate__defenses=["none"], evaluate__eps=[0])
    raw = yaml.safe_load(p.read_text())
    raw["scheduler"] = {"type": "pbt", "perturbation_interval": 1, "quantile_fraction": 0.5,
                        "mutations": {"lr": {"loguniform": [0.00001, 0.1]}}}
    p.write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, "-m", "robustgrid.runner.cli", "run", str(p), "--out", str(out), "--address", cluster.address]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not any(f.stat().st_size for f in out.glob("ray/train-*/pbt_global.txt")):
            time.sleep(0.2)      # Tune's log of the first clone
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    killed = ResultStore(out).read("trials")
    assert not (killed["status"] == "ok").all()      # killed mid-run
    # a process with a time bound: a population waiting at a sync point for a member that left spun forever
    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=RESUME_TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    trials = ResultStore(out).read("trials")
    from robustgrid.runner.execute import Sweep
    from robustgrid.runner.spec import validate
    planned = {t["trial_id"]: t["config"]["lr"] for t in Sweep(validate(raw), raw, out).trials()}
    assert dict(zip(trials["trial_id"], trials["lr"])) == planned
    # seen once in CI in ~40 runs, not reproduced since: a trial 'stopped' after the resume; what to read then
    assert set(trials["status"]) == {"ok"}, _pbt_story(out, killed, trials, resumed.stderr)
    steps = [step for lineage in trials["lineage"].dropna() for step in json.loads(lineage)]
    assert steps
    for step in steps:
        assert {step["to"], step["from"]} == set(planned) and 1 <= step["epoch"] < 4
        # the lr in force within the mutation's bounds (a trial resumed at its planned lr with an optimizer at the
        # perturbed one once handed a clone 56, and its loss went NaN)
        assert 0 < step["config"]["lr"] <= 0.1
    epochs = ResultStore(out).read("epochs")
    assert not epochs.duplicated(["trial_id", "epoch"]).any() and len(epochs) == 8
    assert epochs["lr"].le(0.1).all() and epochs["train_loss"].notna().all()
    first = epochs[epochs["epoch"] == 1]
    assert first["train_loss"].nunique() == 1 and first["val_accuracy"].nunique() == 1


def test_too_small_cluster_is_refused_with_the_reason(cluster, tmp_path, capsys):
    p = sweep_file(tmp_path, "big", resources__cpus_per_trial=3, resources__workers_per_trial=2,
                   resources__gpus_per_trial=0)
    assert main(["run", str(p), "--out", str(tmp_path / "o")]) == 2
    assert "resources.cpus_per_trial" in capsys.readouterr().err


@pytest.mark.slow
def test_kill_and_resume_loses_and_duplicates_nothing(cluster, tmp_path):
    out = tmp_path / "out"
    p = sweep_file(tmp_path, "resume", train__lr={"grid_search": [0.001, 0.002]}, train__epochs=3,
                   data__synthetic_train=1500, resources__gpus_per_trial=0, resources__max_concurrent_trials=1)
    cmd = [sys.executable, "-m", "robustgrid.runner.cli", "run", str(p), "--out", str(out), "--address", cluster.address]
    # kill once the first trial has finished, mid-sweep
    _kill_after_first_trial(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                             start_new_session=True), out)
    first = ResultStore(out).read("trials")
    first = first[first["status"] == "ok"]
    assert len(first) == 1
    done_id = first["trial_id"].iloc[0]
    done_ckpt = out / "checkpoints" / done_id / "best.pt"
    mtime = done_ckpt.stat().st_mtime
    assert main(["run", str(p), "--out", str(out), "--resume", "--address", cluster.address]) == 0
    trials = ResultStore(out).read("trials")
    assert sorted(trials["trial_id"]) == sorted(set(trials["trial_id"])) and len(trials) == 2
    assert set(trials["status"]) == {"ok"}
    assert done_ckpt.stat().st_mtime == mtime                    # the finished trial was not retrained
    epochs = ResultStore(out).read("epochs")
    assert len(epochs) == 6 and not epochs.duplicated(["trial_id", "epoch"]).any()
    ev = ResultStore(out).read_eval()
    assert len(ev) == 2 * 6 * 2 and not ev.duplicated(["trial_id", "quant", "attack_source", "eps", "defense"]).any()


def test_int8_cells_split_by_defense_over_free_cpus():
    from robustgrid.runner.execute.ray_eval import _int8_tasks_per_checkpoint, _split
    defenses = {n: {} for n in ("none", "gaussian_blur", "jpeg", "median", "tv_denoise")}
    assert _int8_tasks_per_checkpoint(16, 1, 5, has_gpu=True) == 5       # one GPU box: int8 over 5 cores
    assert _int8_tasks_per_checkpoint(2, 4, 5, has_gpu=True) == 1        # always off the GPU task
    assert _int8_tasks_per_checkpoint(2, 4, 5, has_gpu=False) == 0       # 2 cores, 4 models: one task each
    assert _int8_tasks_per_checkpoint(8, 2, 5, has_gpu=False) == 3       # 4 slots a model: fp32 task + 3
    chunks = _split(defenses, 3)
    assert len(chunks) == 3 and sorted(n for c in chunks for n in c) == sorted(defenses)   # each defense once


@pytest.mark.slow
def test_first_ctrl_c_stops_the_run_and_resume_finishes_it(tmp_path):
    """A private local Ray in a child process (no --address): the first SIGINT during training ends
    the run with 130 and the resume line; --resume then finishes with nothing lost, nothing twice,
    the finished trial not retrained. (Run after the module's cluster fixture, it also shows that local
    mode starts its own Ray rather than joining the one on the machine.)"""
    p = sweep_file(tmp_path, "sigint", train__lr={"grid_search": [0.001, 0.002]}, train__epochs=4,
                   data__synthetic_train=3000, resources__gpus_per_trial=0, resources__cpus_per_trial=1,
                   resources__max_concurrent_trials=1)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [sys.executable, "-m", "robustgrid.runner.cli", "run", str(p), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        deadline = time.time() + 240     # the first trial finished, the second one training
        while time.time() < deadline and not ((out / "trials.parquet").exists()
                                              and (pd.read_parquet(out / "trials.parquet")["status"] == "ok").any()):
            time.sleep(0.5)
        time.sleep(2)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130 and "--resume" in output
    done = ResultStore(out).read("trials")
    done = done[done["status"] == "ok"]          # the second: running when stopped, then `stopped`
    assert len(done) == 1
    mtime = (out / "checkpoints" / done["trial_id"].iloc[0] / "best.pt").stat().st_mtime
    assert subprocess.run(cmd + ["--resume"], env=env, capture_output=True, timeout=400).returncode == 0
    trials, ev = pd.read_parquet(out / "trials.parquet"), pd.read_parquet(out / "eval")
    assert sorted(trials["status"]) == ["ok"] * 2 and len(ev) == 2 * 6 * 2
    assert not ev.duplicated(["trial_id", "quant", "attack_source", "eps", "defense"]).any()
    assert (out / "checkpoints" / done["trial_id"].iloc[0] / "best.pt").stat().st_mtime == mtime


@pytest.mark.slow
def test_no_ray_process_outlives_a_killed_run(tmp_path):
    """kill -9 of a local-mode run: Ray's agents would stay behind (reparented to init); the watchdog
    started with the private Ray removes every process of it within seconds."""
    psutil = pytest.importorskip("psutil")
    p = sweep_file(tmp_path, "orphans", train__lr={"grid_search": [0.001]}, train__epochs=20,
                   data__synthetic_train=3000, resources__gpus_per_trial=0, resources__cpus_per_trial=1)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([sys.executable, "-m", "robustgrid.runner.cli", "run", str(p), "--out", str(tmp_path / "o")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        me = psutil.Process(proc.pid)
        deadline, agents = time.time() + 120, []
        while time.time() < deadline and not agents:
            agents = [c for c in me.children(recursive=True) if c.name().startswith("ray::") and "Agent" in c.name()]
            time.sleep(0.5)
        assert agents, "no Ray agent seen"
        time.sleep(2)      # the watchdog polls twice a second
        ray_procs = [c for c in me.children(recursive=True)]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.time() + 30
        while time.time() < deadline and any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in ray_procs):
            time.sleep(0.5)
        left = [c.name() for c in ray_procs if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        assert left == [], left
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def _run_cli(args: list[str], timeout: float, **env_extra) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | env_extra
    return subprocess.run([sys.executable, "-m", "robustgrid.runner.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_an_address_that_does_not_answer_is_one_line_and_exit_2(tmp_path):
    """No Ray at the address: refused in seconds. Something listening that never answers like a Ray
    head (Ray itself would retry it for ever): the bounded wait ends the run with status 2."""
    import socket
    p, out = sweep_file(tmp_path, "noray", resources__gpus_per_trial=0), tmp_path / "out"
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    done = _run_cli(["run", str(p), "--out", str(out), "--address", f"127.0.0.1:{port}"], timeout=60)
    assert done.returncode == 2 and "cannot reach Ray at" in done.stderr + done.stdout
    with socket.socket() as mute:          # accepts, says nothing
        mute.bind(("0.0.0.0", 0))     # Ray dials the node IP for 127.0.0.1
        mute.listen()
        done = _run_cli(["run", str(p), "--out", str(out), "--address", f"127.0.0.1:{mute.getsockname()[1]}"],
                        timeout=90, ROBUSTGRID_RAY_INIT_TIMEOUT_S="8")
    assert done.returncode == 2 and "did not start or answer within 8 s" in done.stderr, done.stderr[-2000:]
    assert not out.exists()                 # nothing written


@pytest.mark.slow
def test_local_mode_never_joins_a_ray_found_on_the_machine(tmp_path):
    """Someone's `ray start --head` (1 CPU) on the machine: a local run starts its own Ray (its trial
    needs 2 CPUs, which only a private Ray of this machine has). Then that Ray dies without cleaning
    up (kill -9: its current-cluster file stays): the next local run neither hangs nor fails."""
    psutil = pytest.importorskip("psutil")
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray_cli = str(Path(sys.executable).with_name("ray"))
    started = subprocess.run([ray_cli, "start", "--head", f"--port={port}", "--num-cpus=1", "--num-gpus=0",
                              "--include-dashboard=false", "--disable-usage-stats"],
                             capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr[-2000:]

    # its GCS and raylet name the port; its agents are the raylet's children
    heads = [q for q in psutil.process_iter(["cmdline"])
             if any(a.endswith((f"={port}", f":{port}")) for a in (q.info["cmdline"] or []))]
    strangers = heads + [c for q in heads for c in q.children(recursive=True)]

    def kill_strangers():
        for q in strangers:
            try:
                q.kill()
            except psutil.Error:
                pass
    try:
        p = sweep_file(tmp_path, "private", train__lr={"grid_search": [0.002]}, resources__gpus_per_trial=0,
                       resources__cpus_per_trial=2)
        done = _run_cli(["run", str(p), "--out", str(tmp_path / "a")], timeout=300)
        assert done.returncode == 0, (done.stdout + done.stderr)[-2000:]
        kill_strangers()
        done = _run_cli(["run", str(p), "--out", str(tmp_path / "b")], timeout=300)
        assert done.returncode == 0, (done.stdout + done.stderr)[-2000:]
        assert len(pd.read_parquet(tmp_path / "b" / "eval")) == 6 * 2
    finally:
        kill_strangers()


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["kill -9 in evaluation", "ctrl-c in evaluation"])
def test_fault_matrix_loses_nothing_and_duplicates_nothing(cluster, tmp_path, fault):
    """A small real sweep hit mid-evaluation (the training-time cases are the tests above): a second
    run on the same folder meanwhile is refused at once; the rerun with --resume ends with every
    trial and every cell exactly once (plain pd.read_parquet), no finished trial trained again."""
    out = tmp_path / "out"
    p = sweep_file(tmp_path, "matrix", train__lr={"grid_search": [0.002]}, data__synthetic_test=400,
                   resources__gpus_per_trial=0, resources__cpus_per_trial=1, evaluate__n_images=400,
                   evaluate__shard_images=200,      # 2 shards a cell: killed between shards, resumed by shard
                   evaluate__defenses=["none", "tv_denoise"], evaluate__attacks=["fgsm", {"pgd": {"steps": 10}}])
    cmd = [sys.executable, "-m", "robustgrid.runner.cli", "run", str(p), "--out", str(out), "--address", cluster.address]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and not list((out / "eval").glob("part-*")):
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before its evaluation could be hit"
        mtimes = {c: c.stat().st_mtime for c in (out / "checkpoints").glob("*/best.pt")}
        if fault.startswith("kill"):
            second = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            assert second.returncode == 2 and "in use by another robustgrid run" in second.stdout + second.stderr
            assert proc.poll() is None, "the refused second run must leave the first alone"
        os.killpg(proc.pid, signal.SIGKILL if fault.startswith("kill") else signal.SIGINT)
        output, _ = proc.communicate(timeout=90)
        if fault.startswith("ctrl-c"):
            assert proc.returncode == 130 and "--resume" in output, output[-2000:]
        resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=400)
        assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-2000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    trials, ev = pd.read_parquet(out / "trials.parquet"), pd.read_parquet(out / "eval")
    assert trials["status"].tolist() == ["ok"]
    from robustgrid.runner.evaluate import count_cells
    from robustgrid.runner.spec import load_spec
    assert len(ev) == count_cells(load_spec(p)[0].evaluate)
    assert not ev.duplicated(["trial_id", "quant", "attack", "attack_params", "attack_source", "eps", "defense"]).any()
    assert {c: c.stat().st_mtime for c in mtimes} == mtimes          # nothing finished was retrained
    shards = pd.read_parquet(out / "shards")      # resumed by shard: no shard that had landed was computed again
    assert not shards.duplicated(["quant", "attack", "attack_params", "attack_source", "eps", "defense", "shard_start"]).any()
    assert set(ev["shards"].map(lambda s: len(json.loads(s)))) == {2}


@pytest.mark.slow
def test_a_node_removed_mid_sweep_has_its_trial_and_its_evaluation_rerun_elsewhere(tmp_path):
    """A cluster of three 2-CPU worker nodes (the head takes no work). The node running a trial is
    removed mid-training, then the node running an evaluation task is removed mid-evaluation: Tune
    retries the trial from its last checkpoint and Ray the task, on the nodes left; every trial and
    every cell ends up exactly once. (A trial's or a task's worker dying alone is the same fault from
    Ray's side, less: this test stands for both.)"""
    psutil = pytest.importorskip("psutil")
    from ray import ray_constants
    from ray.cluster_utils import Cluster
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        nodes = [c.add_node(num_cpus=2) for _ in range(3)]
        c.wait_for_nodes()
        raylets = {n: psutil.Process(n.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid) for n in nodes}

        def node_running(name: str):
            for n, raylet in raylets.items():
                try:
                    if any(name in q.name() for q in raylet.children(recursive=True)):
                        return n
                except psutil.Error:
                    pass
            return None
        out = tmp_path / "out"
        p = sweep_file(tmp_path, "nodes", train__lr={"grid_search": [0.002, 0.003]}, train__epochs=3,
                       data__synthetic_train=3000, data__synthetic_test=200, resources__gpus_per_trial=0,
                       resources__cpus_per_trial=2, resources__max_failures=2, evaluate__n_images=200,
                       evaluate__shard_images=100,      # a node removed mid-shard: the shard runs again elsewhere
                       evaluate__defenses=["none", "tv_denoise"], evaluate__attacks=["fgsm", {"pgd": {"steps": 10}}])
        cmd = [sys.executable, "-m", "robustgrid.runner.cli", "run", str(p), "--out", str(out), "--address", c.address]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        removed = []
        try:
            for phase, name, ready in [
                    ("training", "ImplicitFunc", lambda: bool(list((out / "checkpoints").glob("*/last.pt")))),
                    ("evaluation", "::run_", lambda: (out / "trials.parquet").exists()   # run_task, run_shard_task
                     and len(pd.read_parquet(out / "trials.parquet")) == 2)]:
                deadline, victim = time.time() + 300, None
                while time.time() < deadline and victim is None and proc.poll() is None:
                    victim = node_running(name) if ready() else None
                    time.sleep(0.2)
                assert victim is not None, f"no {name} seen on a worker node during {phase}"
                time.sleep(1.0)                                       # mid-flight
                c.remove_node(victim, allow_graceful=False)
                raylets.pop(victim)
                removed.append(victim.node_id)
            output, _ = proc.communicate(timeout=400)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        assert len(removed) == 2 and proc.returncode == 0, output[-3000:]
    finally:
        c.shutdown()
    trials, ev = pd.read_parquet(out / "trials.parquet"), pd.read_parquet(out / "eval")
    assert sorted(trials["status"]) == ["ok", "ok"] and trials["trial_id"].is_unique
    assert removed[0] not in set(trials["node_id"])                       # the trial finished on another node
    epochs = pd.read_parquet(out / "epochs.parquet")
    assert len(epochs) == 2 * 3 and not epochs.duplicated(["trial_id", "epoch"]).any()
    from robustgrid.runner.evaluate import count_cells
    from robustgrid.runner.spec import load_spec
    assert len(ev) == 2 * count_cells(load_spec(p)[0].evaluate)
    assert not ev.duplicated(["trial_id", "quant", "attack", "attack_params", "attack_source", "eps", "defense"]).any()
