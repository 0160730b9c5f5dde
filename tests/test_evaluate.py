"""The engine (shared image sets, batched defenses, channels_last) equals the reference pipeline
(every cell on its own, defenses one image at a time through OpenCV / scikit-image)."""
import dataclasses
import json

import torch
from robustgrid.runner.evaluate import (
    CLEAN,
    AttackSetting,
    DefenseSetting,
    Engine,
    ImageSet,
    image_key,
    plan_cells,
    reference_rows,
    run_cells,
)
from robustgrid.runner.evaluate.plan import attack_setting_of
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
    ste, fgsm = AttackSetting(model_gradient="ste"), AttackSetting()
    assert keys == {CLEAN, ImageSet("fp32", "fgsm", fgsm, 2 / 255), ImageSet("fp32", "fgsm", fgsm, 8 / 255),
                    ImageSet("dynamic_int8", "fgsm", ste, 2 / 255), ImageSet("dynamic_int8", "fgsm", ste, 8 / 255)}
    assert {k for k in keys if k.shared} == {k for k in keys if k.source != "dynamic_int8"}    # kept for reuse


ADAPTIVE = {**GRID, "eps": [0, "8/255"], "attacks": ["fgsm", {"pgd": {"steps": 3, "restarts": 2}}],
            "threats": ["oblivious", "adaptive"], "defenses": GRID["defenses"] + ["random_resize_pad"],
            "eot_samples": 3, "defense_draws": 3}


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
    assert {c.attack_setting.gradient for c in adaptive} == {"exact", "bpda_median", "bpda_jpeg",
                                                                             "bpda_tv_unrolled20"}
    assert {c.attack_setting.eot_samples for c in adaptive if c.defense == "random_resize_pad"} == {3}
    engine_rows = run_cells(Engine(tiny_model, ev, images, labels, torch.device("cpu")), cells, META)
    ref_rows = reference_rows(tiny_model, ev, images, labels, torch.device("cpu"), META)
    key = lambda r: (r["quant"], r["attack"], r["attack_params"], r["attack_source"], r["threat"], r["eps"], r["defense"])
    assert {key(r): r["correct"] for r in engine_rows} == {key(r): r["correct"] for r in ref_rows}


def test_adaptive_images_are_made_once_per_defense():
    ev = EvaluateSpec.model_validate(ADAPTIVE)
    keys = {image_key(c) for c in plan_cells(ev) if c.threat == "adaptive"}
    assert len(keys) == 2 * 5 * 2 and all(k.adaptive and not k.shared for k in keys)
    assert {k.source for k in keys} == {"fp32", "dynamic_int8"}          # fp32-made, and made through the int8 twin


def test_quant_parameters_are_part_of_the_cell():
    """int8_static calibrated on 500 images is another model than on 1000: its cells are new ones;
    every other mode's cells stay the same (done cells are not computed again)."""
    a = EvaluateSpec.model_validate({**GRID, "quant": ["fp32", "dynamic_int8", "int8_static"]})
    b = a.model_copy(update={"calibration_images": 500})
    ka = {c.key("t", 10, 0) for c in plan_cells(a)}
    kb = {c.key("t", 10, 0) for c in plan_cells(b)}
    assert {k[1] for k in ka ^ kb} == {"int8_static"}
    assert {k[2] for k in kb - ka} == {'{"calibration_images": 500}'}


def _linear_model():
    """A classifier whose predictions vary from image to image (an untrained CNN says one class for all)."""
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)).eval()


