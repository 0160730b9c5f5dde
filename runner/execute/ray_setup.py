"""Ray for `robustgrid run`: started inside this process (laptop) or joined (`--address`,
RAY_ADDRESS); the cluster checked before anything waits on it; the devices each trial and task
may touch. Code that runs inside trials and tasks starts with `hide_unassigned_gpus`."""
from __future__ import annotations

import os
import socket
import sys
import threading
from pathlib import Path

from ...files import MIRRORS_ENV, adopt_mirrors, store_of
from ..console import console
from ..spec import SpecError
from .sweep import Sweep


def _where() -> dict[str, str]:
    import ray
    ctx = ray.get_runtime_context()
    return {"node": socket.gethostname(), "node_ip": ray.util.get_node_ip_address(),
            "node_id": ctx.get_node_id(), "gpu_ids": ",".join(str(g) for g in ray.get_gpu_ids()),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)")}


def hide_unassigned_gpus() -> None:
    """A trial or task that Ray gave no GPU sees none, whatever the machine has.

    Ray >= 2.48 leaves CUDA_VISIBLE_DEVICES alone when zero GPUs are assigned, so such a process
    would see (and open a context on) every GPU of its node, GPUs Ray gave to others. Runs
    before anything touches CUDA in the process; the device passed in is 'cpu' as well.
    """
    import ray
    if not ray.get_gpu_ids():
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def device_for(setting: str, gpus: float) -> str:
    """The device a trial or task is handed: 'auto' with no GPU reserved is the CPU, explicitly."""
    return "cpu" if setting == "auto" and gpus == 0 else setting


def run_task(fn, *args, mirrors: dict[str, str] | None = None, **kwargs):
    """Body of every evaluation task: devices first, the driver's store mirrors (what the task writes, examples,
    goes to the store), then the plain function."""
    hide_unassigned_gpus()
    adopt_mirrors(mirrors)
    return fn(*args, **kwargs)


def run_shard_task(fn, *args, **kwargs) -> list[dict]:
    """An evaluation shard's task: its rows say where it ran (node, the GPU ids Ray gave it)."""
    rows = run_task(fn, *args, **kwargs)
    where = _where()
    for r in rows:
        r.update(node=f"{where['node_ip']}/{where['node_id'][:8]}", gpu_ids=where["gpu_ids"])
    return rows


def init_ray(address: str | None) -> None:
    """Start Ray in this process (address None) or join a cluster. Ray's own banners and warnings
    stay in Ray's logs (session folder, results/ray/driver.log); robustgrid's output stays readable."""
    import logging

    import ray
    if ray.is_initialized():
        return
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")  # a small checkpoint an epoch is intended
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")   # Tune's boxed experiment header and TensorBoard hint
    # The first Ctrl-C stops the run: Tune's own handler would take it, fail the running trial and go on.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    # Workers given no GPU get CUDA_VISIBLE_DEVICES="" from Ray as well (hide_unassigned_gpus is the
    # guarantee; this makes Ray do it before our code runs, in this job's workers on any node).
    env = {"RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1"}
    # Results on object storage: every node talks to the same store (its credentials are each node's own).
    env.update({k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION",
                                           MIRRORS_ENV) if os.environ.get(k)})
    # Local mode is always a private Ray of this process ('local'), never one found on the machine:
    # ray.init() alone would join a stranger's (or a dead test cluster's) from Ray's current-cluster file.
    if address is None:
        from .reaper import reap_local_ray_on_exit
        reap_local_ray_on_exit()
    else:
        _check_reachable(address)
    # Ray retries an address that stopped answering for ever (a dead head, a stale current-cluster
    # file): bound the wait, say why, and leave with the bad-input status before anything is written.
    bound = float(os.environ.get("ROBUSTGRID_RAY_INIT_TIMEOUT_S", INIT_TIMEOUT_S if address else LOCAL_INIT_TIMEOUT_S))
    timer = threading.Timer(bound, _give_up, args=(address, bound))
    timer.daemon = True
    timer.start()
    try:
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": env}, logging_level=logging.ERROR if address is None else logging.WARNING)
    finally:
        timer.cancel()


