"""The CLI end to end on synthetic data, and every kind of bad input (exit 2, nothing written)."""
import pandas as pd
import pytest
import yaml
from robustgrid.runner.cli import main
from robustgrid.runner.results import EVAL_SCHEMA, ResultStore

SWEEP = {
    "name": "tiny",
    "data": {"dataset": "synthetic", "synthetic_train": 400, "synthetic_test": 64},
    "train": {"model": "simple_cnn", "lr": {"grid_search": [0.003, 0.01]}, "epochs": 2, "batch_size": 64},
    "evaluate": {"n_images": 48, "eps": [0, "8/255"], "batch_size": 32, "examples": 2},
}


def write(tmp_path, sweep, name="sweep.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(sweep))
    return p


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    out = tmp / "results"
    assert main(["run", str(write(tmp, SWEEP)), "--out", str(out), "--executor", "inline"]) == 0
    return tmp, out


def test_run_writes_tables_with_the_design_schema(tiny_run):
    _, out = tiny_run
    store = ResultStore(out)
    ev, trials, epochs = store.read_eval(), store.read("trials"), store.read("epochs")
    assert list(ev.columns) == EVAL_SCHEMA.names
    assert len(trials) == 2 and set(trials["status"]) == {"ok"} and set(trials["lr"]) == {0.003, 0.01}
    assert len(epochs) == 4 and set(epochs["epoch"]) == {1, 2}
    # cells per trial: eps 0 -> fp32/self, int8/self, int8/fp32; eps>0 -> fp32/self, int8/fp32, int8/self through
    # the int8 model's fake-quant twin (STE, said in attack_params)
    assert len(ev) == 2 * 6 * 5
    ste = ev[(ev["quant"] == "dynamic_int8") & (ev["attack_source"] == "self") & (ev["eps"] > 0)]
    assert len(ste) == 2 * 5 and set(ste["attack_params"]) == {'{"model_gradient": "ste"}'}
    assert not ((ev["quant"] == "fp32") & (ev["attack_source"] == "fp32")).any()
    assert ((ev["ci_low"] <= ev["accuracy"]) & (ev["accuracy"] <= ev["ci_high"])).all()
    assert (ev["n"] == 48).all() and (ev["correct"] == (ev["accuracy"] * 48).round()).all()
    # the arithmetic behind each row: IEEE fp32 (no TF32), the notebook's int8 mode
    assert set(ev.groupby("quant")["precision"].first().items()) == {("fp32", "fp32"),
                                                                     ("dynamic_int8", "int8 linear, fp32 conv")}
    assert (out / "sweep.yaml").exists() and (out / "plots").is_dir()
    assert len(list((out / "plots").glob("*.png"))) == 5     # a trial each, their pool, 2 example panels
    clean = ev[(ev.eps == 0) & (ev.defense == "none") & (ev.quant == "fp32")]["accuracy"]
    attacked = ev[(ev.eps > 0) & (ev.defense == "none") & (ev.quant == "fp32")]["accuracy"]
    assert clean.mean() > attacked.mean()


def test_readme_pivot_query(tiny_run):
    _, out = tiny_run
    df = pd.read_parquet(out / "eval")          # the README's recipe: one image set, one source, one threat
    one_set = df[(df.n == df.n.max()) & (df.seed == 0)]
    int8 = one_set[(one_set.quant == "dynamic_int8") & (one_set.attack_source == "fp32") & (one_set.threat == "oblivious")]
    piv = int8.pivot_table(index="eps", columns="defense", values="accuracy")
    assert piv.shape == (2, 5)


def test_rerun_skips_done_cells_and_never_duplicates(tiny_run, capsys):
    tmp, out = tiny_run
    before = ResultStore(out).read_eval()
    parts = sorted((out / "eval").glob("part-*"))
    assert main(["run", str(write(tmp, SWEEP)), "--out", str(out), "--executor", "inline"]) == 0
    assert sorted((out / "eval").glob("part-*")) == parts          # nothing recomputed
    after = ResultStore(out).read_eval()
    assert len(after) == len(before) == len(after.drop_duplicates(["trial_id", "quant", "attack_source", "eps", "defense"]))


def test_eval_adds_new_cells_without_retraining(tiny_run):
    _, out = tiny_run
    mtimes = {p: p.stat().st_mtime for p in (out / "checkpoints").rglob("best.pt")}
    assert main(["eval", str(out), "--executor", "inline", "--set", "evaluate.eps=[0, 0.03]",
                 "--set", "evaluate.defenses=[none, jpeg]"]) == 0
    ev = ResultStore(out).read_eval()
    assert set(ev["eps"].round(4)) == {0.0, round(8 / 255, 4), 0.03}
    assert {p: p.stat().st_mtime for p in (out / "checkpoints").rglob("best.pt")} == mtimes
    # the folder remembers each run's grid: sweep.yaml still the run's, the eval's own under runs/<its run id>
    eval_run = (set(ev["run_id"]) - set(ResultStore(out).read("trials")["run_id"])).pop()
    kept = yaml.safe_load((out / "runs" / f"{eval_run}.yaml").read_text())
    assert kept["evaluate"]["eps"] == [0, 0.03] and yaml.safe_load((out / "sweep.yaml").read_text()) == SWEEP


def test_show_one_quant_mode(tiny_run, capsys):
    _, out = tiny_run          # `robustgrid models` is tested once, piped at 80 columns (test_quant.py)
    assert main(["show", str(out), "--quant", "fp32"]) == 0
    text = capsys.readouterr().out
    assert "quant=fp32" in text and "quant=dynamic_int8" not in text


@pytest.mark.parametrize("mutate,expect", [
    (lambda s: s.update(bogus=1), "bogus: unknown key"),
    (lambda s: s["train"].update(lrr=0.1), "train.lrr: unknown key"),
    (lambda s: s["train"].update(model="resnet9000"), "train.model: unknown model"),
    (lambda s: s["evaluate"].update(eps=[0, 0.1, -0.5]), "evaluate.eps[2]: must be a finite number >= 0"),
    (lambda s: s["train"].update(depth=16), "train.depth: simple_cnn takes no depth"),
    (lambda s: s["train"].update(adversarial="pgd", adv_eps=-0.1), "train.adv_eps: must be in [1/255, 1]"),
    (lambda s: s["train"].update(adversarial="fgsm_rs", adv_steps=7), "train.adv_steps: fgsm_rs takes one step"),
    (lambda s: s["train"].update(adversarial="free"), "train.adversarial: Input should be 'none', 'fgsm_rs', 'pgd' or 'trades'"),
    (lambda s: s["train"].update(adversarial="trades", trades_beta=0), "train.trades_beta: Input should be greater than 0"),
    (lambda s: s["train"].update(adversarial={"grid_search": ["pgd", "madry"]}), "train.adversarial.grid_search[1]: Input should be"),
    (lambda s: s["train"].update(model="wide_resnet", depth=15), "train.depth: must be 6n + 4 >= 10"),
    (lambda s: s["evaluate"].update(eps=[0, 2]), "evaluate.eps[1]: 2 is beyond any image in [0,1] for the linf attack"),
    (lambda s: s["evaluate"].update(attacks=[{"pgd": {"norm": "l2", "eps": [0.5, 60]}}]),
     "evaluate.attacks[0].eps[1]: 60 is beyond any image in [0,1] for the l2 attack pgd"),
    (lambda s: s["evaluate"].update(attacks=[{"autoattack": {"version": "custom", "components": ["apgd-ce", "fab"]}}]),
     "evaluate.attacks[0].autoattack.components[1]: unknown component 'fab'"),
    (lambda s: s["evaluate"].update(defenses=["none", "blur"]), "evaluate.defenses.blur: unknown defense"),
    (lambda s: s["evaluate"].update(defenses={"jpeg": {"q": 3}}), "evaluate.defenses.jpeg.q: unknown parameter"),
    (lambda s: s["evaluate"].update(attacks=["pgd9"]), "evaluate.attacks[0]: unknown attack"),
    (lambda s: s["evaluate"].update(quant=["fp32", "int3"]), "evaluate.quant[1]: unknown quant mode"),
    (lambda s: s["train"].update(lr={"grid_search": [0.1, -1]}), "train.lr.grid_search[1]"),
    (lambda s: s.update(data={"dataset": "imagefolder", "path": "/no/such/folder"}), "data.path"),
    (lambda s: s.update(resources={"gpus_per_trial": 0.5, "workers_per_trial": 2}), "resources.gpus_per_trial: with"),
    (lambda s: s["evaluate"].update(attacks=["fgsm", {"pgd": {"steps": 0}}]), "evaluate.attacks[1].pgd.steps: must be >= 1"),
    (lambda s: s["evaluate"].update(attacks=[{"pgd": {"stepz": 3}}]), "evaluate.attacks[0].pgd.stepz: unknown parameter"),
    (lambda s: s["evaluate"].update(attacks=[{"pgd": {"random_start": 3}}]), "evaluate.attacks[0].pgd.random_start: must be bool"),
    (lambda s: s["evaluate"].update(attacks=["torchattacks.NoSuch"]), "evaluate.attacks[0]: torchattacks has no attack"),
    (lambda s: s["evaluate"].update(threats=["oblivious", "sneaky"]), "evaluate.threats[1]"),
    (lambda s: s["evaluate"].update(threats=[]), "evaluate.threats: must name at least one"),
    (lambda s: s["evaluate"].update(defenses={"jpeg": {"quality": 0}}), "evaluate.defenses.jpeg.quality: must be an integer in [1, 100]"),
    (lambda s: s["evaluate"].update(defenses={"median": {"ksize": 4}}), "evaluate.defenses.median.ksize: must be an odd integer >= 3"),
    (lambda s: s["evaluate"].update(defenses={"tv_denoise": {"weight": -1}}), "evaluate.defenses.tv_denoise.weight: must be > 0"),
    # grids that would do nothing or the wrong thing
    (lambda s: s["evaluate"].update(eps=[]), "evaluate.eps: is empty"),
    (lambda s: s["evaluate"].update(eps=[0, 0.03, 0.0015]), "evaluate.eps[2]: 0.0015 is under 1/255"),
    (lambda s: s["evaluate"].update(defense_draws=0), "evaluate.defense_draws"),
    (lambda s: s["evaluate"].update(sources=[]), "evaluate.sources: is empty"),
    (lambda s: s["evaluate"].update(defenses={}), "evaluate.defenses: is empty"),
    (lambda s: s["evaluate"].update(n_images=1000000), "evaluate.n_images: 1000000 asked for, but the synthetic test split has 64"),
    (lambda s: s["evaluate"].update(defenses={"gaussian_blur": {"ksize": 2}}), "evaluate.defenses.gaussian_blur.ksize"),
    (lambda s: s["evaluate"].update(defenses={"median": {"ksize": -3}}), "evaluate.defenses.median.ksize"),
    (lambda s: s["evaluate"].update(defenses={"jpeg": {"quality": 101}}), "evaluate.defenses.jpeg.quality"),
])
def test_bad_sweep_exits_2_names_the_key_and_writes_nothing(tmp_path, capsys, mutate, expect):
    sweep = yaml.safe_load(yaml.safe_dump(SWEEP))
    mutate(sweep)
    out = tmp_path / "out"
    assert main(["run", str(write(tmp_path, sweep)), "--out", str(out), "--executor", "inline"]) == 2
    err = capsys.readouterr().err
    assert expect in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_bad_override_and_missing_file(tmp_path, capsys):
    p = write(tmp_path, SWEEP)
    assert main(["run", str(p), "--out", str(tmp_path / "o"), "--set", "evaluate.eps=[-1]"]) == 2
    assert "evaluate.eps[0]" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    (tmp_path / "broken.yaml").write_text("name: [unclosed")
    assert main(["run", str(tmp_path / "broken.yaml")]) == 2
    assert not (tmp_path / "o").exists()


def test_truncated_checkpoint_in_results_exits_2(tiny_run, tmp_path, capsys):
    import shutil
    _, out = tiny_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    trials = ResultStore(copy).read("trials")
    # point the copied trials at the copied checkpoints, then truncate one
    trials["checkpoint"] = trials["checkpoint"].str.replace(str(out), str(copy))
    ResultStore(copy).upsert("trials", trials.to_dict("records"), ["trial_id"])
    ckpt = copy / "checkpoints" / trials["trial_id"].iloc[0] / "best.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    n_parts = len(list((copy / "eval").glob("part-*")))
    assert main(["eval", str(copy), "--executor", "inline", "--set", "evaluate.eps=[0.05]"]) == 2
    err = capsys.readouterr().err
    assert "unreadable checkpoint" in err and str(ckpt) in err
    assert len(list((copy / "eval").glob("part-*"))) == n_parts


def test_every_row_carries_its_provenance(tiny_run):
    _, out = tiny_run
    store = ResultStore(out)
    ev, trials = store.read_eval(), store.read("trials")
    for df in (ev, trials):
        for col in ("code_version", "torch_version", "torchvision_version", "opencv_version", "skimage_version",
                    "ray_version", "data_digest"):
            assert df[col].notna().all() and (df[col] != "").all(), col
        assert "git_commit" in df and "git_dirty" in df
    assert ev["data_digest"].nunique() == 1 and trials["data_digest"].nunique() == 1
    assert set(ev["data_digest"]) != set(trials["data_digest"])          # test images vs training split


def test_show_trial_prints_provenance_and_formats_paste(tiny_run, capsys):
    _, out = tiny_run
    tid = ResultStore(out).read("trials")["trial_id"].iloc[0]
    assert main(["show", str(out), "--trial", tid]) == 0
    text = capsys.readouterr().out
    assert f"provenance of {tid}" in text and "git_commit" in text and "opencv_version" in text
    assert main(["show", str(out), "--format", "markdown"]) == 0
    md = capsys.readouterr().out
    assert "| eps |" in md and "|---|" in md and "…" not in md


def test_results_are_group_readable_under_umask_022(tmp_path):
    import os
    import stat
    old = os.umask(0o022)
    try:
        out = tmp_path / "perm"
        sweep = yaml.safe_load(yaml.safe_dump(SWEEP))
        sweep["train"]["lr"] = 0.01
        sweep["evaluate"].update(eps=[0], defenses=["none"], examples=1)
        assert main(["run", str(write(tmp_path, sweep)), "--out", str(out), "--executor", "inline"]) == 0
    finally:
        os.umask(old)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files) and any(p.name == "best.pt" for p in files)
    for p in files:
        if "ray" not in p.parts:
            assert stat.S_IMODE(p.stat().st_mode) == 0o644, p
    assert not [p for p in files if p.name.endswith(".tmp")]


