"""Views: pooled cells with their Wilson interval, never pooling different image sets, fitting
80 columns without cutting a number, and pasting as markdown / CSV / JSON."""
import csv
import io
import json

import pandas as pd
import pytest
from rich.console import Console
from robustgrid.runner.evaluate.stats import wilson_interval
from robustgrid.runner.results import eps_label, pivot_view, pivot_views, render

BLUR = '{"ksize": 3, "sigma": 0.0}'


def _rich(views, width=200) -> str:
    c = Console(width=width, record=True, file=io.StringIO())
    render(views, "rich", c)
    return c.export_text()


def _ev(**cols):
    n = len(cols["eps"])
    base = {"trial_id": ["a"] * n, "defense": ["none"] * n, "defense_params": ["{}"] * n, "n": [1000] * n,
            "quant": ["fp32"] * n, "attack_source": ["self"] * n, "attack": ["fgsm"] * n, "seed": [0] * n,
            "data_digest": ["d1"] * n}
    return pd.DataFrame({**base, **cols})


def test_pivot_shows_the_trials_mean_and_range_never_a_pooled_interval():
    """Two models on the same 1000 images are not 2000 independent images: no Wilson interval over them."""
    ev = _ev(trial_id=["a", "b", "a", "b"], eps=[0.0, 0.0, 0.03, 0.03], correct=[900, 800, 100, 300],
             accuracy=[0.9, 0.8, 0.1, 0.3])
    text = _rich([pivot_view(ev, "t")])
    lo, hi = wilson_interval(1700, 2000)
    assert "85.0" in text and f"{100 * lo:.1f}–{100 * hi:.1f}" not in text and "r 80.0–90.0" in text
    assert "20.0" in text and "r 10.0–30.0" in text
    one = _rich([pivot_view(ev[ev.trial_id == "a"], "t")])
    lo, hi = wilson_interval(900, 1000)
    assert "90.0" in one and f"{100 * lo:.1f}–{100 * hi:.1f}" in one and "r " not in one.split("each cell")[0]


def test_cells_that_saw_different_images_are_never_pooled():
    """The quickstart's n=1000 cells and a later `eval --set evaluate.n_images=500`: two tables."""
    ev = _ev(eps=[0.0, 0.0], n=[1000, 500], correct=[700, 340], accuracy=[0.7, 0.68], data_digest=["d1", "d2"])
    views = pivot_views(ev)
    assert len(views) == 2
    assert {("n=1000" in v.title, "n=500" in v.title) for v in views} == {(True, False), (False, True)}
    assert {v.rows[0][1].split("\n")[0] for v in views} == {"70.0", "68.0"}


def test_eps_labels_are_fractions_only_when_exact():
    assert eps_label(8 / 255) == "8/255" and eps_label(0.0) == "0"
    assert eps_label(0.01) == "0.01" and eps_label(0.03) == "0.03"     # 0.01 is not 3/255


def _wide_ev(trials=2):
    rows = []
    defenses = [("none", "{}"), ("gaussian_blur", BLUR), ("jpeg", '{"quality": 30}'), ("jpeg", '{"quality": 75}'),
                ("median", '{"ksize": 3}'), ("tv_denoise", '{"eps": 0.0002, "max_num_iter": 200, "weight": 0.1}')]
    for t in range(trials):
        for eps in (0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 0.03):
            for d, p in defenses:
                rows.append({"trial_id": f"t{t:010d}", "eps": eps, "defense": d, "defense_params": p, "n": 10000,
                             "correct": 6666 + t, "accuracy": 0.6666, "quant": "dynamic_int8", "attack_source": "fp32",
                             "attack": "fgsm", "seed": 0, "data_digest": "d"})
    return pd.DataFrame(rows)


def test_views_fit_80_columns_without_cutting_a_number():
    text = _rich(pivot_views(_wide_ev()), width=80)
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "r 66.7–66.7" in text and "66.7" in text          # two trials: their mean and min–max
    for header in ("blur", "jpeg 30", "jpeg 75", "median", "tv", "8/255", "0.03"):
        assert header in text
    assert "blur: gaussian_blur ksize=3" in text                          # abbreviations explained under it


def test_markdown_csv_and_json_are_the_same_tables():
    views = pivot_views(_wide_ev(1))
    md = render(views, "markdown")
    table = [line for line in md.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table]
    assert all(len(r) == len(cells[0]) for r in cells) and set(cells[1][0]) <= set("-:")   # a markdown table
    assert cells[0][:3] == ["eps", "none", "blur"] and cells[2][0] == "0"
    assert cells[2][1].startswith("66.7 (")
    rows = list(csv.reader(io.StringIO(render(views, "csv").split("\n", 1)[1])))
    assert rows[0] == cells[0] and rows[1][1] == cells[2][1]
    data = json.loads(render(views, "json"))
    assert data[0]["columns"] == cells[0] and len(data[0]["rows"]) == 6


@pytest.mark.parametrize("correct,n", [(0, 1), (0, 50), (3, 17), (50, 50), (999, 1000), (6666, 10000)])
def test_wilson_interval_equals_scipy(correct, n):
    from scipy.stats import binomtest
    ci = binomtest(correct, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_interval(correct, n) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_training_methods_get_a_plot_of_their_own(tmp_path):
    """Several training methods in one folder: a bar per trial, labelled with its method, per defense."""
    import matplotlib
    matplotlib.use("Agg")
    from robustgrid.runner.results.plots import plot_training_methods
    rows = [(t, m, d, e, acc) for t, m in (("a", "none"), ("b", "fgsm_rs"), ("c", "pgd"))
            for d in ("none", "jpeg") for e, acc in ((0.0, 0.8), (8 / 255, {"none": 0.02, "fgsm_rs": 0.3, "pgd": 0.4}[m]))]
    ev = pd.DataFrame([{"trial_id": t, "training": m, "defense": d, "eps": e, "accuracy": a, "ci_low": a - 0.05,
                        "ci_high": a + 0.05, "n": 100, "quant": "fp32", "attack_source": "self", "attack": "pgd",
                        "norm": "linf", "threat": "adaptive"} for t, m, d, e, a in rows])
    assert plot_training_methods(ev, tmp_path / "by_training.png").stat().st_size > 10_000
    from robustgrid.runner.results.plots import training_bars
    (title, table), = training_bars(ev).items()
    assert title == "pgd L-inf 8/255: fp32, source=self, adaptive"
    assert table["accuracy"].loc["jpeg"].to_dict() == {"fgsm_rs": 0.3, "none": 0.02, "pgd": 0.4}   # eps 8/255 only
    two = training_bars(pd.concat([ev, ev[ev.trial_id == "c"].assign(trial_id="d")]))      # two trials of each method: ids say which
    assert set(next(iter(two.values()))["accuracy"].columns) >= {"pgd (c)", "pgd (d)"}
