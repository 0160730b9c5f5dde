"""Worst case per image over attacks, and the gradient-masking flags (Carlini et al. 2019)."""
import json

import numpy as np
import pandas as pd
import torch
from robustgrid.runner.evaluate.rows import pack_mask, unpack_mask
from robustgrid.runner.evaluate.stats import wilson_interval
from robustgrid.runner.results import masking_flags, worst_case

N = 400


def _row(attack="fgsm", threat="oblivious", eps=8 / 255, defense="jpeg", correct=None, mask=None, source="self",
         params="{}", dead=None, quant="fp32"):
    if mask is None:
        mask = np.zeros(N, bool)
        mask[:correct] = True
    correct = int(mask.sum())
    lo, hi = wilson_interval(correct, N)
    return {"trial_id": "t", "quant": quant, "attack": attack, "attack_params": params, "attack_source": source,
            "threat": threat, "eps": eps, "defense": defense, "defense_params": "{}", "n": N, "seed": 0,
            "data_digest": "d", "correct": correct, "accuracy": correct / N, "ci_low": lo, "ci_high": hi,
            "seconds": 1.0, "correct_mask": pack_mask(torch.from_numpy(mask)), "dead_gradients": dead,
            "sweep": "s", "run_id": "r", "model": "m", "dataset": "d"}


def test_masks_round_trip():
    ok = torch.rand(1001) > 0.5
    assert np.array_equal(unpack_mask(pack_mask(ok), 1001), ok.numpy())


def test_worst_case_is_the_per_image_minimum_over_attacks():
    rng = np.random.default_rng(0)
    masks = {k: rng.random(N) < p for k, p in [("fgsm", 0.6), ("pgd", 0.4), ("fgsm_a", 0.3), ("pgd_a", 0.2)]}
    ev = pd.DataFrame([
        _row("fgsm", mask=masks["fgsm"]), _row("pgd", mask=masks["pgd"], params='{"steps": 10}'),
        _row("fgsm", "adaptive", mask=masks["fgsm_a"], params='{"gradient": "bpda_identity"}'),
        _row("pgd", "adaptive", mask=masks["pgd_a"], params='{"gradient": "bpda_identity", "steps": 10}'),
    ])
    worst = worst_case(ev).set_index("threat")
    oblivious = masks["fgsm"] & masks["pgd"]
    everything = oblivious & masks["fgsm_a"] & masks["pgd_a"]
    assert worst.loc["oblivious", "correct"] == oblivious.sum()
    assert worst.loc["adaptive", "correct"] == everything.sum() < min(m.sum() for m in masks.values())
    assert np.array_equal(unpack_mask(worst.loc["adaptive", "correct_mask"], N), everything)
    assert len(json.loads(worst.loc["adaptive", "attack_params"])["over"]) == 4
    assert set(worst["attack"]) == {"worst_case"} and set(worst["attack_source"]) == {"any"}


def test_flags_stay_silent_on_a_clean_evaluation():
    ev = pd.DataFrame([
        _row("fgsm", eps=2 / 255, defense="none", correct=120), _row("fgsm", eps=8 / 255, defense="none", correct=10, dead=0),
        _row("pgd", eps=8 / 255, defense="none", correct=2, params='{"steps": 10}'),
        _row("fgsm", eps=8 / 255, correct=90), _row("fgsm", "adaptive", eps=8 / 255, correct=40),
        _row("pgd", eps=8 / 255, correct=80, params='{"steps": 10}'),
        _row("fgsm", eps=8 / 255, correct=95, quant="int8", source="fp32"), _row("fgsm", eps=8 / 255, correct=85, quant="int8"),
    ])
    assert masking_flags(ev).empty


def test_flags_fire_on_a_constructed_masking_case():
    ev = pd.DataFrame([
        _row("fgsm", eps=4 / 255, correct=50), _row("fgsm", eps=8 / 255, correct=150),           # rises with eps
        _row("fgsm", "adaptive", eps=8 / 255, correct=250),                                      # adaptive > oblivious
        _row("pgd", eps=8 / 255, correct=260, params='{"steps": 10}'),                          # PGD weaker than FGSM
        _row("fgsm", eps=8 / 255, correct=300, quant="bf16"), _row("fgsm", eps=8 / 255, correct=100, quant="bf16", source="fp32"),
        _row("fgsm", eps=8 / 255, defense="none", correct=200, dead=37),                        # bare model unbroken
    ])
    checks = set(masking_flags(ev)["check"])
    assert checks == {"accuracy_rises_with_eps", "adaptive_above_oblivious", "multistep_weaker_than_single_step",
                      "transfer_stronger_than_white_box", "undefended_model_not_broken", "zero_or_nan_input_gradients"}


