"""Quant modes: batch independence, deterministic static calibration, fake-quant twins that agree
with the real int8 models, sizes measured from what is serialized, half precision on the CPU."""
import subprocess
import sys

import pytest
import torch
from robustgrid.models import QUANT, fake_quant_twin, int8_share, per_row_op, quant_mode, quantize, shipped_bytes
from robustgrid.models.quant import shipped_tensors

pytest.importorskip("torchao")

INT8 = [q for q in QUANT.names() if not quant_mode(q).has_input_grad]


@pytest.fixture(scope="module")
def setting():
    """A briefly trained simple_cnn (confident enough that int8 rounding matters at the margin) and
    500 natural-ish test images; 200 calibration images from the same distribution."""
    from robustgrid.models import create_model
    from robustgrid.runner.data import make_synthetic
    torch.manual_seed(0)
    x, y = make_synthetic(1200, 10, seed=3)
    x = x.float() / 255
    model = create_model("simple_cnn")
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    for _ in range(2):
        for i in range(0, 700, 50):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[i:i + 50]), y[i:i + 50]).backward()
            opt.step()
    return model.eval(), x[700:], x[:200]


def _predictions(model, x, batch):
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch]).argmax(1) for i in range(0, len(x), batch)])


@pytest.mark.parametrize("mode", INT8)
def test_int8_predictions_do_not_depend_on_the_batch_size(setting, mode):
    model, x, calib = setting
    q = quantize(model, mode, calib)
    by_batch = {b: _predictions(q, x, b) for b in (500, 7, 1)}
    assert torch.equal(by_batch[1], by_batch[500]) and torch.equal(by_batch[7], by_batch[500])
    assert (by_batch[500] == _predictions(model, x, 500)).float().mean() > 0.9      # and still the model


def test_dynamic_int8_batched_pass_equals_fbgemms_op_row_by_row(setting):
    """The batched per-row pass (rowwise_int8) against torch.ops.quantized.linear_dynamic called once per
    row: the trained model's logits bit for bit, and the parameter choice against torch's own."""
    from robustgrid.models.rowwise_int8 import RowwiseWeights, probe_rows, row_qparams, rowwise_linear
    model, x, _ = setting
    fast, oracle = quantize(model, "dynamic_int8"), per_row_op(quantize(model, "dynamic_int8"))
    with torch.no_grad():
        assert torch.equal(fast(x), oracle(x))
    layers = [m for m in fast.modules() if hasattr(m, "_agrees")]
    assert len(layers) == 2 and all(m._agrees for m in layers)           # the batched pass ran, not the fallback
    g = torch.Generator().manual_seed(1)
    rows = torch.cat([probe_rows(128), torch.randn(3000, 128, generator=g) * torch.rand(3000, 1, generator=g) ** 10 * 20,
                      torch.rand(500, 128, generator=g) * 1e-5 - 2e-6])
    scale, zero = row_qparams(rows)
    torch_params = [torch._choose_qparams_per_tensor(r, True) for r in rows]
    assert torch.equal(scale, torch.tensor([p[0] for p in torch_params], dtype=torch.float32))
    assert torch.equal(zero.long(), torch.tensor([p[1] for p in torch_params]))
    second = [m for m in fast.modules() if hasattr(m, "_agrees")][1]
    op, packed = torch.ops.quantized.linear_dynamic, second._packed_params._packed_params
    expected = torch.cat([op(r, packed, reduce_range=True) for r in rows.split(1)])
    assert torch.equal(rowwise_linear(rows, RowwiseWeights(packed)), expected)


@pytest.mark.parametrize("mode", INT8)
def test_fake_quant_twin_agrees_with_the_real_int8_model_and_has_a_gradient(setting, mode):
    model, x, calib = setting
    q = quantize(model, mode, calib)
    twin = fake_quant_twin(model, q, mode)
    assert (_predictions(twin, x, 500) == _predictions(q, x, 500)).float().mean() >= 0.999
    xg = x[:16].clone().requires_grad_(True)
    grad = torch.autograd.grad(twin(xg).logsumexp(1).sum(), xg)[0]
    assert torch.isfinite(grad).all() and (grad != 0).float().mean() > 0.5
    assert all(p.requires_grad for p in model.parameters())        # the FP32 model is untouched


def test_static_int8_calibrates_and_converts_deterministically(setting):
    model, x, calib = setting
    a, b = (shipped_tensors(quantize(model, "int8_static", calib)) for _ in range(2))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert sum(v.dtype == torch.int8 for v in a.values()) == 4      # both convolutions and both linears
    with pytest.raises(ValueError, match="calibration"):
        quantize(model, "int8_static")


def test_sizes_are_the_bytes_serialized(setting, tmp_path):
    model, _, calib = setting
    for mode in QUANT.names():
        q = quantize(model, mode, calib)
        path = tmp_path / f"{mode}.pt"
        torch.save({k: v.contiguous() if type(v) is torch.Tensor else v for k, v in shipped_tensors(q).items()}, path)
        assert shipped_bytes(q) == pytest.approx(path.stat().st_size, abs=1024), mode   # torch.save's zip padding
    sizes = {m: shipped_bytes(quantize(model, m, calib)) for m in QUANT.names()}
    assert sizes["int8_static"] < sizes["int8_dynamic"] < sizes["bf16"] < sizes["fp32"]
    assert int8_share(model, quantize(model, "dynamic_int8")) == pytest.approx(524288 / 545098 + 1280 / 545098)
    assert int8_share(model, quantize(model, "int8_static", calib)) > 0.999      # convolutions too


@pytest.mark.parametrize("mode", ["bf16", "fp16"])
def test_half_precision_runs_on_the_cpu(setting, mode):
    model, x, _ = setting
    q = quantize(model, mode)
    assert not quant_mode(mode).needs_cuda
    assert (_predictions(q, x, 100) == _predictions(model, x, 100)).float().mean() > 0.95


def test_models_lists_every_mode_without_a_deprecation_warning():
    """Piped at 80 columns (a terminal's default): the table splits by columns, never cutting a name or a number."""
    # the notebook's model and a small CNN (every model's int8_static conversion takes a minute: torchao's export)
    done = subprocess.run([sys.executable, "-m", "robustgrid", "models", "--model", "improved_cnn", "--model",
                           "simple_cnn"], capture_output=True, text=True, timeout=240,
                          env={"COLUMNS": "80", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert "13.02" in done.stdout and "6.72" in done.stdout                  # the notebook's sizes
    assert all(q in done.stdout for q in QUANT.names()) and "…" not in done.stdout
    assert max(len(line) for line in done.stdout.splitlines()) <= 80
    assert "3,249,994" in done.stdout and "(99.9%)" in done.stdout and "resnet" not in done.stdout
    assert "eprecat" not in done.stdout + done.stderr and "Warning" not in done.stderr, done.stderr
