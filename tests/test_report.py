import pandas as pd
from rich.console import Console

from runner.report import pivot_table
from runner.stats import wilson_interval


def _render(table) -> str:
    c = Console(width=200, record=True)
    c.print(table)
    return c.export_text()


def test_pivot_pools_trials_and_shows_their_range():
    ev = pd.DataFrame({"trial_id": ["a", "b", "a", "b"], "eps": [0.0, 0.0, 0.03, 0.03],
                       "defense": ["none"] * 4, "correct": [900, 800, 100, 300], "n": [1000] * 4,
                       "accuracy": [0.9, 0.8, 0.1, 0.3]})
    text = _render(pivot_table(ev, "t"))
    lo, hi = wilson_interval(1700, 2000)               # the pooled 2000 images, not a mean of bounds
    assert f"85.0 ({100 * lo:.1f}–{100 * hi:.1f})" in text and "range 80.0–90.0" in text
    assert "20.0" in text and "range 10.0–30.0" in text
    one = _render(pivot_table(ev[ev.trial_id == "a"], "t"))
    lo, hi = wilson_interval(900, 1000)
    assert f"90.0 ({100 * lo:.1f}–{100 * hi:.1f})" in one and "range" not in one
