"""The optional torchattacks backend: any attack of that zoo by name (`torchattacks.APGD`, ...).

torchattacks pins an old `requests` and ships a stray top-level package, so it stays out of the
core install: `pip install 'robustgrid[torchattacks]'`.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from ..registry import Entry

INSTALL = "pip install 'robustgrid[torchattacks]'"


def check_zoo_attack(name: str, params: dict) -> None:
    """Raise ValueError (the spec turns it into a key-path line) when the backend or the attack is missing."""
    try:
        import torchattacks
    except ImportError:
        raise ValueError(f"torchattacks.{name} needs the torchattacks extra: {INSTALL}") from None
    cls = getattr(torchattacks, name, None)
    if not isinstance(cls, type) or not issubclass(cls, torchattacks.attack.Attack):
        raise ValueError(f"torchattacks has no attack {name!r}")
    import inspect
    known = set(inspect.signature(cls).parameters) - {"model"}
    for key in params:
        if key not in known:
            raise ValueError(f".{key}: unknown parameter of torchattacks.{name}; known: {', '.join(sorted(known))}")


def zoo_attack(name: str) -> Callable:
    def attack(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, **params) -> torch.Tensor:
        import torchattacks
        if eps == 0:
            return images.clone().detach()
        return getattr(torchattacks, name)(model, eps=eps, **params)(images, labels)
    attack.__name__ = f"torchattacks.{name}"
    return attack


@functools.cache
def zoo_entry(name: str) -> Entry:
    """The registry entry of `torchattacks.<Name>`: a gradient attack (the zoo's are, as far as robustgrid can know)
    that draws from torch's global RNG at every call, takes no starts or keys of ours, and whose parameters are
    its constructor's, checked against its signature."""
    short = name.removeprefix("torchattacks.")

    def resolve(params: dict) -> dict:
        check_zoo_attack(short, params)
        return dict(params)
    return Entry(name, zoo_attack(short), {}, {"kind": "gradient", "global_rng": True, "resolve": resolve})
