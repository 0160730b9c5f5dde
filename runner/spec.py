"""The sweep file: YAML, validated by pydantic, every error named by its key path.

    name, data, train (values may be {grid_search: [...]}), num_samples, resources, evaluate

A training trial's config is a flat dict (`TrainConfig`): what `train(config)` takes.
"""
from __future__ import annotations

import copy
import itertools
import math
import typing
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    ValidationError,
    field_validator,
    model_validator,
)

from ..attacks import (
    ZOO_CHUNK,
    ZOO_PREFIX,
    attack_entry,
    attack_names,
    attack_params_json,
    draws_globally,
    max_eps,
    norm_of,
)
from ..defenses import DEFENSES, defense_names
from ..models import MODELS, QUANT, model_names
from .space import SAMPLED, kind_of, values_to_check
from .space import sample as space_sample


class SpecError(ValueError):
    """A bad sweep file or override: the message starts with the key path."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def parse_eps(v: Any) -> float:
    """Epsilons on the [0,1] pixel scale; '8/255' is accepted as written in papers."""
    if isinstance(v, str):
        try:
            v = float(Fraction(v.replace(" ", "")))
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"{v!r} is not a number or a fraction like 8/255") from None
    return v


def check_eps(v: list[float]) -> list[float]:
    """Each eps finite, >= 0, and 0 or at least 1/255: below that no 8-bit image but the clean one is inside the ball."""
    for i, e in enumerate(v):
        if not (math.isfinite(e) and e >= 0):
            raise ValueError(f"[{i}]: must be a finite number >= 0, got {e}")
        if 0 < e and e * 255 + 1e-6 < 1:
            raise ValueError(f"[{i}]: {e:g} is under 1/255: no 8-bit image other than the clean one lies inside "
                             "that ball, so the cell would score clean accuracy as robust accuracy; use 0 or >= 1/255")
    return v


def _all_known(names: list[str], known: list[str], what: str) -> list[str]:
    for i, name in enumerate(names):
        if name not in known:
            raise ValueError(f"[{i}]: unknown {what} {name!r}; known: {', '.join(known)}")
    return names


class DataSpec(Strict):
    dataset: str = "cifar10"         # a name in the dataset registry (runner/data/catalog.py)
    root: str | None = None          # data cache; default $ROBUSTGRID_DATA or ~/.cache/robustgrid
    path: str | None = None          # imagefolder: folder with train/ and test/
    val_size: int = Field(5000, ge=0)
    split_seed: int = 0
    train_subset: int | None = Field(None, gt=0)
    synthetic_train: int = Field(2000, gt=0)
    synthetic_test: int = Field(500, gt=0)
    coarse_labels: bool = False      # cifar100: its 20 superclasses instead of the 100 classes
    svhn_extra: bool = False         # svhn: the 531,131 `extra` images added to training

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        # The registry's entries live in runner/data/ (a file each); only their names are looked up here.
        from .data.catalog import DATASETS
        if v not in DATASETS:
            raise ValueError(f"unknown dataset {v!r}; known: {', '.join(DATASETS.names())}")
        return v


# A trial's flat form (the trials table's columns, the hash behind trial ids, torchrun's key=value)
# names the data fields so; inside TrainConfig they live in its DataSpec.
FLAT_DATA_KEYS = {"dataset": "dataset", "data_root": "root", "data_path": "path", "val_size": "val_size",
                  "split_seed": "split_seed", "train_subset": "train_subset", "synthetic_train": "synthetic_train",
                  "synthetic_test": "synthetic_test", "coarse_labels": "coarse_labels", "svhn_extra": "svhn_extra"}
RUNNER_KEYS = ("out_dir", "threads")     # filled in by the runner, not the sweep file
ARCHITECTURE_KEYS = ("dropout", "depth", "widen_factor")   # passed to the model's constructor when set


class TrainConfig(Strict):
    """One training trial: the training keys (grid_search may vary any of them) and its data."""
    model: str = "simple_cnn"
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(128, gt=0)
    epochs: int = Field(10, gt=0)
    early_stopping_patience: int | None = Field(None, gt=0)
    lr_patience: int = Field(2, ge=0)
    lr_factor: float = Field(0.5, gt=0, lt=1)
    dropout: float | None = Field(None, ge=0, lt=1)
    depth: int | None = Field(None, gt=0)            # wide_resnet: 6n + 4 (28, 34; 16 for CPU tests)
    widen_factor: int | None = Field(None, gt=0)     # wide_resnet: 10 in RobustBench's entries
    augment: bool = True
    # adversarial training (runner/adversarial.py): the method, its ball and steps; robust validation's images
    adversarial: Literal["none", "fgsm_rs", "pgd", "trades"] = "none"
    adv_eps: float = 8 / 255
    adv_alpha: float | None = Field(None, gt=0)      # None: fgsm_rs 1.25 eps, pgd and trades 2/255
    adv_steps: int | None = Field(None, ge=1)       # None: fgsm_rs 1, pgd 7, trades 10
    trades_beta: float = Field(6.0, gt=0)
    robust_val_images: int = Field(500, ge=1)        # PGD-10 on the first N validation images, each epoch
    lr_schedule: Literal["plateau", "cosine", "one_cycle", "multistep"] = "plateau"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True                 # bf16 autocast, on CUDA only
    channels_last: bool = True       # model and batches in NHWC: faster convolutions on CUDA and CPU
    compile: bool = False
    loader: Literal["tensor", "dataloader"] = "tensor"
    loader_workers: int = Field(4, ge=0)   # DataLoader worker processes (loader: dataloader only)
    data: DataSpec = Field(default_factory=lambda: DataSpec(dataset="synthetic"))
    out_dir: str | None = None
    threads: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _nest_flat_data(cls, v):
        """Accept the flat form (dataset=..., data_root=...) as well: torchrun, the trials table."""
        if isinstance(v, dict) and any(k in v for k in FLAT_DATA_KEYS):
            v = dict(v)
            data = dict(v.pop("data", None) or {})
            for flat, key in FLAT_DATA_KEYS.items():
                if flat in v:
                    data[key] = v.pop(flat)
            v["data"] = data
        return v

    @field_validator("adv_eps", mode="before")
    @classmethod
    def _adv_eps(cls, v):
        v = parse_eps(v)
        if not isinstance(v, (int, float)) or not (1 / 255 - 1e-9 <= v <= 1):
            raise ValueError(f"must be in [1/255, 1] (pixel scale, L-inf), got {v!r}")
        return v

    @field_validator("adv_alpha", mode="before")
    @classmethod
    def _adv_alpha(cls, v):
        return parse_eps(v) if isinstance(v, str) else v

    @field_validator("model")
    @classmethod
    def _known_model(cls, v):
        if v not in model_names():
            raise ValueError(f"unknown model {v!r}; known: {', '.join(model_names())}")
        return v

    @model_validator(mode="after")
    def _one_step_fgsm(self):
        if self.adversarial == "fgsm_rs" and self.adv_steps not in (None, 1):
            raise ValueError(f".adv_steps: fgsm_rs takes one step, got {self.adv_steps}; several steps are adversarial: pgd")
        return self

    @model_validator(mode="after")
    def _architecture_keys(self):
        """depth, widen_factor (and dropout) only for a model that takes them, inside its domain."""
        for key in ARCHITECTURE_KEYS:
            value = getattr(self, key)
            if value is None:
                continue
            if key not in MODELS.get(self.model).params:
                raise ValueError(f".{key}: {self.model} takes no {key}")
            if key == "depth" and (value < 10 or (value - 4) % 6):
                raise ValueError(f".depth: must be 6n + 4 >= 10 (16, 22, 28, 34...), got {value}")
        return self

    def model_kwargs(self) -> dict[str, Any]:
        """The architecture's own keyword arguments this trial sets."""
        return {k: getattr(self, k) for k in ARCHITECTURE_KEYS if getattr(self, k) is not None}

    def flat(self) -> dict[str, Any]:
        """The flat form: training keys, then the data fields under their flat names, then runner keys."""
        d = self.model_dump()
        data = d.pop("data")
        runner = {k: d.pop(k) for k in RUNNER_KEYS}
        return {**d, **{flat: data[key] for flat, key in FLAT_DATA_KEYS.items()}, **runner}

    @classmethod
    def flat_fields(cls) -> dict[str, Any]:
        """Flat name -> pydantic field, in the order of flat()."""
        train = {k: f for k, f in cls.model_fields.items() if k != "data" and k not in RUNNER_KEYS}
        data = {flat: DataSpec.model_fields[key] for flat, key in FLAT_DATA_KEYS.items()}
        return {**train, **data, **{k: cls.model_fields[k] for k in RUNNER_KEYS}}