OLD_EVAL_SCHEMA = [  # the eval schema of the previous release: no precision, no provenance but two versions
    "sweep", "run_id", "trial_id", "model", "dataset", "quant", "model_bytes", "attack", "attack_source", "eps",
    "defense", "defense_params", "n", "correct", "accuracy", "ci_low", "ci_high", "attack_success_rate", "seconds",
    "device", "seed", "created_at", "code_version", "torch_version"]


def test_results_of_the_previous_schema_stay_readable(tiny_run, tmp_path, capsys):
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq
    _, out = tiny_run
    old = tmp_path / "old"
    shutil.copytree(out, old)
    for part in (old / "eval").glob("part-*.parquet"):           # rewrite every part as the old release did
        t = pq.read_table(part)
        pq.write_table(t.select(OLD_EVAL_SCHEMA), part)
    trials = pq.read_table(old / "trials.parquet")
    keep = [c for c in trials.column_names if c not in ("cuda_visible_devices", "data_digest", "code_version",
                                                         "git_commit", "git_dirty", "torchvision_version",
                                                         "opencv_version", "skimage_version", "ray_version")]
    pq.write_table(trials.select(keep), old / "trials.parquet")
    ev = ResultStore(old).read_eval()
    assert list(ev.columns) == EVAL_SCHEMA.names and len(ev) == len(ResultStore(out).read_eval())
    assert ev["precision"].isna().all() and ev["code_version"].notna().all()
    assert isinstance(pa.Table.from_pandas(ev), pa.Table)
    assert main(["show", str(old)]) == 0
    assert "fgsm accuracy" in capsys.readouterr().out


