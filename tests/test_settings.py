"""A cell's attack and defense settings are types: compared and hashed by value, spelled as JSON only where a row
is written (and read back from it unchanged)."""
import torch
import yaml
from robustgrid.runner.bundled import bundled_sweeps
from robustgrid.runner.evaluate import AttackSetting, DefenseSetting, make_row, plan_cells
from robustgrid.runner.evaluate.rows import Verdict
from robustgrid.runner.spec import EvaluateSpec


def _every_bundled_cell():
    for path, _ in bundled_sweeps().values():     # the grids alone: some sweeps need data folders
        yield from plan_cells(EvaluateSpec.model_validate(yaml.safe_load(path.read_text()).get("evaluate") or {}))


def test_every_bundled_cells_settings_survive_their_row_spelling():
    """What a row spells (attack_params, defense_params) reads back as the very setting the cell holds, extras
    included (the adaptive gradient, EOT draws, STE, the defender's draws), and spells the same again."""
    seen = {"gradient": 0, "eot_samples": 0, "model_gradient": 0, "draws": 0}
    for c in _every_bundled_cell():
        verdict = Verdict(torch.ones(2, dtype=torch.bool), 1.0, 1, 1, 0)
        row = make_row(c, verdict, torch.ones(2, dtype=torch.bool), 0.0, {}, model_bytes=0,
                       device=torch.device("cpu"), precision="fp32", seed=0, data_digest="")
        attack, defense = AttackSetting.of_json(row["attack_params"]), DefenseSetting.of_json(row["defense_params"])
        assert attack == c.attack_setting and hash(attack) == hash(c.attack_setting)
        assert defense == c.defense_setting and hash(defense) == hash(c.defense_setting)
        assert attack.to_json() == row["attack_params"] and defense.to_json() == row["defense_params"]
        assert (row["attack_params"], row["defense_params"]) == (c.key("t", 1, 0)[4], c.key("t", 1, 0)[9])
        for k in ("gradient", "eot_samples", "model_gradient"):
            seen[k] += getattr(attack, k) is not None
        seen["draws"] += defense.draws is not None
    assert all(seen.values()), f"the bundled sweeps exercise every extra: {seen}"


def test_settings_are_values():
    a = AttackSetting({"steps": 10, "restarts": 1})
    assert a == AttackSetting.of_json('{"restarts": 1, "steps": 10}') and len({a, AttackSetting.of_json(a.to_json())}) == 1
    assert a != a.with_ste() and a.with_ste().through_twin and not a.through_twin
    through = a.through_defense("exact", eot_samples=4)
    assert (through.gradient, through.eot_draws, through.own) == ("exact", 4, a.own)
    assert AttackSetting.of_json(through.to_json()) == through != a
    assert AttackSetting.of_json("") == AttackSetting() and AttackSetting.of_json(None).own == {}   # older rows
    d = DefenseSetting({"scale": 0.9}, draws=3)
    assert d.n_draws == 3 and d.for_draw(2) == {"scale": 0.9, "draw": 2} and d != DefenseSetting({"scale": 0.9}, 4)
    assert DefenseSetting({"ksize": 3}).for_draw(0) == {"ksize": 3} and DefenseSetting().n_draws == 1