SWEEP_TRAIN_KEYS = [k for k in TrainConfig.model_fields if k != "data" and k not in RUNNER_KEYS]


class Resources(Strict):
    cpus_per_trial: float = Field(1, gt=0)
    gpus_per_trial: float = Field(0, ge=0)
    workers_per_trial: int = Field(1, ge=1)
    max_concurrent_trials: int | None = Field(None, gt=0)
    max_failures: int = Field(0, ge=0)
    eval_cpus: float = Field(1, gt=0)
    eval_gpus: float = Field(0, ge=0)

    @model_validator(mode="after")
    def _whole_gpus_for_ddp(self):
        # Ray may pack fractional workers onto one GPU; NCCL refuses two ranks on one device.
        if self.workers_per_trial > 1 and self.gpus_per_trial != int(self.gpus_per_trial):
            raise ValueError(f".gpus_per_trial: with workers_per_trial > 1 every worker needs whole GPUs "
                             f"(got {self.gpus_per_trial:g}); use 0, 1, 2, ...")
        return self


# Keys population-based training may change in a running trial: the optimizer's and TRADES' weights. Not the
# model, data or attack (a clone's weights must fit, its validation figure must stay comparable); not the seed.
PBT_MUTABLE = ("lr", "weight_decay", "momentum", "trades_beta")