def test_an_image_counts_as_robust_only_if_no_candidate_fools_the_scored_system(images):
    """Candidates (restarts, final and best iterates) are judged on the real model behind the real defense:
    one fooling candidate is enough, whichever the attacker would have picked."""
    tiny_model = _linear_model()
    with torch.no_grad():
        labels = tiny_model(images).argmax(1)
    ev = EvaluateSpec.model_validate({**GRID, "quant": ["fp32"], "sources": ["self"], "defenses": ["none"]})
    engine = Engine(tiny_model, ev, images, labels, torch.device("cpu"))
    clean = torch.round(images * 255) / 255
    other = torch.round(images.flip(0) * 255) / 255            # other images: mostly another class
    with torch.no_grad():
        fools = tiny_model(other).argmax(1) != labels
    assert 0 < fools.sum() < len(images)
    key = ImageSet("fp32", "fake", AttackSetting(), 8 / 255)
    engine.import_adversarials({key: torch.round(torch.stack([clean, other, clean], 1) * 255).to(torch.uint8)})
    verdict = engine.judge(key, "none", DefenseSetting(), ["fp32"])["fp32"]
    assert torch.equal(verdict.ok, ~fools) and verdict.candidates == 3
    smaller = dataclasses.replace(key, eps=4 / 255)
    engine.import_adversarials({smaller: torch.round(torch.stack([clean, clean], 1) * 255).to(torch.uint8)})
    assert engine.judge(smaller, "none", DefenseSetting(), ["fp32"])["fp32"].ok.all()


def test_a_randomized_defense_is_scored_under_every_defender_draw(images):
    """`correct` counts the images right under all of evaluate.defense_draws draws; accuracy_draw_mean keeps
    the mean over draws; each draw is the defense's for the image's index (as the batched defense draws it)."""
    from robustgrid.defenses import apply_defense
    tiny_model = _linear_model()
    with torch.no_grad():
        labels = tiny_model(images).argmax(1)
    grid = {**GRID, "eps": [0], "quant": ["fp32"], "sources": ["self"], "defenses": {"random_resize_pad": {"min_size": 16}},
            "defense_draws": 4}
    ev = EvaluateSpec.model_validate(grid)
    rows = run_cells(Engine(tiny_model, ev, images, labels, torch.device("cpu")), plan_cells(ev), META)
    assert len(rows) == 1 and json.loads(rows[0]["defense_params"])["draws"] == 4
    per_draw = []
    with torch.no_grad():
        for d in range(4):
            x = apply_defense("random_resize_pad", images, {"min_size": 16, "draw": d}, index=torch.arange(len(images)))
            per_draw.append(tiny_model(x).argmax(1) == labels)
    per_draw = torch.stack(per_draw)
    assert rows[0]["correct"] == int(per_draw.all(0).sum()) < int(per_draw[0].sum())
    assert rows[0]["accuracy_draw_mean"] == int(per_draw.sum()) / per_draw.numel()   # exact: shards add up to it
    assert rows[0]["defense_draws"] == 4


def test_every_delivered_image_lies_inside_its_labelled_ball(tiny_model, images):
    """eps 0.03 (the notebook's) delivers at most 7/255; every row records what it delivered."""
    with torch.no_grad():
        labels = tiny_model(images).argmax(1)
    ev = EvaluateSpec.model_validate({**ADAPTIVE, "eps": [0, 0.03, "8/255"], "quant": ["fp32"], "sources": ["self"],
                                      "defenses": ["none", "median", "random_resize_pad"]})
    rows = run_cells(Engine(tiny_model, ev, images, labels, torch.device("cpu")), plan_cells(ev), META)
    for r in rows:
        assert r["delivered_linf"] <= r["eps"] + 1e-9, r
    assert {round(r["delivered_linf"] * 255) for r in rows if r["eps"] == 0.03} == {7}
    assert {round(r["delivered_linf"] * 255) for r in rows if r["eps"] == 0} == {0}
    assert {r["candidates"] for r in rows if r["attack"] == "pgd" and r["eps"] > 0} == {4}   # 2 restarts x final, best


