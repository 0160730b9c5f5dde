"""Provenance of every row: which code, which libraries, which images (RobustBench keeps the same).

    code_version      robustgrid's version from its package metadata
    git_commit        the commit of the checkout robustgrid runs from ('' when it is not a checkout)
    git_dirty         whether that checkout had uncommitted changes to tracked files
    data_digest       sha256 (first 16 hex digits) of the images and labels the row saw
    torch_version, torchvision_version, opencv_version, skimage_version, ray_version,
    torchao_version (the int8 modes), kornia_version (the adaptive JPEG gradient)
"""
from __future__ import annotations

import functools
import hashlib
import subprocess
from importlib import metadata
from pathlib import Path

import torch

PACKAGE_ROOT = Path(__file__).resolve().parent.parent     # robustgrid's own folder (the checkout, editable)

SOFTWARE_FIELDS = ("code_version", "git_commit", "git_dirty", "torch_version", "torchvision_version",
                   "opencv_version", "skimage_version", "ray_version", "torchao_version", "kornia_version")
PROVENANCE_KEYS = ("data_digest", *SOFTWARE_FIELDS)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return ""


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", "-C", str(PACKAGE_ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def version_line() -> str:
    """`robustgrid --version`: the package version and the checkout's commit, as every row records them."""
    commit, dirty = git_state()
    where = f" (git {commit[:12]}{', uncommitted changes' if dirty else ''})" if commit else " (installed copy, no git checkout)"
    return f"robustgrid {_version('robustgrid') or 'unknown'}{where}"


def git_state() -> tuple[str, bool | None]:
    """(commit, dirty) of the checkout robustgrid runs from; ('', None) for an installed copy.
    A site-packages folder inside some other repository is not robustgrid's checkout."""
    top = _git("rev-parse", "--show-toplevel")
    if not top or Path(top).resolve() != PACKAGE_ROOT:
        return "", None
    return _git("rev-parse", "HEAD"), bool(_git("status", "--porcelain", "--untracked-files=no"))


@functools.cache
def software() -> dict[str, object]:
    """Once per process: the code and the libraries that define a row's numbers."""
    import cv2  # the defenses import it anyway
    commit, dirty = git_state()
    return {"code_version": _version("robustgrid") or "0+unknown", "git_commit": commit, "git_dirty": dirty,
            "torch_version": torch.__version__, "torchvision_version": _version("torchvision"),
            "opencv_version": cv2.__version__, "skimage_version": _version("scikit-image"),
            "ray_version": _version("ray"), "torchao_version": _version("torchao"),   # the int8 modes
            "kornia_version": _version("kornia")}                                      # the JPEG gradient


def images_digest(images: torch.Tensor, labels: torch.Tensor) -> str:
    """Which images (uint8, or floats on the 8-bit grid) and labels, as a short sha256."""
    if images.dtype != torch.uint8:
        images = torch.round(images.clamp(0, 1) * 255).to(torch.uint8)
    h = hashlib.sha256()
    h.update(str(tuple(images.shape)).encode())
    h.update(images.contiguous().cpu().numpy().tobytes())
    h.update(labels.to(torch.int64).contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]
