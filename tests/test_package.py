"""The installed package: one top-level name, bundled sweeps, `python -m robustgrid`, provenance."""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # --no-build-isolation: the test extra brings setuptools, so no network is needed
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "deprecat" not in proc.stderr.lower(), proc.stderr
    return next(out.glob("robustgrid-*.whl"))


def test_wheel_adds_one_top_level_name_and_ships_the_sweeps(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"robustgrid"}
    for path in ("robustgrid/runner/cli.py", "robustgrid/models/quant.py", "robustgrid/attacks/fgsm.py",
                 "robustgrid/defenses/jpeg.py", "robustgrid/sweeps/quickstart.yaml", "robustgrid/__main__.py"):
        assert path in names, path
    assert not any(n.startswith("robustgrid/tests/") or "/.venv" in n for n in names)
    # every subpackage of the checkout (pyproject lists them by hand): a folder left out installs without it
    shipped = [d for d in ROOT.iterdir() if (d / "__init__.py").exists() and d.name not in ("tests", "e2e")]
    for init in (i for d in shipped for i in d.rglob("__init__.py")):
        rel = init.relative_to(ROOT).as_posix()
        assert f"robustgrid/{rel}" in names, rel


def test_installed_copy_runs_from_anywhere(wheel, tmp_path):
    """A non-editable install (the wheel, unpacked), used from an empty folder outside the checkout."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, timeout=300, capture_output=True)
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}

    def run(*args):
        return subprocess.run([sys.executable, *args], cwd=empty, env=env, capture_output=True, text=True, timeout=120)
    where = run("-c", "import robustgrid.runner, robustgrid.sweeps; print(robustgrid.runner.__file__)")
    assert where.returncode == 0 and where.stdout.startswith(str(target)), where.stderr
    listed = run("-m", "robustgrid", "sweeps")
    assert listed.returncode == 0, listed.stderr
    for name in ("quickstart", "cifar10_notebook", "linnaeus5", "cifar10_cluster"):
        assert name in listed.stdout
    resolved = run("-c", "from robustgrid.runner.bundled import resolve_sweep; print(resolve_sweep('quickstart'))")
    assert resolved.stdout.strip().startswith(str(target))
    bad = run("-m", "robustgrid", "run", "no_such_sweep")
    assert bad.returncode == 2 and "bundled: " in bad.stderr


def test_provenance_names_this_checkout():
    from robustgrid.runner.provenance import git_state, software
    commit, dirty = git_state()
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    assert commit == head.stdout.strip() and isinstance(dirty, bool)
    sw = software()
    assert sw["code_version"] and sw["torch_version"] and sw["opencv_version"] and sw["skimage_version"]
