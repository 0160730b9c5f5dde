"""The engine (shared image sets, batched defenses, channels_last) equals the reference pipeline
(every cell on its own, defenses one image at a time through OpenCV / scikit-image)."""
import json

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
    # 15 fp32 + 5 int8 clean + 15 int8 transfer + 10 int8 white-box through the fake-quant twin (STE)
    assert len(engine_rows) == len(ref_rows) == len(plan_cells(ev)) == 45
    assert _cells(engine_rows) == _cells(ref_rows)
    accs = {r["accuracy"] for r in engine_rows}
    assert len(accs) > 3, "a grid where every cell scores the same would prove nothing"


def test_one_image_set_per_source_and_eps():
    ev = EvaluateSpec.model_validate(GRID)
    keys = {image_key(c) for c in plan_cells(ev)}
    # clean, fp32-made at two eps (shared by fp32 white-box and int8 transfer), int8-made through its twin
    ste = '{"model_gradient": "ste"}'
    assert keys == {("clean",), ("fp32", "fgsm", "{}", 2 / 255), ("fp32", "fgsm", "{}", 8 / 255),
                    ("dynamic_int8", "fgsm", ste, 2 / 255), ("dynamic_int8", "fgsm", ste, 8 / 255)}


ADAPTIVE = {**GRID, "eps": [0, "8/255"], "attacks": ["fgsm", {"pgd": {"steps": 3, "restarts": 2}}],
            "threats": ["oblivious", "adaptive"], "defenses": GRID["defenses"] + ["random_resize_pad"],
            "eot_samples": 3}


def test_adaptive_engine_equals_reference_pipeline_cell_by_cell(tiny_model, images):
    """Adaptive cells (FGSM and PGD through each defense: exact blur, median subgradient, differentiable
    JPEG, unrolled Chambolle for TV, EOT through the random resize-and-pad) made once per defense in the
    engine and cell by cell through the per-image OpenCV / scikit-image / numpy defense in the
    reference: the same images, so the same counts."""
    with torch.no_grad():
        labels = tiny_model(images).argmax(1)
    ev = EvaluateSpec.model_validate(ADAPTIVE)
    cells = plan_cells(ev)
    adaptive = [c for c in cells if c.threat == "adaptive"]
    # through 5 defenses (not 'none'), eps 8/255, 2 attacks, (fp32 self + int8 transfer + int8 STE)
    assert len(adaptive) == 5 * 2 * 3 and all(c.eps > 0 and c.defense != "none" for c in adaptive)
    assert {json.loads(c.attack_params)["gradient"] for c in adaptive} == {"exact", "bpda_median", "bpda_jpeg",
                                                                             "bpda_tv_unrolled20"}
    assert {json.loads(c.attack_params).get("eot_samples") for c in adaptive if c.defense == "random_resize_pad"} == {3}
    engine_rows = run_cells(Engine(tiny_model, ev, images, labels, torch.device("cpu")), cells, META)
    ref_rows = reference_rows(tiny_model, ev, images, labels, torch.device("cpu"), META)
    key = lambda r: (r["quant"], r["attack"], r["attack_params"], r["attack_source"], r["threat"], r["eps"], r["defense"])  # noqa: E731
    assert {key(r): r["correct"] for r in engine_rows} == {key(r): r["correct"] for r in ref_rows}


def test_adaptive_images_are_made_once_per_defense():
    ev = EvaluateSpec.model_validate(ADAPTIVE)
    keys = {image_key(c) for c in plan_cells(ev) if c.threat == "adaptive"}
    assert len(keys) == 2 * 5 * 2 and all(k[4] == "adaptive" for k in keys)
    assert {k[0] for k in keys} == {"fp32", "dynamic_int8"}          # fp32-made, and made through the int8 twin


def test_quant_parameters_are_part_of_the_cell():
    """int8_static calibrated on 500 images is another model than on 1000: its cells are new ones;
    every other mode's cells stay the same (done cells are not computed again)."""
    a = EvaluateSpec.model_validate({**GRID, "quant": ["fp32", "dynamic_int8", "int8_static"]})
    b = a.model_copy(update={"calibration_images": 500})
    ka = {c.key("t", 10, 0) for c in plan_cells(a)}
    kb = {c.key("t", 10, 0) for c in plan_cells(b)}
    assert {k[1] for k in ka ^ kb} == {"int8_static"}
    assert {k[2] for k in kb - ka} == {'{"calibration_images": 500}'}