def test_zoo_attacks_are_seeded_by_chunk_and_take_a_fresh_draw_per_call(tiny_model, images):
    """A torchattacks attack with random starts: the same cells for any batch size (seeded per fixed chunk of
    the test split, not by the global RNG's state); through a randomized defense it records its EOT as a fresh
    draw at every forward call."""
    with torch.no_grad():
        labels = tiny_model(images).argmax(1)
    grid = {**GRID, "eps": [0, "8/255"], "quant": ["fp32"], "sources": ["self"], "threats": ["oblivious", "adaptive"],
            "attacks": [{"torchattacks.PGD": {"steps": 2, "random_start": True}}],
            "defenses": ["none", "random_resize_pad"], "defense_draws": 2}
    made = []
    for bs in (24, 7):
        ev = EvaluateSpec.model_validate({**grid, "batch_size": bs})
        torch.manual_seed(bs)       # the global RNG's state must not matter
        rows = run_cells(Engine(tiny_model, ev, images, labels, torch.device("cpu")), plan_cells(ev), META)
        made.append({(r["threat"], r["eps"], r["defense"]): (r["correct"], r["correct_mask"]) for r in rows})
    assert made[0] == made[1]
    adaptive = [c for c in plan_cells(EvaluateSpec.model_validate(grid)) if c.threat == "adaptive"]
    assert [c.attack_setting.eot for c in adaptive] == ["fresh_draw_per_forward"]


def test_the_noise_baseline_is_one_oblivious_white_box_row_inside_its_ball(images):
    """`noise`: uniform noise in the ball, model-free (no adaptive, transfer or STE rows), its own draws
    (not PGD's starts), the same for any batch size."""
    from robustgrid.attacks import random_starts
    model = _linear_model()
    with torch.no_grad():
        labels = model(images).argmax(1)
    grid = {**GRID, "eps": [0, "8/255"], "quant": ["fp32", "dynamic_int8"], "threats": ["oblivious", "adaptive"],
            "attacks": ["noise"], "defenses": ["none", "median"]}
    made = []
    for bs in (24, 5):
        ev = EvaluateSpec.model_validate({**grid, "batch_size": bs})
        engine = Engine(model, ev, images, labels, torch.device("cpu"))
        rows = run_cells(engine, plan_cells(ev), META)
        made.append({(r["quant"], r["eps"], r["defense"]): r["correct_mask"] for r in rows})
    assert {(r["threat"], r["attack_source"]) for r in rows} == {("oblivious", "self")}
    assert all(r["delivered_linf"] <= r["eps"] + 1e-9 and r["candidates"] == 1 for r in rows)
    assert made[0] == made[1]
    noise_setting = attack_setting_of(EvaluateSpec.model_validate(grid).attacks[0])
    noise = engine.adversarial(ImageSet("fp32", "noise", noise_setting, 8 / 255))[0][:, 0]
    pgd_start = torch.round((images + random_starts(len(images), (3, 32, 32), 1, 0, 8 / 255)[:, 0]).clamp(0, 1) * 255) / 255
    assert not torch.equal(noise, pgd_start) and (noise != torch.round(images * 255) / 255).any()


def test_the_reference_leaves_a_batchnorm_model_as_it_found_it_and_equals_the_engine(images):
    """The reference's attack wrapper was an nn.Module in train mode; torchattacks restores the mode it found
    after each attack, so every later cell ran ImprovedCNN's BatchNorm on batch statistics (updating its running
    stats) with dropout on: on an H200 its bf16 clean accuracy read 84/200 before the first attack and 135/200
    after, and the caller's model came back changed. ImprovedCNN has BatchNorm and dropout."""
    import copy

    from robustgrid.models import create_model
    torch.manual_seed(0)
    model = create_model("improved_cnn")
    with torch.no_grad():          # running statistics unlike a fresh BatchNorm's, so train mode would move them
        for _ in range(3):
            model(torch.rand(32, 3, 32, 32) * 0.5 + 0.3)
    model.eval()
    before = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        labels = model(images).argmax(1)
    labels[::3] = (labels[::3] + 1) % 10
    ev = EvaluateSpec.model_validate({**GRID, "eps": [0, "8/255"], "sources": ["self"], "defenses": ["none"],
                                      "quant": ["fp32", "bf16"]})
    ref_rows = reference_rows(model, ev, images, labels, torch.device("cpu"), META)
    assert not model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    engine_rows = run_cells(Engine(model, ev, images, labels, torch.device("cpu")), plan_cells(ev), META)
    assert _cells(engine_rows) == _cells(ref_rows)