def test_progress_counts_what_will_be_computed(tiny_run):
    from robustgrid.runner.execute import Sweep
    from robustgrid.runner.spec import load_spec
    _, out = tiny_run
    spec, raw = load_spec(out / "sweep.yaml", ["evaluate.eps=[0, 0.05]", "evaluate.n_images=20"])
    sweep = Sweep(spec, raw, out)
    checkpoints = sweep.selected_checkpoints()
    progress = sweep.eval_progress(ResultStore(out).eval_keys(), checkpoints)
    # nothing at n=20 exists yet: every planned cell is to be computed, none of the n=48 cells counts
    from robustgrid.runner.evaluate import count_cells
    assert count_cells(spec.evaluate) == 30 and len(checkpoints) == 2
    assert progress == {"total": 60, "completed": 0}


def test_best_ranks_by_robust_validation_accuracy_when_asked(tiny_run, tmp_path):
    """select: best with select_by robust_val_accuracy takes the trial robust on validation, not the
    clean-best one; a trial without a robust figure (standard training) ranks last."""
    import shutil

    from robustgrid.runner.execute import Sweep
    from robustgrid.runner.spec import load_spec
    _, out = tiny_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("eval", "shards", "plots"))
    trials = ResultStore(copy).read("trials").sort_values("best_val_accuracy", ascending=False)
    clean_best, other = trials["trial_id"].tolist()
    ResultStore(copy).upsert("trials", [{**trials.iloc[1].to_dict(), "best_robust_val_accuracy": 0.3}], ["trial_id"])
    picks = {}
    for by in ("val_accuracy", "robust_val_accuracy"):
        spec, raw = load_spec(copy / "sweep.yaml", ["evaluate.select=best", f"evaluate.select_by={by}"])
        picks[by] = [t["trial_id"] for t in Sweep(spec, raw, copy).selected_checkpoints()]
    assert picks == {"val_accuracy": [clean_best], "robust_val_accuracy": [other]}