INIT_TIMEOUT_S = 45.0          # joining a cluster that answered the probe
LOCAL_INIT_TIMEOUT_S = 180.0   # starting a private Ray on a loaded laptop


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """--address (or RAY_ADDRESS) must name a Ray that answers; Ray itself would wait for ever."""
    from ray._private.services import canonicalize_bootstrap_address
    try:
        target = address.removeprefix("ray://") if address.startswith("ray://") \
            else canonicalize_bootstrap_address(address)
    except ConnectionError:
        raise SpecError(f"--address {address}: no running Ray found on this machine "
                        "(start one with `ray start --head`, or leave out --address to run locally)") from None
    host, _, port = (target or "").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as e:
        raise SpecError(f"--address {address}: cannot reach Ray at {target} ({e}); is the head node up? "
                        "Leave out --address (and RAY_ADDRESS) to run locally") from None


def _give_up(address: str | None, bound: float) -> None:
    where = f"the Ray at {address}" if address else "a local Ray"
    print(f"error: {where} did not start or answer within {bound:.0f} s; nothing was written. "
          "Check `ray status` on the head node, or leave out --address to run locally.", file=sys.stderr, flush=True)
    os._exit(2)


def check_cluster(sweep: Sweep, address: str | None) -> None:
    """Fail early, with the reason, where Ray would otherwise wait forever."""
    import ray
    r = sweep.spec.resources
    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0), total.get("GPU", 0)
    need_cpu = r.cpus_per_trial * r.workers_per_trial
    if need_cpu > cpus:
        raise SpecError(f"resources.cpus_per_trial: a trial needs {need_cpu:g} CPUs "
                        f"({r.workers_per_trial} worker(s) x {r.cpus_per_trial:g}) but the cluster has {cpus:g}; "
                        "Ray would wait for them forever. Lower cpus_per_trial or workers_per_trial.")
    if r.gpus_per_trial > 0 and gpus == 0:
        console.print("[yellow]no GPU in the cluster: trials run on the CPU (resources.gpus_per_trial ignored)[/yellow]")
    elif r.gpus_per_trial * r.workers_per_trial > gpus:
        raise SpecError(f"resources.gpus_per_trial: a trial needs {r.gpus_per_trial * r.workers_per_trial:g} GPUs, "
                        f"the cluster has {gpus:g}")
    _check_cuda_requests(sweep, gpus)
    if address and len(ray.nodes()) > 1 and store_of(sweep.out) is None and not _looks_shared(sweep.out):
        console.print(f"[yellow]warning: {sweep.out} does not look like shared storage; on a multi-node cluster "
                      "every node must see the results folder (NFS or similar), or give --out s3://bucket/prefix[/yellow]")


def _check_cuda_requests(sweep: Sweep, cluster_gpus: float) -> None:
    """device: cuda needs a GPU reserved for it; otherwise it would run on one Ray gave to someone else."""
    r = sweep.spec.resources
    wants_cuda = any(c["device"] == "cuda" for c in sweep.spec.trial_configs())
    if wants_cuda and (r.gpus_per_trial == 0 or cluster_gpus == 0):
        raise SpecError("train.device: cuda needs resources.gpus_per_trial > 0 on a cluster with GPUs "
                        "(use device: auto to run where the GPUs are)")
    if sweep.spec.evaluate.device == "cuda" and (r.eval_gpus == 0 or cluster_gpus == 0):
        raise SpecError("evaluate.device: cuda needs resources.eval_gpus > 0 on a cluster with GPUs "
                        "(use device: auto to run where the GPUs are)")


def _looks_shared(path: Path) -> bool:
    try:
        import subprocess
        fs = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True).stdout.strip()
        return fs in {"nfs", "nfs4", "cifs", "smb2", "fuseblk", "fuse", "lustre", "gpfs", "ceph", "beegfs"}
    except OSError:
        return True


def trial_resources(sweep: Sweep) -> dict[str, float]:
    import ray
    r = sweep.spec.resources
    gpus = r.gpus_per_trial if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    return {"cpu": r.cpus_per_trial, "gpu": gpus}
