"""The CUDA suite: what only a GPU can show. Skipped where CUDA is absent.

On a new GPU machine (a few minutes):
    pytest -q tests/test_cuda.py
then the notebook sweep and the GPU bench (BENCHMARKS.md names the command).
"""
import copy
import os
import socket
import subprocess
import sys

import pytest
import torch
import yaml

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="CUDA suite: no CUDA device here; it runs on a GPU machine")

CUDA = torch.device("cuda", 0)


@pytest.fixture(scope="module")
def model_and_images():
    """A briefly trained simple_cnn on synthetic data (on the GPU) and 400 test images."""
    from robustgrid.models import load_checkpoint
    from robustgrid.runner.data import load_splits, to_float
    from robustgrid.runner.spec import DataSpec
    from robustgrid.runner.train import train
    out = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"robustgrid-cuda-suite-{os.getpid()}")
    cfg = {"model": "simple_cnn", "dataset": "synthetic", "synthetic_train": 3000, "synthetic_test": 400,
           "epochs": 2, "batch_size": 128, "device": "cuda", "out_dir": out}
    result = train(cfg)
    assert result["device"].startswith("cuda")
    splits = load_splits(DataSpec(dataset="synthetic", synthetic_train=3000, synthetic_test=400))
    return load_checkpoint(os.path.join(out, "best.pt")), to_float(splits.test_x), splits.test_y