def test_show_filters_and_says_when_nothing_matched(tiny_run, capsys):
    _, out = tiny_run
    assert main(["show", str(out), "--quant", "int8"]) == 1
    assert "no cell matches --quant int8 (this folder has: dynamic_int8, fp32)" in capsys.readouterr().err
    assert main(["show", str(out), "--eps", "4/255"]) == 1
    assert main(["show", str(out), "--eps", "8/255", "--source", "fp32", "--n", "48", "--format", "csv"]) == 0
    text = capsys.readouterr().out
    assert "source=fp32" in text and "source=self" not in text
    assert main(["show", str(out), "--eps", "eight"]) == 2


def _copy_described(out, tmp_path, description: str):
    """A copy of a results folder whose sweep description is `description` (markup a report must not run)."""
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    raw = yaml.safe_load((copy / "sweep.yaml").read_text())
    raw["description"] = description
    (copy / "sweep.yaml").write_text(yaml.safe_dump(raw))
    return copy


def test_report_is_one_page_that_needs_nothing_else_and_escapes_the_folders_values(tiny_run, tmp_path):
    """robustgrid report: the tables show prints, the plots inline, no request leaves the page, and a sweep
    description holding a script is shown as text, never run."""
    import re
    copy = _copy_described(tiny_run[1], tmp_path, "<script>alert('pwned')</script> & more")
    assert main(["report", str(copy), "-o", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt; &amp; more" in page
    assert page.count("<script>") == 1                                   # the sorter, nothing else
    assert not re.search(r"(src|href)=\"?(https?:)?//", page)            # no CDN, no remote anything
    assert page.count('<table class="sortable">') >= 4 and page.count("data:image/png;base64,") == 5
    assert "fgsm accuracy" in page and "provenance of" in page
    assert main(["show", str(copy), "--format", "html"]) == 0


def _sort_key(text: str) -> tuple:
    """The report's sort key in Python: a number where JavaScript's parseFloat reads one (numbers first), else text."""
    import re
    m = re.match(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", text)
    return (0, float(m.group(0)), "") if m else (1, 0.0, text.strip())


def test_report_in_headless_chromium_sorts_and_runs_nothing_from_the_data(tiny_run, tmp_path):
    """The report opened in Debian's chromium (selenium, the system chromedriver): no console error, every
    table and plot there, a header click reorders its rows, markup from the folder never runs. A screenshot
    is left beside the page (report.png)."""
    import shutil
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    copy = _copy_described(tiny_run[1], tmp_path, '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">')
    page = tmp_path / "report.html"
    assert main(["report", str(copy), "-o", str(page)]) == 0
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,2000"):
        options.add_argument(arg)
    options.binary_location = shutil.which("chromium")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.set_page_load_timeout(60)
        driver.get(page.as_uri())
        assert driver.execute_script("return window.pwned") is None                 # the folder's markup is text
        tables = driver.find_elements(By.CSS_SELECTOR, "table.sortable")
        assert len(tables) >= 4
        images = driver.find_elements(By.TAG_NAME, "img")
        assert len(images) == 5 and all(driver.execute_script("return arguments[0].naturalWidth", i) > 0 for i in images)
        for table in tables:       # a header of every table sorts its own rows (the column index is per table)
            headers = table.find_elements(By.CSS_SELECTOR, "thead th") or table.find_elements(By.TAG_NAME, "th")
            col = len(headers) - 1
            column = lambda: [_sort_key(r.find_elements(By.TAG_NAME, "td")[col].text)
                              for r in table.find_elements(By.CSS_SELECTOR, "tbody tr")]
            headers[col].click()
            ascending = column()
            headers[col].click()
            assert ascending == sorted(ascending) and column() == sorted(ascending, reverse=True)
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        driver.save_screenshot(str(tmp_path / "report.png"))
    finally:
        driver.quit()
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_notebook_api_runs_a_dict_and_loads_the_folder(tmp_path):
    import robustgrid
    sweep = yaml.safe_load(yaml.safe_dump(SWEEP))
    sweep["train"]["lr"] = 0.01
    res = robustgrid.run(sweep, out=tmp_path / "api", overrides=["evaluate.eps=[0]", "evaluate.defenses=[none]"],
                         executor="inline")
    assert len(res.trials) == 1 and set(res.eval["eps"]) == {0.0} and len(res.epochs) == 2
    assert res.eval["correct"].dtype == "int64" and str(res.eval["created_at"].dtype).startswith("datetime64")
    again = robustgrid.load(tmp_path / "api")
    md = again.table("markdown")
    assert "| eps |" in md and "quant=fp32" in md
    assert {p.name for p in again.plot()} >= {f"accuracy_vs_eps_{res.trials['trial_id'].iloc[0]}.png"}
    assert "quickstart" in set(robustgrid.list_sweeps()["name"])
    with pytest.raises(robustgrid.runner.spec.SpecError, match="evaluate.eps"):
        robustgrid.run(sweep, out=tmp_path / "bad", overrides=["evaluate.eps=[-1]"], executor="inline")
    assert not (tmp_path / "bad").exists()


def test_bad_paths_and_values_are_one_line_not_a_traceback(tmp_path, capsys):
    p = write(tmp_path, SWEEP)
    (tmp_path / "a_file").write_text("x")
    readonly = tmp_path / "ro"
    readonly.mkdir()
    readonly.chmod(0o500)
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)))
    cases = [
        (["run", str(p), "--set", "evaluate.eps=[0,"], "evaluate.eps: --set value"),
        (["run", str(p), "--out", str(tmp_path / "a_file"), "--executor", "inline"], "exists and is not a folder"),
        (["run", str(tmp_path), "--executor", "inline"], "is a directory, not a sweep file"),
        (["run", str(tmp_path / "binary.yaml"), "--executor", "inline"], "not a text file"),
    ]
    import os
    if os.geteuid() != 0:      # root writes anywhere: the read-only case means nothing there
        cases.append((["run", str(p), "--out", str(readonly / "o"), "--executor", "inline"], "not writable"))
    for args, expect in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert expect in err and len(err.strip().splitlines()) == 1, err
    assert list(readonly.iterdir()) == []