class Scheduler(Strict):
    """fifo: every trial to the end. asha: stop weak trials early (grace_period, reduction_factor, in epochs).
    pbt: population-based training: every perturbation_interval epochs a trial in the bottom quantile_fraction
    takes the weights of one in the top and its `mutations` keys, perturbed (x0.8 / x1.2, or a neighbour in a
    list; resampled with resample_probability), kept inside their bounds."""
    type: Literal["fifo", "asha", "pbt"] = "fifo"
    grace_period: int = Field(1, gt=0)
    reduction_factor: float = Field(2, gt=1)
    perturbation_interval: int = Field(1, gt=0)
    quantile_fraction: float = Field(0.25, gt=0, le=0.5)
    resample_probability: float = Field(0.25, ge=0, le=1)
    mutations: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _mutations(self):
        if self.type != "pbt":
            if self.mutations:
                raise ValueError(".mutations: only with type pbt")
            return self
        if not self.mutations:
            raise ValueError(f".mutations: pbt needs the keys it may change, some of {', '.join(PBT_MUTABLE)}")
        for key, value in self.mutations.items():
            if key not in PBT_MUTABLE:
                raise ValueError(f".mutations.{key}: pbt may change only {', '.join(PBT_MUTABLE)} (a clone's weights "
                                 "must fit the model and its validation figure stay comparable)")
            if isinstance(value, list):
                self.mutations[key] = {"choice": value}
            elif kind_of(value) not in ("choice", "uniform", "loguniform"):
                raise ValueError(f".mutations.{key}: a list of values, or {{uniform | loguniform | choice: [...]}}")
        return self


SearchMetric = Literal["val_accuracy", "robust_val_accuracy"]


class SearchSpec(Strict):
    """How trials are chosen: the grid (every combination), or num_samples configurations sampled from the
    training keys' distributions: `random` (here, seeded), `optuna` / `hyperopt` (Ray Tune's searchers,
    learning from finished trials; the `search` extra)."""
    algorithm: Literal["grid", "random", "optuna", "hyperopt"] = "grid"
    # what a searcher maximizes: validation accuracy, robust validation accuracy (adversarial training), or
    # both (optuna only: a multi-objective search whose Pareto front `show` prints)
    metric: SearchMetric | list[SearchMetric] = "val_accuracy"
    mode: Literal["max", "min"] = "max"
    seed: int = 0
    max_concurrent: int | None = Field(None, gt=0)    # trials a searcher keeps in flight (ConcurrencyLimiter)

    @model_validator(mode="after")
    def _metrics(self):
        if isinstance(self.metric, list):
            if len(self.metric) != len(set(self.metric)) or not self.metric:
                raise ValueError(".metric: a list names each metric once")
            if len(self.metric) > 1 and self.algorithm != "optuna":
                raise ValueError(f".metric: several objectives need algorithm optuna (not {self.algorithm})")
        if self.algorithm in ("optuna", "hyperopt"):
            try:
                __import__(self.algorithm)
            except ImportError:
                raise ValueError(f".algorithm: {self.algorithm} is not installed: pip install 'robustgrid[search]' "
                                 f"(or pip install {self.algorithm})") from None
        return self

    @property
    def metrics(self) -> list[str]:
        return self.metric if isinstance(self.metric, list) else [self.metric]


