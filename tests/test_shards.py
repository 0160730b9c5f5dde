"""Evaluation shards: a cell is the exact sum of its shards, and a killed evaluation resumes by shard."""
import json
import shutil
import sys

import pandas as pd
import pytest
import torch
import yaml
from robustgrid.models import create_model, save_checkpoint
from robustgrid.runner.data import make_synthetic, to_float
from robustgrid.runner.evaluate import EvalTask, count_cells, evaluate_checkpoint
from robustgrid.runner.evaluate.shards import merge_shards, shard_ranges
from robustgrid.runner.provenance import images_digest
from robustgrid.runner.spec import DataSpec, EvaluateSpec

N = 21
DATA = DataSpec(dataset="synthetic", synthetic_train=200, synthetic_test=N)
# every kind of cell: oblivious and adaptive, int8 white-box (STE twin) and transferred, a randomized defense
GRID = EvaluateSpec(n_images=N, eps=[0, 24 / 255], attacks=[{"name": "fgsm"}, {"name": "pgd", "params": {"steps": 3}}],
                    threats=["oblivious", "adaptive"], defenses={"none": {}, "median": {},
                                                                 "random_resize_pad": {"min_size": 26}},
                    defense_draws=3, eot_samples=2, quant=["fp32", "dynamic_int8"], batch_size=4, examples=0)
# what must be the same, merged or not (seconds, device, created_at and where it ran are not the cell)
SAME = ["n", "correct", "accuracy", "ci_low", "ci_high", "accuracy_draw_mean", "defense_draws", "candidates",
        "delivered_linf", "delivered_l2", "broken_by", "attack_success_rate", "correct_mask", "dead_gradients",
        "data_digest", "model_bytes", "norm"]