def _random_8bit(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 32, 32, generator=g)
    x[n // 2:] = torch.nn.functional.avg_pool2d(x[n // 2:], 3, 1, 1)
    return torch.round(x * 255) / 255


@pytest.mark.parametrize("name,params", [("gaussian_blur", {}), ("median", {}), ("median", {"ksize": 5}),
                                         ("jpeg", {}), ("tv_denoise", {}), ("none", {})])
@pytest.mark.parametrize("cudnn_benchmark", [False, True])
def test_batched_defense_on_cuda_equals_cpu_reference(name, params, cudnn_benchmark):
    from robustgrid.defenses import apply_defense
    x = _random_8bit()
    ref = apply_defense(name, x, params, backend="reference")
    # cudnn.benchmark may pick FFT / Winograd algorithms: exactness must not rest on the algorithm
    with torch.backends.cudnn.flags(enabled=True, benchmark=cudnn_benchmark, deterministic=False, allow_tf32=True):
        got = apply_defense(name, x.to(CUDA), params, backend="batched")
    assert got.device.type == "cuda"
    diff = (got.cpu().double() - ref.double()).abs().max().item()
    if name == "tv_denoise":
        assert diff <= 1e-5
    else:
        assert diff == 0.0, f"{name} {params}: {diff}"


def test_ieee_fp32_turns_tf32_off_for_convolutions():
    from robustgrid.runner.device import fp32_precision, ieee_fp32
    torch.manual_seed(0)
    x, w = torch.randn(8, 256, 16, 16), torch.randn(256, 256, 3, 3)
    exact = torch.nn.functional.conv2d(x.double(), w.double(), padding=1)
    with ieee_fp32():
        assert fp32_precision(CUDA) == "fp32"
        got = torch.nn.functional.conv2d(x.to(CUDA), w.to(CUDA), padding=1).cpu().double()
    # IEEE fp32 over 2304 products: ~1e-6 relative; TF32 (10-bit mantissa) is ~1e-3
    assert ((got - exact).abs().max() / exact.abs().max()).item() < 1e-5


def test_fp16_input_gradient_on_cuda_has_no_dead_images(model_and_images):
    from robustgrid.attacks import input_gradient
    from robustgrid.models import quantize
    model, images, labels = model_and_images
    model = copy.deepcopy(model).to(CUDA)
    with torch.no_grad():
        model[-1].weight.mul_(50)
    x, y = images[:500].to(CUDA), labels[:500].to(CUDA)
    grad = input_gradient(quantize(model, "fp16"), x, y)
    assert torch.isfinite(grad).all()
    assert not (grad.flatten(1) == 0).all(1).any()
    assert (grad == 0).float().mean().item() < 1e-3


@pytest.mark.parametrize("method", ["fgsm_rs", "trades"])
def test_adversarial_training_with_amp_on_cuda(tmp_path, method):
    """bf16 autocast trains; the inner attack runs outside it in fp32, so every training image moves (no gradient
    underflows to a dead sign), and robust validation is measured."""
    from robustgrid.runner import adversarial as adv
    from robustgrid.runner.spec import TrainConfig
    from robustgrid.runner.train import train
    cfg = {"model": "preact_resnet18", "dataset": "synthetic", "synthetic_train": 1200, "synthetic_test": 200,
           "val_size": 200, "epochs": 1, "batch_size": 128, "device": "cuda", "amp": True, "adversarial": method,
           "adv_steps": 2 if method == "trades" else None, "robust_val_images": 200, "out_dir": str(tmp_path)}
    r = train(cfg)
    assert r["device"].startswith("cuda") and 0 <= r["history"][0]["robust_val_accuracy"] <= 1
    from robustgrid.models import load_checkpoint
    model = load_checkpoint(tmp_path / "best.pt").to(CUDA).eval()
    x = torch.rand(128, 3, 32, 32, device=CUDA)
    y = torch.randint(0, 10, (128,), device=CUDA)
    u = torch.rand(128, 3, 32, 32, dtype=torch.float64)
    # as the training loop calls it: outside the step's autocast, in fp32
    x_adv = adv.adversarial_batch(model, x, y, TrainConfig.model_validate({**cfg, "out_dir": None}), u)
    moved = (x_adv - x).flatten(1).abs().amax(1) > 0
    assert moved.all(), f"{int((~moved).sum())} images never moved"


def test_fp32_cells_on_the_gpu_equal_the_cpu_cells(model_and_images):
    """Same model, images and grid on both devices. IEEE fp32 on both, but other summation orders:
    a prediction on a decision boundary, or an FGSM sign of a near-zero gradient, may differ. The
    tolerance: 0.5 % of the images on clean cells, 2 % on attacked cells."""
    from robustgrid.runner.evaluate import Engine, plan_cells, run_cells
    from robustgrid.runner.spec import EvaluateSpec
    model, images, labels = model_and_images
    ev = EvaluateSpec.model_validate({"eps": [0, "2/255", "8/255"], "sources": ["self"], "quant": ["fp32"],
                                      "defenses": ["none", "gaussian_blur", "median"], "batch_size": 200,
                                      "examples": 0})
    meta = {"sweep": "cuda", "run_id": "", "trial_id": "t", "model": "simple_cnn", "dataset": "synthetic"}
    rows = {d: run_cells(Engine(model, ev, images, labels, torch.device(d)), plan_cells(ev), meta)
            for d in ("cpu", "cuda")}
    cpu = {(r["eps"], r["defense"]): r for r in rows["cpu"]}
    for r in rows["cuda"]:
        assert r["device"].startswith("cuda") and r["precision"] == "fp32"
        c = cpu[(r["eps"], r["defense"])]
        tol = 0.005 if r["eps"] == 0 else 0.02
        assert abs(r["correct"] - c["correct"]) <= max(1, tol * r["n"]), (r["eps"], r["defense"], r["correct"], c["correct"])


def test_int8_task_leaves_no_memory_on_the_gpu(model_and_images, tmp_path):
    """A Ray task that asks for no GPU (the int8 cells) runs on the CPU and never opens CUDA."""
    ray = pytest.importorskip("ray")
    from robustgrid.runner.execute.ray_setup import run_task
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        def probe():
            from robustgrid.runner.evaluate import evaluate_checkpoint  # noqa: F401  (the task's imports)
            return os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.is_available(), torch.cuda.is_initialized()
        hidden, available, initialized = ray.get(ray.remote(run_task).options(num_cpus=1, num_gpus=0).remote(probe))
        assert (hidden, available, initialized) == ("", False, False)
        own = ray.get(ray.remote(run_task).options(num_cpus=1, num_gpus=1).remote(probe))
        assert own[0] == "0" and own[1] is True
    finally:
        ray.shutdown()


def test_sweep_on_the_gpu_through_ray_with_examples(tmp_path):
    """Train and evaluate end to end through Ray on the GPU, examples on, bf16 and fp16 cells."""
    pytest.importorskip("ray")
    from robustgrid.runner.cli import main
    from robustgrid.runner.results import ResultStore
    sweep = {
        "name": "cuda_suite",
        "data": {"dataset": "synthetic", "synthetic_train": 2000, "synthetic_test": 300},
        "train": {"model": "simple_cnn", "lr": {"grid_search": [0.002, 0.004]}, "epochs": 2, "batch_size": 128},
        "resources": {"cpus_per_trial": 2, "gpus_per_trial": 0.5, "eval_cpus": 2, "eval_gpus": 0.5},
        "evaluate": {"eps": [0, "8/255"], "quant": ["fp32", "bf16", "fp16", "dynamic_int8"],
                     "defenses": ["none", "gaussian_blur", "jpeg"], "batch_size": 100, "examples": 3},
    }
    path = tmp_path / "cuda.yaml"
    path.write_text(yaml.safe_dump(sweep))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out)]) == 0
    store = ResultStore(out)
    trials, ev = store.read("trials"), store.read_eval()
    assert set(trials["status"]) == {"ok"} and all(d.startswith("cuda") for d in trials["device"])
    assert set(ev["quant"]) == {"fp32", "bf16", "fp16", "dynamic_int8"}
    on_gpu = ev[ev["quant"] != "dynamic_int8"]
    assert all(d.startswith("cuda") for d in on_gpu["device"]) and set(ev[ev.quant == "dynamic_int8"]["device"]) == {"cpu"}
    assert set(ev[ev.quant == "fp32"]["precision"]) == {"fp32"}
    assert set(ev[ev.quant == "bf16"]["precision"]) == {"bf16"} and set(ev[ev.quant == "fp16"]["precision"]) == {"fp16"}
    # 2 trials x (eps 0: fp32, bf16, fp16, int8 self, int8 fp32 + eps>0: fp32, bf16, fp16, int8 fp32 ... ) x 3 defenses
    from robustgrid.runner.evaluate import count_cells
    from robustgrid.runner.spec import load_spec
    assert len(ev) == 2 * count_cells(load_spec(path)[0].evaluate)
    assert len(list((out / "examples").glob("*.npz"))) == 2      # the examples no longer crash a GPU task
    assert (ev["seconds"] > 0).all()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="DDP on CUDA needs two GPUs")
def test_ddp_two_gpus_with_nccl(tmp_path):
    args = ["model=simple_cnn", "dataset=synthetic", "synthetic_train=2000", "epochs=2", "batch_size=128",
            "device=cuda", "early_stopping_patience=1", f"out_dir={tmp_path / 'ddp'}"]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "robustgrid.runner.train", *args],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "'world_size': 2" in proc.stdout and "'device': 'cuda:0'" in proc.stdout