NOTEBOOK_DEFENSES = ["none", "gaussian_blur", "jpeg", "median", "tv_denoise"]   # the default grid


class AttackChoice(Strict):
    """One attack of the grid with its parameters (in the sweep file: `fgsm` or `{pgd: {steps: 20}}`), and
    optionally eps of its own, in its norm's units (`{autoattack: {norm: l2, eps: [0.5]}}`)."""
    name: str
    params: dict[str, Any] = {}
    eps: list[float] | None = None      # None: evaluate.eps

    @model_validator(mode="before")
    @classmethod
    def _short_forms(cls, v):
        if isinstance(v, str):
            return {"name": v}
        if isinstance(v, dict) and len(v) == 1 and "name" not in v:
            (name, params), = v.items()
            params = dict(params or {}) if isinstance(params, dict) else params
            eps = params.pop("eps", None) if isinstance(params, dict) else None
            return {"name": name, "params": params, **({"eps": eps} if eps is not None else {})}
        return v

    @field_validator("eps", mode="before")
    @classmethod
    def _eps_values(cls, v):
        if isinstance(v, (int, float, str)):
            v = [v]
        return [parse_eps(x) for x in v] if isinstance(v, list) else v

    @field_validator("eps")
    @classmethod
    def _eps_range(cls, v):
        if v is not None and not v:
            raise ValueError("is empty: the attack would have no cell")
        return v if v is None else check_eps(v)

    @property
    def params_json(self) -> str:
        return attack_params_json(self.name, self.params)

    @property
    def norm(self) -> str:
        return norm_of(self.params)


class Corruptions(Strict):
    """CIFAR-10-C (Hendrycks & Dietterich 2019): the test images under common corruptions, each at severities 1-5."""
    names: list[str] | Literal["all"] = "all"     # all: the 15 RobustBench reports
    severities: list[int] = [1, 2, 3, 4, 5]

    @field_validator("names")
    @classmethod
    def _known(cls, v):
        from .data.cifar10c import CORRUPTIONS  # the names live with the data set's reader
        if v == "all":
            return v
        if not v:
            raise ValueError("name at least one corruption, or all")
        return _all_known(v, list(CORRUPTIONS), "corruption")

    @field_validator("severities")
    @classmethod
    def _levels(cls, v):
        if not v or any(not 1 <= s <= 5 for s in v) or len(set(v)) != len(v):
            raise ValueError(f"distinct severities in 1..5, got {v}")
        return sorted(v)

    def settings(self) -> list[tuple[str, int]]:
        from .data.cifar10c import CORRUPTIONS
        names = list(CORRUPTIONS) if self.names == "all" else self.names
        return [(name, s) for name in names for s in self.severities]