def test_show_warns_and_lists_worst_case(tmp_path, capsys):
    """Through the CLI: a folder whose cells raise a flag prints the warning table and the worst case."""
    from robustgrid.runner.cli import main
    from robustgrid.runner.results import ResultStore
    from robustgrid.runner.results.report import views_of
    store = ResultStore(tmp_path)
    store.upsert("trials", [{"trial_id": "t", "status": "ok", "sweep": "s", "run_id": "r"}], ["trial_id"])
    store.append_eval([_row("fgsm", eps=8 / 255, correct=90), _row("fgsm", "adaptive", eps=8 / 255, correct=300),
                       _row("pgd", eps=8 / 255, correct=60, params='{"steps": 10}')])
    assert main(["show", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "WARNING: 1 gradient-masking flag(s)" in out and "adaptive_above_oblivious" in out
    assert "worst case over every L-inf attack" in out
    # the flag's number beside the cell it concerns (the adaptive FGSM one), on no other cell
    views = {v.title.split(" accuracy")[0]: v for v in views_of(tmp_path)}
    fgsm = views["fgsm"]
    assert fgsm.columns[1:] == ["jpeg", "jpeg/a"] and fgsm.rows[0][2].startswith("75.0 ⚑1\n")
    assert [c for v in views.values() if not v.title.startswith("WARNING") for r in v.rows for c in r if "⚑" in c] \
        == [fgsm.rows[0][2]]
    assert any(n.startswith("made by robustgrid") and "run r" in n for n in fgsm.notes)   # the table's provenance


def test_adaptive_cells_through_a_randomized_defense_pair_with_their_oblivious_cells():
    """EOT draws are part of an adaptive cell's parameters, not of its attack: the check still pairs them."""
    ev = pd.DataFrame([_row("pgd", eps=8 / 255, defense="random_resize_pad", correct=60, params='{"steps": 10}'),
                       _row("pgd", "adaptive", eps=8 / 255, defense="random_resize_pad", correct=300,
                            params='{"eot_samples": 10, "gradient": "exact", "steps": 10}')])
    assert set(masking_flags(ev)["check"]) == {"adaptive_above_oblivious"}


def test_checks_are_paired_mcnemar_over_every_row_and_eps_0_counts():
    """Two cells 52 % vs 48 % on 400 images: intervals overlap (no flag before), but the masks differ only
    in 16 images, all one way: McNemar p = 2**-16 flags it. The same accuracies with discordant images both
    ways (p ~ 0.3) do not. A later row of a group is compared too, and eps 0 is the base of 'rises with eps'."""
    from robustgrid.runner.results.robustness import binomial_tail
    assert binomial_tail(16, 16) == 2 ** -16 and abs(binomial_tail(3, 4) - 5 / 16) < 1e-15
    nested_lo, nested_hi = np.zeros(N, bool), np.zeros(N, bool)
    nested_lo[:192], nested_hi[:208] = True, True
    ev = pd.DataFrame([_row("fgsm", mask=nested_lo), _row("fgsm", "adaptive", mask=nested_hi,
                                                            params='{"gradient": "bpda_identity"}')])
    assert set(masking_flags(ev)["check"]) == {"adaptive_above_oblivious"}
    crossed = np.zeros(N, bool)
    crossed[:100], crossed[150:258] = True, True             # 208 right, 100 of them shared with nested_lo's 192
    ev = pd.DataFrame([_row("fgsm", mask=nested_lo), _row("fgsm", "adaptive", mask=crossed, params='{"gradient": "bpda_identity"}')])
    assert masking_flags(ev).empty
    # a second adaptive row (another gradient setting) is paired too, not only the first of the group
    ev = pd.DataFrame([_row("fgsm", mask=nested_lo), _row("fgsm", "adaptive", mask=nested_lo, params='{"gradient": "a"}'),
                       _row("fgsm", "adaptive", mask=nested_hi, params='{"gradient": "b"}')])
    assert len(masking_flags(ev)) == 1
    # eps 0 (clean) below eps 8/255: accuracy rose with eps
    ev = pd.DataFrame([_row("fgsm", eps=0, mask=nested_lo), _row("fgsm", eps=8 / 255, mask=nested_hi)])
    assert set(masking_flags(ev)["check"]) == {"accuracy_rises_with_eps"}


def test_large_eps_and_noise_baseline_flags():
    ev = pd.DataFrame([_row("pgd", "adaptive", eps=64 / 255, correct=120, params='{"gradient": "exact", "steps": 10}'),
                       _row("pgd", eps=64 / 255, correct=120, params='{"steps": 10}')])
    assert set(masking_flags(ev)["check"]) == {"defense_not_broken_at_large_eps"}
    # uniform noise in the same ball as strong as FGSM: FGSM is not using its gradient
    ev = pd.DataFrame([_row("fgsm", eps=8 / 255, correct=150), _row("noise", eps=8 / 255, correct=150,
                                                                     params='{"random_start": true}')])
    assert set(masking_flags(ev)["check"]) == {"no_better_than_random_noise"}
    ev = pd.DataFrame([_row("fgsm", eps=8 / 255, correct=50), _row("noise", eps=8 / 255, correct=150,
                                                                    params='{"random_start": true}')])
    assert masking_flags(ev).empty


def test_pgd_not_converged_and_square_component_flags():
    """PGD-10 significantly and >= 2 points above APGD on the same cells: PGD had not converged; an AutoAttack row
    whose Square component broke over 0.2 % of the images: the gradients were masked. Silent when close."""
    rng = np.random.default_rng(1)
    apgd = rng.random(N) < 0.3
    pgd = apgd | (rng.random(N) < 0.2)          # right wherever APGD is, and on more images
    ev = pd.DataFrame([_row("pgd", mask=pgd, params='{"steps": 10}'), _row("apgd", mask=apgd, params='{"steps": 100}')])
    assert set(masking_flags(ev)["check"]) == {"pgd_not_converged"}
    ev = pd.DataFrame([_row("pgd", mask=apgd, params='{"steps": 10}'), _row("apgd", mask=apgd, params='{"steps": 100}')])
    assert masking_flags(ev).empty
    aa = {**_row("autoattack", correct=100, params='{"steps": 100}'),
          "broken_by": json.dumps({"clean": 50, "apgd-ce": 240, "apgd-t": 4, "fab-t": 0, "square": 6})}
    assert set(masking_flags(pd.DataFrame([aa]))["check"]) == {"square_broke_what_gradients_missed"}
    aa["broken_by"] = json.dumps({"clean": 50, "apgd-ce": 250, "apgd-t": 0, "fab-t": 0, "square": 0})
    assert masking_flags(pd.DataFrame([aa])).empty


def test_two_norms_are_never_one_cell_set():
    linf, l2 = _row("pgd", correct=100, params='{"steps": 10}'), _row("pgd", correct=300, params='{"norm": "l2", "steps": 10}')
    l2["norm"], linf["norm"] = "l2", "linf"
    worst = worst_case(pd.DataFrame([linf, l2]))
    assert sorted(worst["correct"]) == [100, 300]      # not the per-image minimum over both norms


def test_worst_case_keeps_two_calibrations_apart():
    a = _row("fgsm", correct=100, quant="int8_static")
    b = _row("pgd", correct=50, quant="int8_static", params='{"steps": 10}')
    c = {**_row("fgsm", correct=80, quant="int8_static"), "quant_params": '{"calibration_images": 500}'}
    ev = pd.DataFrame([{**a, "quant_params": '{"calibration_images": 1000}'}, {**b, "quant_params": '{"calibration_images": 1000}'}, c])
    worst = worst_case(ev)
    assert sorted(worst["correct"]) == [50, 80]


def test_views_never_draw_an_interval_over_pooled_trials_or_pool_image_sets():
    from robustgrid.runner.results.views import clean_accuracy, pivot_view
    a, b = _row("fgsm", correct=100), {**_row("fgsm", correct=140), "trial_id": "u"}
    view = pivot_view(pd.DataFrame([a, b]), "t")
    cell = view.rows[0][1]
    assert cell == "30.0\nr 25.0–35.0" and "Wilson" not in view.notes[0] and "min–max" in view.notes[0]
    one = pivot_view(pd.DataFrame([a]), "t").rows[0][1]
    lo, hi = wilson_interval(100, N)
    assert one == f"25.0\n{100 * lo:.1f}–{100 * hi:.1f}"
    # a second eval on the first 200 images: the models table's clean accuracy is not (689 + 142) / 1200
    big = {**_row("fgsm", eps=0, defense="none"), "n": 1000, "correct": 689, "data_digest": "d1000"}
    small = {**_row("fgsm", eps=0, defense="none"), "n": 200, "correct": 142, "data_digest": "d200"}
    assert clean_accuracy(pd.DataFrame([big, small])).loc["t", "fp32"] == 0.689


def test_worst_case_is_shown_for_one_attack_from_two_sources(tmp_path, capsys):
    """The quickstart's int8 cells: FGSM white-box (through the twin) and FGSM transferred from fp32, one attack
    name, two sources: the worst case over them is shown (it was hidden unless two attack names shared an eps)."""
    from robustgrid.runner.cli import main
    from robustgrid.runner.results import ResultStore
    from robustgrid.runner.results.report import views_of
    store = ResultStore(tmp_path)
    store.upsert("trials", [{"trial_id": "t", "status": "ok", "sweep": "s", "run_id": "r"}], ["trial_id"])
    store.append_eval([_row("fgsm", correct=90, quant="dynamic_int8"),
                       _row("fgsm", correct=120, quant="dynamic_int8", source="fp32")])
    assert main(["show", str(tmp_path)]) == 0
    assert "worst case over every L-inf attack" in capsys.readouterr().out


def test_the_undefended_check_knows_how_the_model_was_trained():
    """PGD at 8/255 leaving 45 % is a too-weak attack on a normally trained model and the expected figure for one
    adversarially trained at 8/255 (the PGD-AT row in BENCHMARKS was flagged); at four times its radius the
    adversarially trained model is held to the check again."""
    ev = pd.DataFrame([_row("pgd", eps=8 / 255, defense="none", correct=90, params='{"steps": 10}')])
    standard = pd.DataFrame([{"trial_id": "t", "adversarial": "none", "adv_eps": None}])
    robust = pd.DataFrame([{"trial_id": "t", "adversarial": "pgd", "adv_eps": 8 / 255}])
    assert set(masking_flags(ev)["check"]) == {"undefended_model_not_broken"}
    assert set(masking_flags(ev, trials=standard)["check"]) == {"undefended_model_not_broken"}
    assert masking_flags(ev, trials=robust).empty
    far = pd.DataFrame([_row("pgd", eps=128 / 255, defense="none", correct=90, params='{"steps": 10}')])
    assert set(masking_flags(far, trials=robust)["check"]) == {"undefended_model_not_broken"}
    # a model robustgrid did not train (RobustBench's Carmon2019Unlabeled holds ~60 % at 8/255) may be robust
    outside = pd.DataFrame([{"trial_id": "t", "adversarial": None, "adv_eps": None, "model_source": "robustbench"}])
    assert masking_flags(ev, trials=outside).empty
    assert set(masking_flags(far, trials=outside)["check"]) == {"undefended_model_not_broken"}


def test_checks_read_each_attacks_declared_step():
    """Which attack is single-step and which steps adaptively is the registry's word, never a list of names: FGM
    (the L2 single step) is held against an L2 PGD as FGSM is in L-inf; PGD against APGD-T as against APGD."""
    l2 = [{**_row("fgm", eps=0.5, correct=100, params='{"norm": "l2"}'), "norm": "l2"},
          {**_row("pgd", eps=0.5, correct=200, params='{"norm": "l2", "steps": 10}'), "norm": "l2"}]
    assert set(masking_flags(pd.DataFrame(l2))["check"]) == {"multistep_weaker_than_single_step"}
    rng = np.random.default_rng(2)
    apgd_t = rng.random(N) < 0.3
    pgd = apgd_t | (rng.random(N) < 0.2)
    ev = pd.DataFrame([_row("pgd", mask=pgd, params='{"steps": 10}'), _row("apgd_t", mask=apgd_t, params='{"steps": 100}')])
    flags = masking_flags(ev)
    assert set(flags["check"]) == {"pgd_not_converged"} and "report apgd_t" in flags["detail"].iloc[0]
