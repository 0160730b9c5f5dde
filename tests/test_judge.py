"""The attack contract: every decision about which images an attack works on further is the judge's, made on the
scored system (each cell behind its defense, on its real model), so a defended or transferred cell equals the
same attack's every candidate judged there; an ensemble's black-box member queries what a black-box attack would."""
import pytest
import torch
from robustgrid.attacks import deliver, get_attack, random_starts
from robustgrid.defenses import apply_defense
from robustgrid.runner.evaluate import Engine, plan_cells, run_cells
from robustgrid.runner.evaluate.plan import image_key
from robustgrid.runner.evaluate.rows import unpack_mask
from robustgrid.runner.spec import EvaluateSpec
from toy_models import Centroids

META = {"sweep": "t", "run_id": "r", "trial_id": "t0", "model": "m", "dataset": "synthetic"}
EPS = 2 / 255


@pytest.fixture(scope="module")
def case():
    model = Centroids().eval()
    x = _images(1, 64)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _cells(model, x, y, attack: dict, defenses: list[str]) -> dict[str, torch.Tensor]:
    ev = EvaluateSpec.model_validate({"attacks": [attack], "eps": [EPS], "sources": ["self"], "quant": ["fp32"],
                                      "defenses": defenses, "batch_size": 64, "examples": 0})
    rows = run_cells(Engine(model, ev, x, y, torch.device("cpu")), plan_cells(ev), META)
    return {r["defense"]: torch.from_numpy(unpack_mask(r["correct_mask"], r["n"])) for r in rows if r["eps"] > 0}


def _images(seed: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.round((torch.rand(n, 3, 32, 32, generator=g) * 0.3 + 0.35) * 255) / 255


def _every_candidate(model, x, y, runs: list, starts, defense: str) -> torch.Tensor:
    """Per image: robust behind `defense` to every run's candidate, each run on every image (no early stop)."""
    from robustgrid.attacks.apgd import apgd_run
    robust = torch.ones(len(x), dtype=torch.bool)
    for r, loss in enumerate(runs):
        best, right, best_adv = apgd_run(model, x, y, EPS, "linf", 5, loss, starts[:, r], 0.75)
        found = deliver(torch.where(right.view(-1, 1, 1, 1), best, best_adv), x, EPS)
        with torch.no_grad():
            robust &= model(apply_defense(defense, found, {}, backend="batched")).argmax(1) == y
    return robust


def test_a_defended_apgd_t_cell_equals_every_targets_candidate_judged_behind_the_defense(case):
    """At bf94588 later targets ran only on images earlier ones had not broken on the bare model, so an image
    target 1 broke there but not behind the blur never met targets 2 and 3: that cell counted it robust."""
    from robustgrid.attacks.apgd import targeted_dlr_loss
    model, x, y = case
    got = _cells(model, x, y, {"apgd_t": {"steps": 5, "targets": 3}}, ["none", "gaussian_blur", "median"])
    starts = random_starts(len(x), (3, 32, 32), 3, seed=0, kind="rand")
    order = model(x).sort(dim=1)[1]
    runs = [targeted_dlr_loss(order[:, -(t + 2)]) for t in range(3)]
    for defense in ("none", "gaussian_blur", "median"):
        want = _every_candidate(model, x, y, runs, starts, defense)
        assert 0 < int(want.sum()) < len(x), defense
        assert torch.equal(got[defense], want), (defense, int(got[defense].sum()), int(want.sum()))


def test_a_defended_apgd_cell_with_restarts_equals_every_restarts_candidate():
    """Restarts likewise: at bf94588 a later restart skipped the images an earlier one broke on the bare model."""
    from robustgrid.attacks.apgd import dlr_loss
    model, x = Centroids().eval(), _images(2, 128)
    with torch.no_grad():
        y = model(x).argmax(1)
    got = _cells(model, x, y, {"apgd": {"steps": 5, "restarts": 3, "loss": "dlr"}}, ["none", "gaussian_blur"])
    starts = random_starts(len(x), (3, 32, 32), 3, seed=0, kind="rand")
    for defense in ("none", "gaussian_blur"):
        want = _every_candidate(model, x, y, [dlr_loss] * 3, starts, defense)
        assert torch.equal(got[defense], want), (defense, int(got[defense].sum()), int(want.sum()))


def test_the_judge_settles_an_image_only_when_every_cell_is_broken():
    from robustgrid.attacks.judge import Judge
    labels = torch.tensor([0, 0, 0])
    # the view passes each image's position on as its pixel, so the models below can tell the images apart
    positions = lambda x, pos: pos.float()
    wrong_in_a = lambda p: torch.where(p == 0, 1, 0)      # cell a: image 0 broken
    wrong_in_b = lambda p: torch.where(p <= 1, 1, 0)      # cell b: images 0, 1 broken
    judge = Judge.of_cells(labels, EPS, "linf", [(positions, [wrong_in_a, wrong_in_b])])
    x = torch.zeros(3, 3, 4, 4)
    assert judge.offer(x, x).tolist() == [True, False, False]
    assert judge.open().tolist() == [1, 2]
    assert judge.subset(torch.tensor([1, 2])).settled().tolist() == [False, False]


def test_autoattacks_square_on_an_int8_self_cell_queries_the_real_int8_model(tiny_model, images):
    """At bf94588 the whole ensemble got the fake-quant twin (its kind is ensemble, not black-box): Square then
    queried a model that is not the one scored."""
    from robustgrid.models import quantize
    with torch.no_grad():
        labels = tiny_model(images).argmax(1)
    ev = EvaluateSpec.model_validate({
        "attacks": [{"autoattack": {"version": "custom", "components": ["square"], "queries": 30}}],
        "eps": ["8/255"], "sources": ["self"], "quant": ["dynamic_int8"], "defenses": ["none"], "batch_size": 24,
        "examples": 0})
    cell = next(c for c in plan_cells(ev) if c.eps > 0)
    engine = Engine(tiny_model, ev, images, labels, torch.device("cpu"))
    made = engine.adversarial(image_key(cell))[0]
    # square_run counts its queries on the model it queries
    assert not hasattr(engine.built.twins["dynamic_int8"], "_square_calls"), "Square queried the fake-quant twin"
    assert hasattr(engine.built.models["dynamic_int8"], "_square_calls")
    real = quantize(tiny_model.to(memory_format=torch.channels_last), "dynamic_int8")
    keys = engine._per_image("autoattack", cell.attack_setting.own, 8 / 255)["image_keys"]
    with torch.no_grad():
        todo = (real(images).argmax(1) == labels).nonzero().squeeze(1)      # the clean image settles the rest
    direct = get_attack("square")(real, images[todo], labels[todo], 8 / 255, queries=30, image_keys=keys[todo])
    assert len(todo) > 10
    assert torch.equal(made[todo, -1], deliver(direct, images[todo], 8 / 255))