class EvaluateSpec(Strict):
    select: Literal["all", "best", "top_k"] = "all"
    # what `best` / `top_k` rank trials by: clean validation accuracy, or robust validation accuracy (PGD-10
    # on the validation subset; adversarially trained trials have it, the others rank last)
    select_by: Literal["val_accuracy", "robust_val_accuracy"] = "val_accuracy"
    top_k: int = Field(1, gt=0)
    n_images: int | None = Field(None, gt=0)   # first N test images; None = the whole test split
    attacks: list[AttackChoice] = [AttackChoice(name="fgsm")]
    # oblivious: the attacker differentiates the model alone; adaptive: model o defense (BPDA)
    threats: list[Literal["oblivious", "adaptive"]] = ["oblivious"]
    eot_samples: int = Field(10, ge=1)   # adaptive, through a randomized defense: draws per gradient (EOT)
    # a randomized defense is scored over this many of the defender's draws (an image counts only if right in all)
    defense_draws: int = Field(10, ge=1)
    eps: list[float] = [0.0, 2 / 255, 4 / 255, 8 / 255]
    sources: list[Literal["self", "fp32"]] = ["self", "fp32"]
    defenses: dict[str, dict[str, Any]] = Field(default_factory=lambda: {n: {} for n in NOTEBOOK_DEFENSES})
    quant: list[str] = ["fp32", "dynamic_int8"]
    calibration_images: int = Field(1000, gt=0)   # int8_static: the first N training images calibrate it
    defense_backend: Literal["reference", "batched"] = "batched"
    batch_size: int = Field(500, gt=0)
    # images per evaluation shard (a Ray task each; a cell is the exact sum of its shards): fixed by the sweep,
    # never by the cluster, so the same sweep makes the same shards anywhere
    shard_images: int = Field(500, gt=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    examples: int = Field(4, ge=0)            # images in the example panel plot
    # CIFAR-10-C: clean cells (every defense and quant mode) on the corrupted test images, beside the attack axis
    corruptions: Corruptions | None = None

    @field_validator("attacks", "eps", "sources", "defenses", "quant")
    @classmethod
    def _not_empty(cls, v):
        if not v:
            raise ValueError("is empty: the grid would hold no cell")
        return v

    @field_validator("eps", mode="before")
    @classmethod
    def _eps_values(cls, v):
        return [parse_eps(x) for x in v] if isinstance(v, list) else v

    @field_validator("eps")
    @classmethod
    def _eps_range(cls, v):
        return check_eps(v)

    @model_validator(mode="after")
    def _eps_fit_norms(self):
        """Each attack's eps inside what its norm allows: L-inf at most 1, L2 at most the diagonal of the cube."""
        for i, a in enumerate(self.attacks):
            limit = max_eps(a.norm)
            for j, e in enumerate(self.eps_of(a)):
                if e > limit + 1e-9:
                    where = f".attacks[{i}].eps[{j}]" if a.eps is not None else f".eps[{j}]"
                    hint = ("at most 1 on the pixel scale; an L2 radius goes in an L2 attack's own eps, e.g. "
                            "{pgd: {norm: l2, eps: [0.5]}}" if a.norm == "linf" else f"at most sqrt(3*32*32) = {limit:.2f}")
                    raise ValueError(f"{where}: {e:g} is beyond any image in [0,1] for the {a.norm} attack "
                                     f"{a.name} (attacks[{i}]): {hint}")
        return self

    @model_validator(mode="after")
    def _shards_on_zoo_chunks(self):
        """A torchattacks zoo attack runs on fixed ZOO_CHUNK-image chunks: a shard must start on one."""
        zoo = [a.name for a in self.attacks if draws_globally(a.name)]
        if zoo and self.shard_images % ZOO_CHUNK:
            raise ValueError(f".shard_images: {self.shard_images} must be a multiple of {ZOO_CHUNK} with a torchattacks "
                             f"zoo attack ({zoo[0]}): the zoo runs on fixed {ZOO_CHUNK}-image chunks of the test split")
        return self

    def eps_of(self, attack: AttackChoice) -> list[float]:
        """The eps an attack of the grid runs at: its own, else evaluate.eps."""
        return attack.eps if attack.eps is not None else self.eps

    @field_validator("attacks")
    @classmethod
    def _known_attacks(cls, v):
        """Each attack known (or in the optional torchattacks zoo) with parameters in their domains."""
        for i, a in enumerate(v):
            try:
                try:
                    attack_entry(a.name)
                except KeyError:
                    raise ValueError(f"unknown attack {a.name!r}; known: {', '.join(attack_names())}, "
                                     f"or {ZOO_PREFIX}<Name> (the torchattacks extra)") from None
                attack_params_json(a.name, a.params)      # the zoo's: checked against its constructor
            except ValueError as e:     # '.key: ...' names a parameter of the attack
                msg = str(e)
                raise ValueError(f"[{i}].{a.name}{msg}" if msg.startswith(".") else f"[{i}]: {msg}") from None
        return v

    @field_validator("threats")
    @classmethod
    def _threats(cls, v):
        if not v:
            raise ValueError("must name at least one threat model (oblivious, adaptive)")
        return list(dict.fromkeys(v))

    @field_validator("quant")
    @classmethod
    def _known_quant(cls, v):
        return _all_known(v, QUANT.names(), "quant mode")

    @field_validator("defenses", mode="before")
    @classmethod
    def _defense_list(cls, v):
        if isinstance(v, list):  # [none, jpeg] is shorthand for {none: {}, jpeg: {}}
            return {name: {} for name in v}
        return {k: (p or {}) for k, p in v.items()} if isinstance(v, dict) else v

    @field_validator("defenses")
    @classmethod
    def _known_defenses(cls, v):
        """Each defense known, each parameter known and inside the domain its registry entry declares."""
        for name, params in v.items():
            if name not in DEFENSES:
                raise ValueError(f".{name}: unknown defense; known: {', '.join(defense_names())}")
            try:
                DEFENSES.resolve(name, params)
            except ValueError as e:
                raise ValueError(f".{name}{e}") from None
        return v


class Normalize(Strict):
    """The normalization a model expects: it is put in front, so the model takes [0, 1] images like ours."""
    mean: list[float] = Field(min_length=1)
    std: list[PositiveFloat] = Field(min_length=1)

    @model_validator(mode="after")
    def _same_length(self):
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values, std {len(self.std)}")
        return self


class ModelSource(Strict):
    """A model robustgrid did not train (`models:` of a sweep file, `robustgrid eval --model`): a torch.export
    archive (.pt2), a TorchScript file, or `robustbench:NAME` from RobustBench's zoo."""
    spec: str = Field(min_length=1)
    normalize: Normalize | None = None
    threat_model: Literal["Linf", "L2", "corruptions"] = "Linf"     # RobustBench's leaderboard
    dataset: Literal["cifar10", "cifar100"] = "cifar10"               # RobustBench's
    model_dir: str = "./models"                                       # RobustBench's model folder

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, v: Any) -> Any:
        return {"spec": v} if isinstance(v, str) else v

    def external(self, source: str | None = None):
        """The models layer's description (paths made absolute: a Ray worker's cwd is not the user's)."""
        from ..models.external import ExternalModel, source_of
        source = source or source_of(self.spec)
        spec = self.spec if source == "robustbench" else str(Path(self.spec).expanduser().resolve())
        norm = self.normalize
        return ExternalModel(spec=spec, source=source, mean=tuple(norm.mean) if norm else None,
                             std=tuple(norm.std) if norm else None, threat_model=self.threat_model,
                             dataset=self.dataset, model_dir=str(Path(self.model_dir).expanduser().resolve()))


