import torch

from runner.bench import bench_defenses


def test_bench_defenses_reports_equal_outputs():
    rows = bench_defenses(torch.round(torch.rand(6, 3, 32, 32) * 255) / 255, torch.device("cpu"))
    assert {r["defense"] for r in rows} == {"none", "gaussian_blur", "jpeg", "median", "tv_denoise"}
    assert all(r["max_abs_diff"] <= 1e-5 and r["batched_img_per_s"] > 0 for r in rows)
