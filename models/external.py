"""Models robustgrid did not train: a torch.export archive (.pt2), a TorchScript file, a model of
RobustBench's zoo, or an nn.Module handed to the API. Each loads as an nn.Module in eval mode on the CPU
that takes [0, 1] images (a `normalize` option puts the model's expected normalization in front)."""
from __future__ import annotations

import hashlib
import pickle
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..files import file_sha256

ROBUSTBENCH = "robustbench:"
ROBUSTBENCH_INSTALL = "pip install 'robustgrid[robustbench]'"


class ExternalModelError(ValueError):
    """A model file, RobustBench name or module that cannot be evaluated (the message names it and why)."""


@dataclass(frozen=True)
class ExternalModel:
    """Where an outside model comes from. spec: a file path, `robustbench:NAME`, or (the API's) a pickled
    module's path with source `python`."""
    spec: str
    source: str                              # file | robustbench | python
    mean: tuple[float, ...] | None = None    # normalize: the model expects (x - mean) / std
    std: tuple[float, ...] | None = None
    threat_model: str = "Linf"               # RobustBench's leaderboard: Linf, L2, corruptions
    dataset: str = "cifar10"
    model_dir: str = "./models"              # RobustBench's folder: <model_dir>/<dataset>/<threat_model>/<NAME>.pt

    @property
    def is_graph(self) -> bool:
        """A torch.export / TorchScript graph: no nn.Linear / nn.Conv2d modules a quant mode could convert."""
        return self.source == "file"

    @property
    def name(self) -> str:
        return self.spec.removeprefix(ROBUSTBENCH) if self.source == "robustbench" else Path(self.spec).name

    def checkpoint_file(self) -> Path:
        if self.source == "robustbench":
            return Path(self.model_dir).expanduser() / self.dataset / self.threat_model / f"{self.name}.pt"
        return Path(self.spec).expanduser()


def source_of(spec: str) -> str:
    return "robustbench" if spec.startswith(ROBUSTBENCH) else "file"