class SweepSpec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    data: DataSpec = DataSpec()
    train: dict[str, Any] = Field(default_factory=dict)
    models: list[ModelSource] = Field(default_factory=list)   # evaluated beside the trials (or instead: no train:)
    num_samples: int = Field(1, ge=1)
    resources: Resources = Resources()
    scheduler: Scheduler = Scheduler()
    search: SearchSpec = SearchSpec()
    evaluate: EvaluateSpec = EvaluateSpec()

    @property
    def trains(self) -> bool:
        """A sweep with `models:` and no `train:` only evaluates those models."""
        return bool(self.train) or not self.models or "train" in self.model_fields_set

    def grid_axes(self) -> dict[str, list]:
        return {k: v["grid_search"] for k, v in self.train.items() if kind_of(v) == "grid_search"}

    def sampled_axes(self) -> dict[str, dict]:
        """Training keys with a distribution to sample (loguniform, uniform, randint, choice)."""
        return {k: v for k, v in self.train.items() if kind_of(v) in SAMPLED}

    def base_train(self) -> dict[str, Any]:
        return {k: v for k, v in self.train.items() if not isinstance(v, dict)}

    def trial_configs(self) -> list[dict[str, Any]]:
        """Every trial's flat config. grid: the grid, times num_samples seeds. random: per grid point,
        num_samples configurations drawn from the search seed's stream, in order (the same file draws
        the same ones). optuna / hyperopt draw theirs while they run (runner/execute/ray_trials.py)."""
        if self.search.algorithm in ("optuna", "hyperopt") or not self.trains:
            return []
        axes, sampled = self.grid_axes(), self.sampled_axes()
        rng = np.random.default_rng(self.search.seed)
        configs = []
        for values in itertools.product(*axes.values()) if axes else [()]:
            for sample in range(self.num_samples):
                cfg = {**self.base_train(), **dict(zip(axes, values))}
                if self.search.algorithm == "random":
                    cfg.update({k: space_sample(v, rng) for k, v in sampled.items()})
                else:
                    cfg["seed"] = cfg.get("seed", 0) + sample
                configs.append(self.trial_config(cfg))
        return configs

    def max_epochs(self) -> int:
        """The longest training any trial of the sweep can have (a scheduler's horizon)."""
        epochs = self.train.get("epochs", TrainConfig.model_fields["epochs"].default)
        return int(max(v for _, v in values_to_check("epochs", epochs))) if kind_of(epochs) else int(epochs)

    def trial_config(self, train: dict[str, Any]) -> dict[str, Any]:
        return TrainConfig.model_validate({**train, "data": self.data.model_dump()}).flat()


