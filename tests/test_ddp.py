"""DDP on 2 CPU processes (torchrun, gloo) equals one process on the same global batch."""
import os
import socket
import subprocess
import sys

import pytest
import torch
from robustgrid.models import read_checkpoint
from robustgrid.runner.train import train

# 142 images -> 14 validation + 128 training = 4 steps of a global batch of 32 per epoch, 2 epochs.
CONFIG = {"model": "simple_cnn", "dataset": "synthetic", "synthetic_train": 142, "synthetic_test": 50,
          "epochs": 2, "batch_size": 32, "optimizer": "adamw", "lr": 1e-3, "augment": True, "seed": 3, "threads": 1,
          "channels_last": False}

# Both runs train in float64. In float32 the two runs differ by the order of their sums (one batch of
# 32 vs two of 16 and an allreduce), which depends on the kernels the CPU picks: under 2e-6 on one CPU,
# 3.7e-6 on an AVX-512 Xeon after 8 AdamW steps. In float64 that noise measured 6e-15 (AVX-512 and
# ATEN_CPU_CAPABILITY=default alike), so a tolerance of 1e-11 holds on any CPU, while a real DDP fault
# (each rank taking the whole batch) moves the weights by ~1e-2.
LAUNCHER = """import sys, torch
torch.set_default_dtype(torch.float64)
from robustgrid.runner.train import main
main(sys.argv[1:])
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# adversarial training: each rank attacks its own shard; every sample's random start is its own (seed, epoch,
# index), so the ranks together train on the very images one process does
ADVERSARIAL = {"adversarial": "fgsm_rs", "robust_val_images": 8}


@pytest.mark.parametrize("extra", [{}, ADVERSARIAL], ids=["standard", "fgsm_rs"])
def test_ddp_two_processes_equal_single_process(tmp_path, extra):
    config = {**CONFIG, **extra}
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        single = train({**config, "out_dir": str(tmp_path / "single")})
    finally:
        torch.set_default_dtype(default)
    launcher = tmp_path / "launch_fp64.py"
    launcher.write_text(LAUNCHER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [f"{k}={v}" for k, v in config.items()] + [f"out_dir={tmp_path / 'ddp'}"]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(launcher), *args],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = read_checkpoint(tmp_path / "ddp" / "last.pt")["state_dict"]
    ref = read_checkpoint(tmp_path / "single" / "last.pt")["state_dict"]
    assert single["world_size"] == 1
    weights = [k for k in ref if k.endswith("weight")]
    assert all(ref[k].dtype == torch.float64 and ddp[k].dtype == torch.float64 for k in weights)
    for k in ref:
        # Same samples, same crops, gradients averaged over the same global batch: equal up to the
        # order of float64 sums (allreduce vs one batch).
        torch.testing.assert_close(ddp[k], ref[k], rtol=1e-9, atol=1e-11)
    assert not any(torch.equal(ref[k], torch.zeros_like(ref[k])) for k in weights)
    assert "'world_size': 2" in proc.stdout


def _rank_decides(rank: int, port: int, out, val_acc: float) -> None:
    import torch.distributed as dist
    from robustgrid.runner.distributed import DistInfo, from_rank0
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        # each rank measured something else (its own BatchNorm statistics); all act on rank 0's
        out.put((rank, from_rank0([1.5 + rank, val_acc], DistInfo(rank, 2), torch.device("cpu"))))
    finally:
        dist.destroy_process_group()


def test_ranks_follow_rank_0s_metrics():
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    out, port = ctx.Queue(), _free_port()
    procs = [ctx.Process(target=_rank_decides, args=(r, port, out, [0.61, 0.42][r])) for r in range(2)]
    for p in procs:
        p.start()
    try:
        got = dict(out.get(timeout=120) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert got == {0: [1.5, 0.61], 1: [1.5, 0.61]}
