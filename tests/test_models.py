import pytest
import torch
from robustgrid.models import (
    CheckpointError,
    create_model,
    load_checkpoint,
    model_names,
    quantize,
    save_checkpoint,
    state_dict_bytes,
)


def test_improved_cnn_sizes_match_the_notebook():
    m = create_model("improved_cnn")
    assert state_dict_bytes(m) == pytest.approx(13.02e6, rel=0.005)
    assert state_dict_bytes(quantize(m, "dynamic_int8")) == pytest.approx(6.72e6, rel=0.005)
    # the engine evaluates channels_last copies: the size must not depend on the memory format
    assert state_dict_bytes(m.to(memory_format=torch.channels_last)) == state_dict_bytes(create_model("improved_cnn"))


@pytest.mark.parametrize("name,kwargs,params", [
    ("preact_resnet18", {}, 11_172_170), ("resnet18", {}, 11_173_962), ("wide_resnet", {}, 36_479_194),
    ("wide_resnet", {"depth": 34}, 46_160_474), ("wide_resnet", {"depth": 16, "widen_factor": 4}, 2_748_890),
])
def test_the_fields_architectures_have_their_published_sizes(name, kwargs, params):
    """PreActResNet-18 and ResNet-18 11.2 M (Wong et al. 2020; RobustBench), WRN-28-10 36.5 M, WRN-34-10 46.2 M."""
    m = create_model(name, **kwargs)
    assert sum(p.numel() for p in m.parameters()) == params
    assert m.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_registry_and_forward_on_unit_images():
    assert {"simple_cnn", "improved_cnn"} <= set(model_names())
    for name in model_names():
        out = create_model(name, num_classes=5).eval()(torch.rand(2, 3, 32, 32))
        assert out.shape == (2, 5)
    with pytest.raises(KeyError):
        create_model("resnet9000")


def test_dynamic_int8_is_close_to_fp32_and_leaves_fp32_alone(tiny_model):
    x = torch.rand(8, 3, 32, 32)
    q = quantize(tiny_model, "dynamic_int8")
    assert isinstance(tiny_model[-1], torch.nn.Linear)   # the original is untouched
    assert (q(x) - tiny_model(x)).abs().max() < 0.1


def test_checkpoint_roundtrip(tmp_path, tiny_model):
    p = tmp_path / "c.pt"
    save_checkpoint(p, "simple_cnn", {"num_classes": 10}, tiny_model.state_dict(), {"note": "x"})
    m = load_checkpoint(p)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(m(x), tiny_model(x))


def test_truncated_or_bad_checkpoint_is_a_clear_error(tmp_path, tiny_model):
    p = tmp_path / "c.pt"
    save_checkpoint(p, "simple_cnn", {}, tiny_model.state_dict())
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        load_checkpoint(p)
    (tmp_path / "junk.pt").write_text("hello")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a robustgrid checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_dynamic_int8_cells_do_not_depend_on_the_batch_size(tiny_model):
    """quantize_dynamic scales activations over the whole batch; robustgrid's int8 mode scales each
    image on its own. Bit-equal logits are out of reach (the fp32 convolutions before the Linear layers
    already differ by an ulp between batch sizes, and a quantization step can amplify that), but the
    batch's own influence is gone: predictions and every cell are equal for batch sizes 1, 7 and 500."""
    import warnings

    from robustgrid.runner.evaluate import Engine, plan_cells, run_cells
    from robustgrid.runner.spec import EvaluateSpec
    from torch.ao.quantization import quantize_dynamic
    g = torch.Generator().manual_seed(0)
    x = torch.round(torch.rand(40, 3, 32, 32, generator=g) * 255) / 255
    q = quantize(tiny_model, "dynamic_int8")
    with torch.no_grad():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plain = quantize_dynamic(tiny_model, {torch.nn.Linear}, dtype=torch.qint8)

        def spread(model):   # largest logit change between one image at a time and the whole batch
            return (torch.cat([model(x[i:i + 1]) for i in range(len(x))]) - model(x)).abs().max().item()
        assert spread(q) * 4 < spread(plain)                                  # the batch's influence is gone
        assert torch.equal(torch.cat([q(x[i:i + 7]) for i in range(0, len(x), 7)]).argmax(1), q(x).argmax(1))
    labels = tiny_model(x).argmax(1)
    meta = {"sweep": "", "run_id": "", "trial_id": "t", "model": "", "dataset": ""}
    counts = []
    for bs in (1, 7, 500):
        ev = EvaluateSpec.model_validate({"eps": [0, "8/255"], "quant": ["fp32", "dynamic_int8"], "batch_size": bs,
                                          "defenses": ["none", "median"], "examples": 0})
        rows = run_cells(Engine(tiny_model, ev, x, labels, torch.device("cpu")), plan_cells(ev), meta)
        counts.append({(r["quant"], r["attack_source"], r["eps"], r["defense"]): r["correct"] for r in rows})
    assert counts[0] == counts[1] == counts[2]