def test_one_run_at_a_time_per_results_folder(tiny_run, capsys):
    from robustgrid.runner.execute import FolderLock
    tmp, out = tiny_run
    parts = sorted((out / "eval").glob("part-*"))
    with FolderLock(out):          # another run holds the folder
        assert main(["run", str(write(tmp, SWEEP)), "--out", str(out), "--executor", "inline"]) == 2
        err = capsys.readouterr().err
        assert "in use by another robustgrid run (pid" in err
        assert main(["eval", str(out), "--executor", "inline", "--set", "evaluate.eps=[0.05]"]) == 2
    assert sorted((out / "eval").glob("part-*")) == parts       # nothing written meanwhile
    assert main(["eval", str(out), "--executor", "inline", "--set", "evaluate.eps=[0]"]) == 0   # free again


def test_a_broken_image_is_refused_and_a_failed_trial_makes_the_run_exit_nonzero(tmp_path, capsys):
    """A folder that validates but holds a broken image is refused before any trial (it failed the trial while
    loading, once); a trial that fails all the same (CUDA asked for where there is none) exits 1, naming why."""
    import numpy as np
    from PIL import Image
    for split in ("train", "test"):
        for cls in ("a", "b"):
            d = tmp_path / "set" / split / cls
            d.mkdir(parents=True)
            for i in range(20):
                Image.fromarray(np.full((32, 32, 3), 60 * i % 255, np.uint8)).save(d / f"{i}.png")
    (tmp_path / "set" / "train" / "a" / "broken.png").write_bytes(b"not a png")
    sweep = yaml.safe_load(yaml.safe_dump(SWEEP))
    sweep["train"]["lr"] = 0.01
    sweep["data"] = {"dataset": "imagefolder", "path": str(tmp_path / "set")}
    sweep["evaluate"]["n_images"] = 20
    out = tmp_path / "out"
    assert main(["run", str(write(tmp_path, sweep)), "--out", str(out), "--executor", "inline"]) == 2
    assert "broken.png: not a readable image" in capsys.readouterr().err     # refused before any trial, named
    assert not out.exists()
    (tmp_path / "set" / "train" / "a" / "broken.png").unlink()
    sweep["train"]["device"] = "cuda"
    assert main(["run", str(write(tmp_path, sweep)), "--out", str(out), "--executor", "inline"]) == 1
    assert "no CUDA device is visible" in " ".join(capsys.readouterr().err.split())


