"""Adding an attack is one file and a test: an attack registered here, outside the package, is planned, run,
recorded and checked like the bundled ones, with nothing else told about it (no list of names to extend)."""
import pandas as pd
import pytest
import torch
from robustgrid.attacks import ATTACKS, deliver, register_attack
from robustgrid.registry import Param
from robustgrid.runner.evaluate import Engine, plan_cells, run_cells
from robustgrid.runner.results.robustness import masking_flags
from robustgrid.runner.spec import EvaluateSpec

META = {"sweep": "t", "run_id": "r", "trial_id": "t0", "model": "simple_cnn", "dataset": "synthetic"}


@pytest.fixture
def corner_search(monkeypatch):
    """A black-box attack in the style of attacks/*.py: the best of `tries` corners of the L-inf ball, judged by
    the model's outputs alone (registered for this test only)."""
    monkeypatch.setattr(ATTACKS, "_entries", dict(ATTACKS._entries))

    @register_attack(params={"tries": Param(4, int, lambda t: t >= 1, ">= 1")}, kind="black-box", image_keys=True)
    def corner_search(model, images, labels, eps, tries=4, image_keys=None):
        best, best_margin = images.clone(), torch.full((len(images),), float("inf"))
        for t in range(tries):
            gen = torch.Generator().manual_seed(t)       # the same corners whatever the batch
            sign = torch.randint(0, 2, images.shape[1:], generator=gen).float() * 2 - 1
            x = deliver(images + eps * sign, images, eps)
            with torch.no_grad():
                logits = model(x).float()
            right = logits.gather(1, labels[:, None])[:, 0]
            margin = right - logits.scatter(1, labels[:, None], -float("inf")).amax(1)
            better = margin < best_margin
            best[better], best_margin = x[better], torch.where(better, margin, best_margin)
        return best
    return "corner_search"


def test_an_attack_from_one_file_runs_through_plan_engine_rows_and_checks(corner_search, images):
    torch.manual_seed(1)       # a classifier whose predictions vary from image to image
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)).eval()
    ev = EvaluateSpec.model_validate({"attacks": ["fgsm", {corner_search: {"tries": 3}}], "eps": [0, "8/255"],
                                      "sources": ["self", "fp32"], "quant": ["fp32", "dynamic_int8"],
                                      "threats": ["oblivious", "adaptive"], "defenses": ["none", "median"],
                                      "batch_size": 16, "examples": 0})
    cells = [c for c in plan_cells(ev) if c.attack == corner_search]
    # black-box, as its registration says: it queries the real int8 model (no STE twin), and has adaptive cells
    assert cells and not any(c.attack_setting.through_twin for c in cells)
    assert {c.threat for c in cells} == {"oblivious", "adaptive"}
    assert all(c.attack_setting.own == {"tries": 3} for c in cells)
    with torch.no_grad():
        labels = model(images).argmax(1)
    rows = run_cells(Engine(model, ev, images, labels, torch.device("cpu")), plan_cells(ev), META)
    mine = [r for r in rows if r["attack"] == corner_search]
    assert len(mine) == len(cells) and all(r["delivered_linf"] <= 8 / 255 + 1e-9 for r in mine)
    # the masking checks read its kind from the registry: a black-box attack far stronger than the gradient one on
    # the same cells (rows made so here) flags the gradient attack as masked
    ev_rows = pd.DataFrame(rows)
    for attack, right in (("fgsm", True), (corner_search, False)):
        at = (ev_rows["attack"] == attack) & (ev_rows["eps"] > 0)
        ev_rows.loc[at, "correct"] = ev_rows.loc[at, "n"] if right else 0
        ev_rows.loc[at, "accuracy"] = 1.0 if right else 0.0
        ev_rows.loc[at, "correct_mask"] = ev_rows.loc[at, "n"].map(lambda n, r=right: bytes([255 if r else 0]) * ((n + 7) // 8))
    assert "black_box_stronger_than_white_box" in set(masking_flags(ev_rows)["check"])