# --- loading ---------------------------------------------------------------------------------

def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _known_keys(model: type[BaseModel] | None, loc: tuple) -> list[str]:
    """The keys the section holding an unknown key accepts (the section is found by walking the model)."""
    for part in loc[:-1]:
        field = model.model_fields.get(part) if model is not None and isinstance(part, str) else None
        if field is None:
            return []
        model = next((a for a in (field.annotation, *typing.get_args(field.annotation))
                      if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return list(model.model_fields) if model is not None else []


def _format(e: ValidationError, prefix: str = "", model: type[BaseModel] | None = None) -> str:
    err = e.errors()[0]
    path = _loc(tuple(prefix.split(".")) + tuple(err["loc"]) if prefix else tuple(err["loc"]))
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        known = _known_keys(model, tuple(err["loc"]))
        msg = "unknown key" + (f"; known: {', '.join(known)}" if known else "")
    msg = msg.removeprefix("Value error, ")
    if msg.startswith("[") or msg.startswith("."):   # a validator that names a sub-path
        sub, _, msg = msg.partition(": ")
        path = path + sub
    return f"{path}: {msg}"


def _validate_train(spec: SweepSpec) -> None:
    """Every key known; the base and each grid value must make a valid TrainConfig."""
    for key in spec.train:
        if key not in SWEEP_TRAIN_KEYS:
            raise SpecError(f"train.{key}: unknown key; known: {', '.join(SWEEP_TRAIN_KEYS)}")
    try:
        TrainConfig.model_validate(spec.base_train())
    except ValidationError as e:
        raise SpecError(_format(e, "train")) from None
    sampled = spec.sampled_axes()
    if sampled and spec.search.algorithm == "grid":
        key = next(iter(sampled))
        raise SpecError(f"train.{key}: {kind_of(sampled[key])} is sampled, not a grid: set search.algorithm to "
                        "random, optuna or hyperopt (and num_samples to the configurations to draw)")
    for key, value in spec.train.items():
        if isinstance(value, dict):
            _check_distribution(spec, key, value, "train")


def _check_distribution(spec: SweepSpec, key: str, value: dict, section: str) -> None:
    """A distribution well formed, and each value it names (a choice, a bound) a valid value of its key."""
    try:
        checks = values_to_check(key, value, section=section)
    except ValueError as e:
        raise SpecError(str(e)) from None
    for where, v in checks:
        try:
            TrainConfig.model_validate({**spec.base_train(), key: v})
        except ValidationError as e:
            raise SpecError(f"{where}: {_format(e).partition(': ')[2]}") from None


def _check_search_metric(spec: SweepSpec) -> None:
    """A search or PBT ranking by robust validation accuracy needs every trial to measure it."""
    ranks = spec.search.algorithm != "grid" or spec.scheduler.type == "pbt"
    if not ranks or "robust_val_accuracy" not in spec.search.metrics:
        return
    method = spec.train.get("adversarial", "none")
    methods = [v for _, v in values_to_check("adversarial", method)] if kind_of(method) else [method]
    if "none" in methods:
        raise SpecError("search.metric: robust_val_accuracy is measured only with adversarial training, and train."
                        "adversarial lets a trial train with none: set it to fgsm_rs, pgd or trades")


def _check_pbt(spec: SweepSpec) -> None:
    """PBT clones weights between trials and restarts them from the clone: only what allows that is accepted."""
    s = spec.scheduler
    if s.type != "pbt":
        return
    if spec.search.algorithm not in ("grid", "random"):
        raise SpecError(f"scheduler.type: pbt starts from a grid or a random population, not from {spec.search.algorithm} "
                        "(Ray Tune runs no searcher beside PBT)")
    if spec.resources.workers_per_trial > 1:
        raise SpecError("scheduler.type: pbt restores trials from Tune's checkpoints; DDP trials (workers_per_trial > 1) "
                        "restore from their own folder: use workers_per_trial 1")
    varied = [k for k, v in spec.train.items() if kind_of(v) and k not in s.mutations and k != "seed"]
    if varied:
        raise SpecError(f"train.{varied[0]}: varies across trials, but pbt clones weights between them: only the keys "
                        "in scheduler.mutations (and seed) may vary")
    schedule = spec.train.get("lr_schedule", "plateau")
    if "lr" in s.mutations and schedule in ("cosine", "one_cycle"):
        raise SpecError(f"scheduler.mutations.lr: lr_schedule {schedule} sets the learning rate each step and would undo "
                        "pbt's; use plateau or multistep")
    for key, value in s.mutations.items():
        _check_distribution(spec, key, value, "scheduler.mutations")


def _check_paths(spec: SweepSpec) -> None:
    if spec.data.dataset == "imagefolder":
        if not spec.data.path:
            raise SpecError("data.path: imagefolder needs a folder with train/ and test/")
        p = Path(spec.data.path).expanduser()
        for split in ("train", "test"):
            if not (p / split).is_dir():
                raise SpecError(f"data.path: {p / split} not found (imagefolder needs train/ and test/, one folder per class)")


def _check_models(spec: SweepSpec) -> None:
    """Each outside model is there, of a kind robustgrid loads, and no quant mode is asked of a graph."""
    from ..models.external import ExternalModelError, check_available
    for i, m in enumerate(spec.models):
        ext = m.external()
        try:
            check_available(ext)
        except ExternalModelError as e:
            raise SpecError(f"models[{i}].spec: {e}") from None
        if ext.is_graph:
            refused = [q for q in spec.evaluate.quant if q != "fp32"]
            if refused:
                raise SpecError(f"evaluate.quant: {', '.join(refused)} cannot apply to models[{i}] ({m.spec}): a "
                                "torch.export or TorchScript file is a graph with no Linear / Conv2d modules to "
                                "convert; use quant [fp32], or pass the nn.Module to robustgrid.evaluate(...)")


def set_override(raw: dict, assignment: str) -> None:
    """--set evaluate.eps=[0,0.03] : a dotted key path and a YAML value."""
    key, sep, value = assignment.partition("=")
    if not sep or not key:
        raise SpecError(f"--set {assignment}: expected key.path=value")
    parts = key.split(".")
    node = raw
    for p in parts[:-1]:
        if not isinstance(node.setdefault(p, {}), dict):
            raise SpecError(f"{key}: {p} is not a section")
        node = node[p]
    try:
        node[parts[-1]] = yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise SpecError(f"{key}: --set value {value!r} is not valid YAML ({str(e).splitlines()[0]})") from None


def validate(raw: Any, source: str = "sweep") -> SweepSpec:
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: the sweep file must be a mapping at the top level")
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(_format(e, model=SweepSpec)) from None
    _validate_train(spec)
    _check_search_metric(spec)
    _check_pbt(spec)
    _check_paths(spec)
    _check_n_images(spec)
    _check_corruptions(spec)
    _check_models(spec)
    return spec


def _check_corruptions(spec: SweepSpec) -> None:
    if spec.evaluate.corruptions is not None and spec.data.dataset != "cifar10":
        raise SpecError(f"evaluate.corruptions: CIFAR-10-C corrupts CIFAR-10's test images; data.dataset is "
                        f"{spec.data.dataset}")


def _check_n_images(spec: SweepSpec) -> None:
    """n_images beyond the test split would silently give cells of fewer images."""
    n, have = spec.evaluate.n_images, count_test_images(spec.data)
    if n is not None and have is not None and n > have:
        raise SpecError(f"evaluate.n_images: {n} asked for, but the {spec.data.dataset} test split has {have} images")


def count_test_images(data: DataSpec) -> int | None:
    """The test split's size without loading it (None where it cannot be known cheaply)."""
    from .data.catalog import dataset_of
    return dataset_of(data.dataset).n_test(data)


def load_spec(path: str | Path, overrides: list[str] = ()) -> tuple[SweepSpec, dict]:
    """Read, override and validate a sweep file; returns the spec and the resolved raw dict."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"{path}: sweep file not found") from None
    except IsADirectoryError:
        raise SpecError(f"{path}: is a directory, not a sweep file") from None
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not a text file (a sweep file is YAML)") from None
    except OSError as e:
        raise SpecError(f"{path}: cannot be read ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    raw = copy.deepcopy(raw) if isinstance(raw, dict) else raw
    for assignment in overrides:
        if not isinstance(raw, dict):
            break
        set_override(raw, assignment)
    return validate(raw, str(path)), raw