def test_a_moved_results_folder_still_evaluates_and_resumes(tiny_run, tmp_path, capsys):
    import shutil
    tmp, out = tiny_run
    moved = tmp_path / "elsewhere" / "moved"
    shutil.copytree(out, moved)
    stored = ResultStore(moved).read("trials")["checkpoint"]
    assert all(not p.startswith("/") for p in stored)                    # relative to the folder
    shutil.rmtree(out / "checkpoints")                                    # the original is gone
    try:
        assert main(["eval", str(moved), "--executor", "inline", "--set", "evaluate.eps=[0.02]",
                     "--set", "evaluate.defenses=[none]"]) == 0
        assert (ResultStore(moved).read_eval()["eps"].round(4) == 0.02).sum() == 2 * 3
        parts = sorted((moved / "eval").glob("part-*"))
        assert main(["run", str(write(tmp, SWEEP)), "--out", str(moved), "--executor", "inline"]) == 0
        assert sorted((moved / "eval").glob("part-*")) == parts            # resume: nothing retrained or recomputed
    finally:
        shutil.copytree(moved / "checkpoints", out / "checkpoints")


def test_a_damaged_part_is_left_out_named_and_recomputed(tiny_run, tmp_path, capsys):
    import shutil
    tmp, out = tiny_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    before = ResultStore(copy).read_eval()
    # a part of the sweep's own grid (other tests added cells of other grids to this folder)
    grid = {0.0, round(8 / 255, 6)}
    part = next(p for p in sorted((copy / "eval").glob("part-*"))
                if set(pd.read_parquet(p)["eps"].round(6)) <= grid and set(pd.read_parquet(p)["n"]) == {48})
    lost = len(pd.read_parquet(part))
    part.write_bytes(part.read_bytes()[:200])                              # cut short
    assert len(ResultStore(copy).read_eval()) == len(before) - lost
    assert part.name in capsys.readouterr().err
    assert main(["run", str(write(tmp, SWEEP)), "--out", str(copy), "--executor", "inline"]) == 0
    after = pd.read_parquet(copy / "eval")       # the README's plain reader: the damaged part is set aside
    assert len(after) == len(before) and not after.duplicated(["trial_id", "quant", "attack_source", "eps", "defense",
                                                               "n", "attack_params", "threat"]).any()
    assert (copy / "eval" / f".damaged-{part.name}").exists()
    (copy / "trials.parquet").write_bytes(b"garbage")
    capsys.readouterr()
    assert main(["show", str(copy)]) == 2
    err = capsys.readouterr().err
    assert "trials.parquet: damaged" in err and len(err.strip().splitlines()) == 1


