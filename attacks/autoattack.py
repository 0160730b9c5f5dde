"""AutoAttack (Croce & Hein, ICML 2020) as its authors define it (fra31/auto-attack `autoattack.py`).

    standard: APGD-CE -> APGD-T (9 targets) -> FAB-T (9 targets) -> Square (5000 queries),
              100 iterations each, one restart, eps in the cell's norm (L-inf or L2)
    rand:     APGD-CE -> APGD-DLR, each with EOT over 20 draws (for randomized defenses)
    custom:   the components you list, with those settings

The authors attack only the images their model gets right, and run each component only on the images every
earlier one left unbroken, judged by the model they score. Here the scored system is often not the
attacker's model (a defense, an int8 model behind its STE twin, a transfer), so that question is the
judge's (attacks/judge.py): a component, and each target and restart inside it, runs on the images not yet
broken in every cell that scores them. Where the attacker's model is the only such cell, that is the
authors' rule. The clean image and every component's candidates are returned, and the scored system judges
them all: an image is robust only if every one fails. The cell's attack_params
record every component with its settings; its `broken_by` column counts the images the clean image
and each component were the first to break on the scored system (AutoAttack's log).

What differs from the authors' run: every random draw is the image's own (APGD's starts from its
place in the seed's streams, one stream per component and target; Square's windows from its own
counter-based stream), so a cell does not depend on the batch; FAB-T is torchattacks' FAB-T with the
authors' settings (deterministic with one restart: it draws nothing), its targets run in groups, each point
also offered scaled out to eps (attacks/fab.py). Square queries `query_model`: what a standalone black-box
attack of the cell queries.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..registry import Param
from .apgd import apgd, apgd_t
from .base import NORMS, random_starts, register_attack
from .fab import fab_t
from .judge import Judge, judge_or_own
from .square import square

COMPONENTS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square")
VERSIONS = {"standard": ["apgd-ce", "apgd-t", "fab-t", "square"], "rand": ["apgd-ce", "apgd-dlr"]}
FAB_INSTALL = "pip install 'robustgrid[torchattacks]'"


def component_settings(name: str, p: dict) -> dict[str, Any]:
    """The settings the authors give component `name` (iterations, targets, queries from the attack's params)."""
    norm = p["norm"]
    if name in ("apgd-ce", "apgd-dlr"):
        eot = p["eot_iter"]
        return {"name": name, "attack": "apgd", "loss": name.removeprefix("apgd-"), "steps": p["steps"], "restarts": 1,
                "rho": 0.75, "norm": norm, "eot_iter": eot}
    if name == "apgd-t":
        return {"name": name, "attack": "apgd_t", "targets": p["targets"], "steps": p["steps"], "restarts": 1,
                "rho": 0.75, "norm": norm}
    if name == "fab-t":
        # the algorithm whose verdicts these are (attacks/fab.py runs it batched): the name stays, and with it
        # every stored cell's key
        return {"name": name, "attack": "torchattacks.FAB", "targets": p["targets"], "steps": p["steps"],
                "restarts": 1, "alpha_max": 0.1, "eta": 1.05, "beta": 0.9, "norm": norm}
    return {"name": name, "attack": "square", "queries": p["queries"], "p_init": 0.8, "resc_schedule": False,
            "loss": "margin", "norm": norm}


def expand(params: dict) -> dict:
    """The resolved parameters with the version's components spelled out with their settings (what a row records)."""
    p = dict(params)
    given = [c["name"] if isinstance(c, dict) else c for c in (p.get("components") or [])]
    for i, n in enumerate(given):
        if n not in COMPONENTS:
            raise ValueError(f".components[{i}]: unknown component {n!r}; known: {', '.join(COMPONENTS)}")
    if p["version"] == "custom" and not given:
        raise ValueError(f".components: version custom needs a list of components ({', '.join(COMPONENTS)})")
    names = given if p["version"] == "custom" else VERSIONS[p["version"]]
    if given != names and given:
        raise ValueError(f".components: only with version custom (version {p['version']} runs "
                         f"{', '.join(names)})")
    if p["eot_iter"] is None:
        p["eot_iter"] = 20 if p["version"] == "rand" else 1
    if "fab-t" in names:
        try:
            import torchattacks  # noqa: F401
        except ImportError:
            raise ValueError(f"fab-t (in autoattack {p['version']}) is torchattacks' FAB: {FAB_INSTALL}, "
                             "or use version custom without fab-t") from None
    p["components"] = [component_settings(n, p) for n in names]
    return p


def _streams(components: list[dict]) -> list[int]:
    """How many start streams each component takes (APGD-T: one per target)."""
    return [c["targets"] if c["attack"] == "apgd_t" else 1 if c["attack"] == "apgd" else 0 for c in components]


def _counts(components: list[dict]) -> list[int]:
    """How many candidates each component returns: APGD-T one per target, FAB-T two per target (its point and
    the point scaled out to eps), the others one."""
    return [c["targets"] * (2 if c["attack"] == "torchattacks.FAB" else 1)
            if c["attack"] in ("apgd_t", "torchattacks.FAB") else 1 for c in components]


def _run(c: dict, model: nn.Module, query_model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
         starts: torch.Tensor, keys: torch.Tensor, judge: Judge) -> torch.Tensor:
    """Component c's candidates (n, count, C, H, W) on images x, each offered to the judge. A black-box component
    queries what a standalone black-box attack of the cell would (the real int8 model, not its twin)."""
    if c["attack"] == "apgd":
        return apgd(model, x, y, eps, steps=c["steps"], norm=c["norm"], loss=c["loss"], starts=starts, judge=judge)
    if c["attack"] == "apgd_t":
        return apgd_t(model, x, y, eps, steps=c["steps"], norm=c["norm"], targets=c["targets"], starts=starts,
                      judge=judge)
    if c["attack"] == "square":
        found = square(query_model, x, y, eps, queries=c["queries"], norm=c["norm"], image_keys=keys)
        judge.offer(found, x)
        return found.unsqueeze(1)
    return fab_t(model, x, y, eps, norm=c["norm"], steps=c["steps"], targets=c["targets"], alpha_max=c["alpha_max"],
                 eta=c["eta"], beta=c["beta"], judge=judge)


def candidate_names(params: dict) -> list[str]:
    """One name per candidate: the clean image, then each component's name once per candidate it returns."""
    comps = params["components"]
    return ["clean"] + [c["name"] for c, k in zip(comps, _counts(comps)) for _ in range(k)]


@register_attack(params={
    "version": Param("standard", str, lambda v: v in (*VERSIONS, "custom"), "standard, rand or custom"),
    "norm": Param("linf", str, lambda n: n in NORMS, " or ".join(NORMS)),
    "components": Param(None, list),
    "steps": Param(100, int, lambda s: s >= 1, ">= 1 (the authors: 100)"),
    "targets": Param(9, int, lambda t: t >= 1, ">= 1 (the authors: 9)"),
    "queries": Param(5000, int, lambda q: q >= 1, ">= 1 (the authors: 5000)"),
    "eot_iter": Param(None, int, lambda e: e is None or e >= 1, ">= 1, or null (rand: 20, else 1)"),
}, starts=lambda p: (sum(_streams(p["components"])), "rand" if p["norm"] == "linf" else "randn"),
    kind="ensemble", image_keys=True, expand=expand, candidates=candidate_names, step_size="adaptive")
def autoattack(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, version: str = "standard",
               norm: str = "linf", components: list | None = None, steps: int = 100, targets: int = 9,
               queries: int = 5000, eot_iter: int | None = None, starts: torch.Tensor | None = None,
               image_keys: torch.Tensor | None = None, judge: Judge | None = None,
               query_model: nn.Module | None = None) -> torch.Tensor:
    """Candidates (N, 1 + the components' candidates, C, H, W): the clean image, then each component's where it
    ran, else the image's candidate before it. Each component runs on the images the judge left open (called
    alone: the attacker's model, the authors' rule). query_model: what the black-box components query (default:
    model)."""
    if eps == 0:
        return images.clone().detach()
    if images.device.type == "cpu":
        # NCHW, not the engine's channels_last: Normalize on a channels_last batch is 5x slower, the logits and
        # input gradients the same bit for bit (BENCHMARKS, nineteenth session)
        images = images.contiguous()
    comps = expand({"version": version, "norm": norm, "components": components, "steps": steps, "targets": targets,
                    "queries": queries, "eot_iter": eot_iter})["components"]
    streams = _streams(comps)
    if starts is None:
        starts = random_starts(len(images), tuple(images.shape[1:]), sum(streams), seed=0,
                               kind="rand" if norm == "linf" else "randn").to(images.device)
    keys = image_keys if image_keys is not None else torch.arange(len(images))
    judge = judge_or_own(judge, model, labels, eps, norm)
    judge.offer(images, images)
    cands, first = [images.unsqueeze(1)], 0
    for c, k, count in zip(comps, streams, _counts(comps)):
        block = cands[-1][:, -1:].repeat(1, count, *[1] * (images.dim() - 1))
        todo = judge.open().to(images.device)
        if len(todo):
            block[todo] = _run(c, model, query_model if query_model is not None else model, images[todo],
                               labels[todo], eps, starts[todo, first:first + k], keys[todo.cpu()], judge.subset(todo))
        cands.append(block)
        first += k
    return torch.cat(cands, dim=1)
