import torch
from robustgrid.runner.bench import bench_defenses


def test_bench_defenses_reports_equal_outputs():
    rows = bench_defenses(torch.round(torch.rand(6, 3, 32, 32) * 255) / 255, torch.device("cpu"))
    assert {r["defense"] for r in rows} == {"none", "gaussian_blur", "jpeg", "median", "tv_denoise", "random_resize_pad"}
    assert all(r["max_abs_diff"] <= 1e-5 and r["batched_img_per_s"] > 0 for r in rows)


def test_bench_training_compares_input_paths_on_the_notebook_recipe():
    from robustgrid.runner.bench import bench_training
    rows = bench_training(torch.device("cpu"), quick=True, dataset="synthetic", train_subset=256,
                          variants=("gpu-resident", "dataloader"))
    assert [r["path"] for r in rows] == ["gpu-resident", "dataloader"]
    for r in rows:
        assert r["epochs"] == 2 and r["train_images"] == 256 and r["img_per_s"] > 0
        assert 0 <= r["test_accuracy"] <= 1 and r["train_seconds"] >= r["first_epoch_s"]