def test_a_failed_write_is_one_line_keeps_finished_files_and_resume_completes(tmp_path, monkeypatch, capsys):
    """Disk full, simulated where the bytes reach the disk: the fsync of the third eval part file
    fails with ENOSPC. One line, status 3, no temporary left behind, every file written before
    untouched; the rerun with --resume computes the missing cells and nothing twice."""
    import errno
    import hashlib
    import os

    import robustgrid.files
    opened, failed = {}, []

    class DiskFullAfterTwoParts:               # the real os, except fsync of a third eval part
        def __getattr__(self, name):
            return getattr(os, name)

        def open(self, path, *args):
            fd = os.open(path, *args)
            opened[fd] = str(path)
            return fd

        def fsync(self, fd):
            path = opened.pop(fd, "")
            parts = sorted((out / "eval").glob("part-*")) if (out / "eval").exists() else []
            if ".part-" in path and len(parts) >= 2 and not failed:
                failed.append(path)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return os.fsync(fd)

    out = tmp_path / "out"
    sweep = write(tmp_path, SWEEP)
    args = ["run", str(sweep), "--out", str(out), "--executor", "inline", "--set", "evaluate.defenses=[none,median]"]
    monkeypatch.setattr(robustgrid.files, "os", DiskFullAfterTwoParts())
    capsys.readouterr()
    assert main(args) == 3
    err = capsys.readouterr().err
    line = [line for line in err.splitlines() if line.startswith("error:")]
    assert failed and len(line) == 1 and "No space left on device" in line[0] and "--resume" in line[0], err
    assert "Traceback" not in err
    assert not list(out.rglob("*.tmp"))
    digest = lambda f: hashlib.sha256(f.read_bytes()).hexdigest()
    before = {f: digest(f) for f in [*(out / "eval").glob("part-*"), *(out / "checkpoints").glob("*/best.pt")]}
    assert len([f for f in before if "part-" in f.name]) == 2
    monkeypatch.setattr(robustgrid.files, "os", os)                  # space freed
    assert main([*args, "--resume"]) == 0
    assert {f: digest(f) for f in before} == before
    ev = pd.read_parquet(out / "eval")
    from robustgrid.runner.evaluate import count_cells
    from robustgrid.runner.spec import load_spec
    assert len(ev) == 2 * count_cells(load_spec(out / "sweep.yaml")[0].evaluate)
    assert not ev.duplicated(["trial_id", "quant", "attack", "attack_params", "attack_source", "eps", "defense"]).any()