CELL = ["quant", "attack", "attack_params", "attack_source", "threat", "eps", "defense", "defense_params"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A simple_cnn trained a little on the synthetic set: right on some images, fooled on others."""
    torch.manual_seed(0)
    model = create_model("simple_cnn")
    x, y = make_synthetic(200, seed=0)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for i in range(0, 200, 25):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(to_float(x[i:i + 25])), y[i:i + 25]).backward()
        opt.step()
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    save_checkpoint(path, "simple_cnn", {}, model.state_dict())
    return str(path)


def _task(checkpoint: str) -> EvalTask:
    return EvalTask(checkpoint=checkpoint, trial_id="t0", sweep="s", run_id="r", model="simple_cnn", data=DATA,
                    evaluate=GRID)


def _by_cell(rows: list[dict]) -> dict[tuple, dict]:
    return {tuple(r[k] for k in CELL): r for r in rows}


def test_cells_of_1_3_7_shards_equal_the_unsharded_evaluation(checkpoint):
    whole = _by_cell(evaluate_checkpoint(_task(checkpoint)))
    assert len(whole) == count_cells(GRID) and {r["shard_start"] for r in whole.values()} == {0}
    assert any(r["eps"] > 0 and r["attack_success_rate"] > 0 for r in whole.values()), \
        "the attacks must fool some images for the comparison to mean anything"
    x, y = make_synthetic(N, seed=1)
    digest = images_digest(x, y)
    assert {r["data_digest"] for r in whole.values()} == {digest}
    for size, n_shards in ((N, 1), (7, 3), (3, 7)):
        ranges = shard_ranges(N, size)
        assert len(ranges) == n_shards
        shards: dict[tuple, list[dict]] = {}
        for a, b in reversed(ranges):      # any order: the merge sorts by image index
            for key, row in _by_cell(evaluate_checkpoint(_task(checkpoint).for_shard(a, b, digest))).items():
                shards.setdefault(key, []).append(row)
        assert shards.keys() == whole.keys()
        for key, parts in shards.items():
            merged = merge_shards(parts)
            assert {k: merged[k] for k in SAME} == {k: whole[key][k] for k in SAME}, (n_shards, key)
            assert [s["images"] for s in json.loads(merged["shards"])] == [list(r) for r in ranges]


def test_a_merge_refuses_shards_that_do_not_tile_the_cell(checkpoint):
    x, y = make_synthetic(N, seed=1)
    grid = EvaluateSpec(n_images=N, eps=[0], attacks=["fgsm"], defenses={"none": {}}, quant=["fp32"], examples=0)
    task = EvalTask(checkpoint=checkpoint, trial_id="t0", sweep="s", run_id="r", model="simple_cnn", data=DATA,
                    evaluate=grid)
    rows = evaluate_checkpoint(task.for_shard(0, 7, images_digest(x, y)))
    with pytest.raises(ValueError, match="cover 7 of the cell's 21"):
        merge_shards(rows)
    later = evaluate_checkpoint(task.for_shard(14, 21, images_digest(x, y)))
    with pytest.raises(ValueError, match="do not tile"):
        merge_shards(rows + later)


def test_a_cell_of_shards_made_by_different_code_says_so(checkpoint):
    """Two shards from two checkouts (a node on another commit, a tree edited mid-run): the merged cell names
    both commits and is dirty, rather than claiming the first shard's."""
    x, y = make_synthetic(N, seed=1)
    grid = EvaluateSpec(n_images=N, eps=[0], attacks=["fgsm"], defenses={"none": {}}, quant=["fp32"], examples=0)
    task = EvalTask(checkpoint=checkpoint, trial_id="t0", sweep="s", run_id="r", model="simple_cnn", data=DATA,
                    evaluate=grid)
    first = evaluate_checkpoint(task.for_shard(0, 7, images_digest(x, y)))
    rest = evaluate_checkpoint(task.for_shard(7, 21, images_digest(x, y)))
    rest = [{**r, "git_commit": "f" * 40, "git_dirty": True} for r in rest]
    merged = merge_shards(first + rest)
    assert set(merged["git_commit"].split(",")) == {first[0]["git_commit"], "f" * 40} and merged["git_dirty"] is True
    from robustgrid.runner.results.views import provenance_note
    note = provenance_note(pd.DataFrame([merged]))        # the table's line names both commits, not the first
    assert "f" * 10 in note and first[0]["git_commit"][:10] in note and "(uncommitted changes)" in note
    same = merge_shards(first + evaluate_checkpoint(task.for_shard(7, 21, images_digest(x, y))))
    assert same["git_commit"] == first[0]["git_commit"] and same["git_dirty"] == first[0]["git_dirty"]


SWEEP = {"name": "shards", "data": {"dataset": "synthetic", "synthetic_train": 300, "synthetic_test": 60},
         "train": {"model": "simple_cnn", "lr": 0.003, "epochs": 1, "batch_size": 64},
         "evaluate": {"n_images": 60, "shard_images": 10, "eps": [0, "16/255"], "batch_size": 10, "examples": 0,
                      "attacks": [{"pgd": {"steps": 20}}], "defenses": ["none", "median", "jpeg"], "quant": ["fp32"]}}


def test_a_killed_evaluation_resumes_by_shard_and_writes_each_cell_once(tmp_path, kill_once):
    """Killed (SIGKILL) once some shards but not every cell are on disk: the resumed run computes only the
    shards missing, writes each cell once, and every cell equals the uninterrupted run's."""
    from robustgrid.runner.cli import main
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(SWEEP))
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main(["run", str(p), "--out", str(whole), "--executor", "inline"]) == 0
    cut.mkdir()
    for name in ("trials.parquet", "epochs.parquet", "checkpoints"):    # the trained trial, not its evaluation
        (shutil.copytree if (whole / name).is_dir() else shutil.copy)(whole / name, cut / name)
    cmd = [sys.executable, "-m", "robustgrid.runner.cli", "run", str(p), "--out", str(cut), "--executor", "inline"]
    kill_once(cmd, lambda: bool(list((cut / "shards").glob("part-*"))), timeout_s=120)
    before = pd.read_parquet(cut / "shards")
    assert 0 < len(before) < 6 * 6          # some shards of some cells, not all: killed mid-evaluation
    assert main(["run", str(p), "--out", str(cut), "--resume", "--executor", "inline"]) == 0
    after = pd.read_parquet(cut / "shards")
    # no shard stored before the kill was computed again
    assert not after.duplicated(CELL + ["shard_start"]).any()
    a = pd.read_parquet(whole / "eval").sort_values(CELL).reset_index(drop=True)
    b = pd.read_parquet(cut / "eval").sort_values(CELL).reset_index(drop=True)
    assert len(b) == len(a) == 2 * 3 * 1 and not b.duplicated(CELL).any()
    assert a[CELL + SAME].equals(b[CELL + SAME])
