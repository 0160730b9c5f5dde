import torch
from robustgrid.runner.bench.defenses import bench_defenses


def test_bench_defenses_reports_equal_outputs():
    rows = bench_defenses(torch.round(torch.rand(6, 3, 32, 32) * 255) / 255, torch.device("cpu"))
    assert {r["defense"] for r in rows} == {"none", "gaussian_blur", "jpeg", "median", "tv_denoise", "random_resize_pad"}
    assert all(r["max_abs_diff"] <= 1e-5 and r["batched_img_per_s"] > 0 and r["adaptive_img_per_s"] > 0 for r in rows)


def test_bench_training_compares_input_paths_on_the_notebook_recipe():
    from robustgrid.runner.bench.training import bench_training
    rows = bench_training(torch.device("cpu"), quick=True, dataset="synthetic", train_subset=256,
                          variants=("gpu-resident", "dataloader"))
    assert [r["path"] for r in rows] == ["gpu-resident", "dataloader"]
    for r in rows:
        assert r["epochs"] == 2 and r["train_images"] == 256 and r["img_per_s"] > 0
        assert 0 <= r["test_accuracy"] <= 1 and r["train_seconds"] >= r["first_epoch_s"]


def test_bench_pipeline_counts_each_attack_pass_once(tiny_model, images):
    """The engine's attack passes per image are the grid's minimum: FGSM one gradient per (source,
    defense) whatever the eps; PGD `steps` per eps; through a randomized defense each times the EOT
    draws. Both pipelines' cells agree, and the ceiling is the reference time over the passes' time."""
    from robustgrid.runner.bench.pipeline import bench_pipeline
    from robustgrid.runner.spec import EvaluateSpec
    with torch.no_grad():
        labels = tiny_model(images).argmax(1)
    ev = EvaluateSpec.model_validate({
        "eps": [0, "2/255", "8/255"], "attacks": ["fgsm", {"pgd": {"steps": 2}}], "sources": ["self"],
        "threats": ["oblivious", "adaptive"], "defenses": ["none", "gaussian_blur", "random_resize_pad"],
        "eot_samples": 3, "quant": ["fp32"], "batch_size": 10, "examples": 0})
    out = bench_pipeline(tiny_model, images, labels, torch.device("cpu"), ev=ev)
    assert out["all_cells_agree"] and out["cells_differing"] == 0
    # fgsm: 1 oblivious + 1 through the blur + 3 EOT draws; pgd: 2 eps x 2 steps x (1 + 1 + 3)
    assert out["attack_passes"] == {"fp32": 1 + 1 + 3 + 2 * 2 * (1 + 1 + 3)}
    assert out["attack_pass_s"] > 0
    # the roofline's FLOPs: each pass a forward and a backward to the input (weights frozen), counted once:
    # twice each conv's and linear layer's multiply-adds (2 FLOPs each), read here from the layers' shapes
    macs = []
    def count(m, inp, out):
        k = m.weight[0].numel()      # in_channels/groups x kernel area, or in_features
        macs.append(out.numel() * k)
    hooks = [m.register_forward_hook(count) for m in tiny_model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        tiny_model(images[:1])
    for h in hooks:
        h.remove()
    per_image = 2 * 2 * sum(macs)
    assert abs(out["attack_gflop"] * 1e9 - out["attack_passes"]["fp32"] * len(images) * per_image) < 1e3
    assert out["pass_gflop_per_s"] > 0 and out["engine_gflop_per_s"] > 0
    assert out["speedup_ceiling"] == out["reference_s"] / out["attack_pass_s"]


def test_bench_quant_twin_agreement_is_measured_on_the_twins_own_fgsm_images(tiny_model, images):
    """(d)'s twin columns: the STE twin against the real int8 model on clean and twin-made FGSM images; a mode
    without a twin (fp32) has none. Run under no_grad, as the bench runs it (FGSM needs its own gradient)."""
    from robustgrid.models import quantize
    from robustgrid.runner.bench.quant import _twin_agreement
    labels = torch.arange(len(images)) % 10
    with torch.no_grad():
        assert _twin_agreement(tiny_model, tiny_model, "fp32", images, labels, torch.device("cpu")) == {}
        q = quantize(tiny_model, "dynamic_int8")
        out = _twin_agreement(tiny_model, q, "dynamic_int8", images, labels, torch.device("cpu"))
    assert out["twin_agrees_clean"] >= 0.95 and 0 <= out["twin_agrees_fgsm"] <= 1
    assert 0 <= out["fgsm_accuracy_real"] <= 1 and 0 <= out["fgsm_accuracy_twin"] <= 1


def test_autoattack_bench_runs_every_implementation_on_the_same_images_and_times_each_component(tiny_model, images):
    """`bench --grid autoattack`'s case on a tiny model at a radius where APGD-CE breaks every image: ours in this
    process and in two shard processes, torchattacks' chain and the authors' code (where installed), the same
    verdicts (in both rounds of the in-process ones); ours' and torchattacks' seconds per component; the roofline
    counts the passes of ours' kept round."""
    from robustgrid.runner.bench.autoattack import bench_case
    with torch.no_grad():
        labels = tiny_model(images).argmax(1)
    rows, roof = bench_case(tiny_model, images, labels, torch.device("cpu"), "linf", 0.5, shards=2, repeats=2)
    impls = [r["implementation"] for r in rows]
    assert impls[:3] == ["robustgrid", "robustgrid, 2 shards", "torchattacks"]
    assert all(r["robust"] == 0 and r["differ"] == 0 and r["seconds"] > 0 for r in rows)
    assert rows[0]["apgd-ce_s"] > 0 and rows[2]["apgd-ce_s"] > 0 and rows[1]["apgd-ce_s"] is None
    # the engine's clean gradient (its dead-gradient count), APGD-CE's first and 100 steps on every image; everything
    # broken, so nothing after it
    assert roof["gradient_images"] == 102 * len(images) and roof["gflop"] > 0