class Normalized(nn.Module):
    """(x - mean) / std in front of a model that expects normalized input."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return self.model((x - self.mean) / self.std)


class FrozenGraph(nn.Module):
    """An exported graph: its mode was fixed when it was exported (torch.export's modules refuse .eval()),
    so switching modes here leaves it alone."""

    def __init__(self, graph: nn.Module):
        super().__init__()
        self.graph = graph

    def train(self, mode: bool = True):
        self.training = mode
        return self

    def forward(self, x):
        return self.graph(x)


def file_kind(path: Path) -> str:
    """`export` (torch.export.save) or `torchscript` (torch.jit.save), from the archive's own records."""
    if not path.is_file():
        raise ExternalModelError(f"{path}: model file not found")
    try:
        names = zipfile.ZipFile(path).namelist()
    except (zipfile.BadZipFile, OSError):
        names = []
    if any(n.endswith("/archive_format") for n in names):
        return "export"
    if any("/code/" in n for n in names):
        return "torchscript"
    raise ExternalModelError(f"{path}: not a torch.export archive (torch.export.save) or a TorchScript file "
                             "(torch.jit.save); a state_dict or a pickled module cannot name its architecture: "
                             "export the model, or pass the module to robustgrid.evaluate(...)")


def load_external(m: ExternalModel) -> nn.Module:
    """The model, in eval mode on the CPU, taking [0, 1] images."""
    if m.source == "robustbench":
        model = _load_robustbench(m)
    elif m.source == "python":
        with open(m.spec, "rb") as f:
            model = pickle.load(f)   # written by robustgrid.evaluate in this results folder, from the user's module
    else:
        path = m.checkpoint_file()
        kind = file_kind(path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)    # TorchScript is deprecated: the README leads with .pt2
            model = FrozenGraph(torch.export.load(path).module()) if kind == "export" else torch.jit.load(path, map_location="cpu")
    if m.mean is not None:
        model = Normalized(model, m.mean, m.std)
    return model.eval()


def check_available(m: ExternalModel) -> None:
    """What can be known before loading: the file is of a kind robustgrid loads; RobustBench's name is in
    its zoo and its checkpoint on disk (robustgrid never downloads)."""
    if m.source == "file":
        file_kind(m.checkpoint_file())
    elif m.source == "robustbench":
        _robustbench_zoo(m)


def _load_robustbench(m: ExternalModel) -> nn.Module:
    load_model = _robustbench_zoo(m)
    return load_model(m.name, model_dir=m.model_dir, dataset=m.dataset, threat_model=m.threat_model).cpu()


def _robustbench_zoo(m: ExternalModel):
    """robustbench's load_model, once the name and its checkpoint file are known to be there."""
    try:
        import pyautoattack
        sys.modules.setdefault("autoattack", pyautoattack)   # robustbench 1.1 imports the authors' GitHub name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")                  # its pkg_resources and timm deprecation notices
            from robustbench.model_zoo import model_dicts
        from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
        from robustbench.utils import load_model
    except ImportError as e:
        raise ExternalModelError(f"{m.spec}: RobustBench's zoo needs the robustbench package ({ROBUSTBENCH_INSTALL}): {e}") from None
    try:
        zoo = model_dicts[BenchmarkDataset(m.dataset)][ThreatModel(m.threat_model)]
    except ValueError:
        raise ExternalModelError(f"{m.spec}: RobustBench has no {m.dataset} / {m.threat_model} leaderboard") from None
    if m.name not in zoo:
        raise ExternalModelError(f"{m.spec}: not in RobustBench's {m.dataset} {m.threat_model} zoo "
                                 f"({len(zoo)} models, e.g. {', '.join(sorted(zoo)[:3])})")
    path = m.checkpoint_file()
    if not path.is_file():     # robustbench would download it: a machine without internet needs a clear word
        raise ExternalModelError(f"{m.spec}: checkpoint {path} not found; on a machine with internet robustbench "
                                 f"downloads it there (python -c \"from robustbench.utils import load_model; "
                                 f"load_model('{m.name}', model_dir='{m.model_dir}', dataset='{m.dataset}', "
                                 f"threat_model='{m.threat_model}')\"), or place the file there")
    return load_model


def weights_sha256(m: ExternalModel, model: nn.Module) -> str:
    """Of the file (a model file, RobustBench's checkpoint), else of the module's weights in order."""
    path = m.checkpoint_file()
    if m.source != "python" and path.is_file():
        return file_sha256(path)
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def architecture_of(m: ExternalModel, model: nn.Module) -> str:
    inner = model.model if isinstance(model, Normalized) else model
    if isinstance(inner, FrozenGraph):
        return "torch.export"
    return getattr(inner, "original_name", None) or type(inner).__name__


def check_deterministic(m: ExternalModel, model: nn.Module, images: torch.Tensor, out: torch.Tensor) -> None:
    """Refuse a model whose logits move between two calls on the same batch, or between the batch and its images
    one at a time: dropout or batch statistics left in train mode when it was exported (an exported graph keeps
    its mode; model.training says nothing of it). A cell of such a model would move with the draw and the batch."""
    with torch.no_grad():
        again = model(images)
        try:
            alone = torch.cat([model(images[i:i + 1]) for i in range(len(images))])
        except Exception as e:  # noqa: BLE001  (batch norm in train mode refuses a batch of one)
            raise ExternalModelError(f"{m.spec}: not deterministic: a single image fails where a batch runs "
                                     f"({type(e).__name__}; batch norm in train mode?): export it after model.eval()"
                                     ) from None
    scale = float(out.abs().max()) + 1e-6
    for what, other in (("two calls on the same batch", again), ("the batch and its images one at a time", alone)):
        gap = float((other - out).abs().max())
        if gap > 1e-3 * scale:
            raise ExternalModelError(f"{m.spec}: not deterministic: its logits differ by up to {gap:.3g} between "
                                     f"{what} (dropout or batch norm in train mode?): export it after model.eval()")


def check_classifier(m: ExternalModel, model: nn.Module, images: torch.Tensor, n_classes: int) -> list[str]:
    """Refuse what cannot be a classifier of this dataset's classes; the warnings for what can but is odd."""
    try:
        with torch.no_grad():
            out = model(images)
    except Exception as e:  # noqa: BLE001  (any failure of a foreign model's forward: a model for other shapes...)
        raise ExternalModelError(f"{m.spec}: does not take a batch of {tuple(images.shape[1:])} images in [0, 1] "
                                 f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or len(out) != len(images):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ExternalModelError(f"{m.spec}: not a classifier: a batch of {len(images)} images gave {shape}, "
                                 f"not ({len(images)}, classes) logits")
    if out.shape[1] != n_classes:
        raise ExternalModelError(f"{m.spec}: {out.shape[1]} outputs, but the dataset has {n_classes} classes")
    check_deterministic(m, model, images, out)
    if bool((out >= 0).all()) and torch.allclose(out.sum(1), torch.ones(len(out)), atol=1e-3):
        return [(f"{m.spec}: its outputs are probabilities (non-negative, summing to 1), not logits: gradient "
                 "attacks and margins want logits (drop the softmax)")]
    return []
