"""The README's notebook example, run in a real Jupyter kernel (nbclient): it runs, prints no warning, shows
the tables as HTML, and leaves no Ray behind in the kernel."""
import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat / nbclient / ipykernel are not installed")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

SWEEP = {"name": "nb", "data": {"dataset": "synthetic", "synthetic_train": 300, "synthetic_test": 40},
         "train": {"model": "simple_cnn", "lr": 0.003, "epochs": 1, "batch_size": 64},
         "resources": {"cpus_per_trial": 1},
         "evaluate": {"n_images": 24, "eps": [0, "8/255"], "defenses": ["none", "median"], "examples": 0}}


def test_the_readme_notebook_example_runs_in_a_kernel_without_warnings(tmp_path):
    cells = [
        "import robustgrid",
        f"res = robustgrid.run({SWEEP!r}, out={str(tmp_path / 'nb')!r})",
        ("ev = res.eval[(res.eval.n == 24) & (res.eval.attack_source == 'self')]\n"
         "ev.groupby(['quant', 'eps', 'defense', 'threat'])['accuracy'].mean()"),
        "print(res.table('markdown'))",
        "len(res.plot())",
        "res.report().name",
        "res",
        "import ray\nray.is_initialized()",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells for o in c.outputs]
    stderr = "".join(o.get("text", "") for o in outputs if o.get("name") == "stderr")
    assert "Warning" not in stderr and "Missing packages" not in stderr and "Traceback" not in stderr, stderr[-2000:]
    assert not [o for o in outputs if o["output_type"] == "error"]
    printed = "".join(o.get("text", "") for o in nb.cells[3].outputs)
    assert "| eps |" in printed                                          # markdown, not pipes in a repr
    shown = nb.cells[6].outputs[0]["data"]
    assert "text/html" in shown and "text/markdown" in shown              # Results shows its tables
    assert "1 trials (1 ok), 12 cells on n=24" in shown["text/plain"]      # and a summary, not a path
    assert nb.cells[7].outputs[0]["data"]["text/plain"] == "False"       # Ray ended with the run
