"""robustgrid: a benchmark runner for the robustness of small image classifiers.

    robustgrid.runner    CLI, sweep spec, training, evaluation engine, execution, results
    robustgrid.models    architectures, checkpoints, quantization modes
    robustgrid.attacks   attacks (FGSM, ...)
    robustgrid.defenses  input-transformation defenses (reference and batched)

The notebook API (`robustgrid.run`, `robustgrid.evaluate`, `robustgrid.load`, `robustgrid.list_sweeps`) is imported
on first use, so `import robustgrid` stays light.
"""
from __future__ import annotations

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("robustgrid")
except _metadata.PackageNotFoundError:   # a checkout that was never installed
    __version__ = "0+unknown"

_API = ("run", "evaluate", "load", "list_sweeps", "Results")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from .runner import api
        return getattr(api, name)
    raise AttributeError(f"module 'robustgrid' has no attribute {name!r}")
