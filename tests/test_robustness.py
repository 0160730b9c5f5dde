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
    store = ResultStore(tmp_path)
    store.upsert("trials", [{"trial_id": "t", "status": "ok", "sweep": "s", "run_id": "r"}], ["trial_id"])
    store.append_eval([_row("fgsm", eps=8 / 255, correct=90), _row("fgsm", "adaptive", eps=8 / 255, correct=300),
                       _row("pgd", eps=8 / 255, correct=60, params='{"steps": 10}')])
    assert main(["show", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "WARNING: 1 gradient-masking flag(s)" in out and "adaptive_above_oblivious" in out
    assert "worst case over every attack" in out


def test_adaptive_cells_through_a_randomized_defense_pair_with_their_oblivious_cells():
    """EOT draws are part of an adaptive cell's parameters, not of its attack: the check still pairs them."""
    ev = pd.DataFrame([_row("pgd", eps=8 / 255, defense="random_resize_pad", correct=60, params='{"steps": 10}'),
                       _row("pgd", "adaptive", eps=8 / 255, defense="random_resize_pad", correct=300,
                            params='{"eot_samples": 10, "gradient": "exact", "steps": 10}')])
    assert set(masking_flags(ev)["check"]) == {"adaptive_above_oblivious"}