def test_version_prints_the_package_version_and_commit(capsys):
    from robustgrid.runner.provenance import git_state
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    line = capsys.readouterr().out.strip()
    commit, _ = git_state()
    assert line.startswith("robustgrid 0.1.0") and (commit[:12] in line if commit else "installed copy" in line)


def test_a_live_table_in_a_file_ends_its_line_before_the_next_message():
    """rich closes a live display's last line only on a terminal: in a pipe `interrupted.` was glued to
    the table's border (`└──┘interrupted.`)."""
    import io

    from rich.console import Console
    from robustgrid.runner.console import LiveDisplay
    out = io.StringIO()
    con = Console(file=out, force_terminal=False, width=60)
    with pytest.raises(KeyboardInterrupt), LiveDisplay("trials table", console=con):
        raise KeyboardInterrupt
    con.print("interrupted.")
    assert out.getvalue().splitlines()[-1] == "interrupted."


def _image_folder(root, classes=("a", "b"), n=3):
    import numpy as np
    from PIL import Image
    g = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(g.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


@pytest.mark.parametrize("damage", ["truncated image", "empty class folder", "different classes"])
def test_a_bad_image_folder_is_refused_before_any_trial_naming_what(tmp_path, capsys, damage):
    folder = _image_folder(tmp_path / "images")
    if damage == "truncated image":
        bad = folder / "train" / "b" / "1.png"
        bad.write_bytes(bad.read_bytes()[:200])      # a valid header, the pixels cut off: only decoding finds it
        named = str(bad)
    elif damage == "empty class folder":
        for f in (folder / "test" / "a").iterdir():
            f.unlink()
        named = str(folder / "test" / "a")
    else:
        (folder / "test" / "b").rename(folder / "test" / "c")
        named = "only in train/: b; only in test/: c"
    sweep = {"name": "folder", "data": {"dataset": "imagefolder", "path": str(folder), "val_size": 2},
             "train": {"model": "simple_cnn", "epochs": 1}, "evaluate": {"n_images": 2, "eps": [0]}}
    p = tmp_path / "folder.yaml"
    p.write_text(yaml.safe_dump(sweep))
    out = tmp_path / "out"
    assert main(["run", str(p), "--out", str(out)]) == 2          # the default executor: refused before Ray starts
    said = capsys.readouterr()
    assert named in " ".join((said.out + said.err).split())
    assert not out.exists(), "nothing written"


def test_the_notebook_api_refuses_a_folder_another_run_holds(tmp_path, capsys):
    """One run flow for the CLI and the notebook: both take the folder's lock, both are refused by its holder."""
    import os

    import robustgrid
    from robustgrid.runner.execute import FolderBusy, FolderLock
    out = tmp_path / "held"
    sweep = yaml.safe_load(yaml.safe_dump(SWEEP))
    with FolderLock(out):           # a run in progress (another open of the lock file conflicts as another process would)
        with pytest.raises(FolderBusy, match=f"in use by another robustgrid run \\(pid {os.getpid()} "):
            robustgrid.run(sweep, out=out, executor="inline")
        p = tmp_path / "tiny.yaml"
        p.write_text(yaml.safe_dump(sweep))
        assert main(["run", str(p), "--out", str(out), "--executor", "inline"]) == 2
        said = capsys.readouterr()
        assert f"pid {os.getpid()}" in said.out + said.err
    assert not (out / "trials").exists() and not (out / "sweep.yaml").exists()


@pytest.mark.parametrize("command", [["run", "quickstart", "--out"], ["show"], ["report"], ["eval"]])
def test_an_object_store_uri_is_refused_not_taken_for_a_folder(tmp_path, monkeypatch, capsys, command):
    """`--out s3://bucket/x` wrote a local folder `s3:` and exited 0, and `show s3://...` read it back from
    there: a user believed the results were in the bucket. A scheme robustgrid does not support is refused
    (s3:// itself: tests/test_object_storage.py, against a real S3 server)."""
    monkeypatch.chdir(tmp_path)
    assert main([*command, "gs://bucket/x"]) == 2
    assert "gs:// is not supported; give a path" in capsys.readouterr().err.replace("\n", " ")
    assert not any(tmp_path.iterdir()), "nothing written, no folder named s3:"
