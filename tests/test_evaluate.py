"""The engine (shared image sets, batched defenses, channels_last) equals the reference pipeline
(every cell on its own, defenses one image at a time through OpenCV / scikit-image)."""
import torch
from robustgrid.runner.evaluate import (
    Engine,
    image_key,
    plan_cells,
    reference_rows,
    run_cells,
)
from robustgrid.runner.spec import EvaluateSpec

META = {"sweep": "t", "run_id": "r", "trial_id": "t0", "model": "simple_cnn", "dataset": "synthetic"}
GRID = {"eps": [0, "2/255", "8/255"], "sources": ["self", "fp32"], "quant": ["fp32", "dynamic_int8"],
        "defenses": ["none", "gaussian_blur", "jpeg", "median", "tv_denoise"], "batch_size": 10, "examples": 0}


def _cells(rows):
    return {(r["quant"], r["attack_source"], r["eps"], r["defense"]): (r["correct"], r["attack_success_rate"])
            for r in rows}


def test_engine_equals_reference_pipeline_cell_by_cell(tiny_model, images):
    with torch.no_grad():
        labels = tiny_model(images).argmax(1)          # clean FP32 accuracy 100 %: attacks have room to work
    labels[::4] = (labels[::4] + 1) % 10               # and some images start out wrong
    ev = EvaluateSpec.model_validate(GRID)
    engine_rows = run_cells(Engine(tiny_model, ev, images, labels, torch.device("cpu")), plan_cells(ev), META)
    ref_rows = reference_rows(tiny_model, ev, images, labels, torch.device("cpu"), META)
    assert len(engine_rows) == len(ref_rows) == len(plan_cells(ev)) == 35  # 15 fp32 + 5 int8 clean + 15 int8 transfer
    assert _cells(engine_rows) == _cells(ref_rows)
    accs = {r["accuracy"] for r in engine_rows}
    assert len(accs) > 3, "a grid where every cell scores the same would prove nothing"


def test_one_image_set_per_source_and_eps():
    ev = EvaluateSpec.model_validate(GRID)
    keys = {image_key(c) for c in plan_cells(ev)}
    # clean, fp32-made at two eps (shared by fp32 white-box and int8 transfer); no int8 white-box
    assert keys == {("clean",), ("fp32", "fgsm", 2 / 255), ("fp32", "fgsm", 8 / 255)}
