"""Shared base of the attacks: `attack(model, images, labels, eps, **params) -> images`, all in [0,1].

An attack declares its parameters (defaults, domains) in the registry; the sweep's
`attacks: [fgsm, {pgd: {steps: 20}}]` is checked against them and the full parameters of a
cell are its `attack_params` column.
"""
from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable, Iterator
from typing import Protocol

import torch
from torch import nn

from ..pixels import from_levels, to_levels
from ..registry import Entry, Param, Registry


class Attack(Protocol):
    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 eps: float, **params) -> torch.Tensor: ...


ATTACKS = Registry("attack")


NORMS = ("linf", "l2")


KINDS = ("gradient", "black-box", "model-free", "ensemble")
STEP_SIZES = ("fixed", "adaptive")


def register_attack(*, kind: str = "gradient", step: Callable | None = None, params: dict[str, Param] | None = None,
                    starts: Callable[[dict], tuple[int, str]] | None = None, image_keys: bool = False,
                    expand: Callable[[dict], dict] | None = None, candidates: Callable[[dict], list[str]] | None = None,
                    seed_salt: int = 0, step_size: str | None = None):
    """Register an attack under its function's name.

    kind: what it reads of the model. gradient: input gradients. black-box: only the model's outputs, so it
    queries the scored model itself (the real int8 model, never its fake-quant twin: the check that would expose
    a twin that differs from it) and the masking checks hold it against the gradient attacks. model-free:
    nothing (random noise: one oblivious white-box row says it all). ensemble: gradient and black-box
    components (AutoAttack). `step(images, grad, eps[, norm])` marks a single-step attack: one input gradient
    then serves every eps (the engine makes it once). `starts(params) -> (streams, kind)`: the random starts it
    takes per image (`random_starts`), drawn for the whole image set from the evaluation seed (xor seed_salt,
    for a stream of its own) and sliced per batch. image_keys: it takes `image_keys`, one int64 per image from
    the evaluation seed and the image's index, for draws of its own (Square's). expand(params): the parameters
    a row records, derived ones spelled out (AutoAttack's components); candidates(params): a name for each
    candidate it returns (a row counts the images each broke first). An attack that stops early on some
    images takes `judge` (attacks/judge.py) and asks it alone which images are worth more work.
    step_size: 'fixed' (PGD) or 'adaptive' (APGD's schedule, AutoAttack's): the masking checks hold a fixed-step
    attack's number against an adaptive one's on the same cells (a fixed step that had not converged overstates)."""
    if kind not in KINDS:
        raise ValueError(f"attack kind {kind!r}: one of {', '.join(KINDS)}")
    if step_size not in (None, *STEP_SIZES):
        raise ValueError(f"step_size {step_size!r}: one of {', '.join(STEP_SIZES)}")
    return ATTACKS.register(params=params, kind=kind, step=step, starts=starts, image_keys=image_keys, expand=expand,
                            candidates=candidates, seed_salt=seed_salt, step_size=step_size)


def attack_entry(name: str) -> Entry:
    """The registry's entry of attack `name`; an attack of the optional torchattacks zoo (`torchattacks.<Name>`)
    gets one built on first use, which says what the zoo's attacks are (attacks/zoo.py)."""
    if name in ATTACKS or not name.startswith(ZOO_PREFIX):
        return ATTACKS.get(name)
    from .zoo import zoo_entry
    return zoo_entry(name)


def attack_kind(name: str) -> str:
    return attack_entry(name).extras["kind"]


def candidate_names(name: str, params: dict) -> list[str] | None:
    """The names of the candidates attack `name` returns, where it names them (AutoAttack's components)."""
    names = attack_entry(name).extras.get("candidates")
    return names(params) if names else None


def is_black_box(name: str) -> bool:
    return attack_kind(name) == "black-box"


def takes_image_keys(name: str) -> bool:
    return bool(attack_entry(name).extras.get("image_keys"))


def step_size(name: str) -> str | None:
    """'fixed' or 'adaptive' where the attack declares how its step size is chosen (register_attack)."""
    return attack_entry(name).extras.get("step_size")


def attack_inputs(name: str, model: nn.Module, scored: nn.Module, judge=None) -> tuple[nn.Module, dict]:
    """The attack contract's one rule of what attack `name` is handed, by its kind (read from its signature):
    a gradient attack differentiates `model` (the attacker's: the STE twin of an int8 mode, model o defense in an
    adaptive cell); a black-box or model-free one queries `scored`, the model a standalone black-box attack of the
    cell queries; an ensemble gets `model` and, as query_model, `scored`; an attack that takes a judge gets it."""
    options = {"judge": judge} if judge is not None and takes_judge(name) else {}
    if attack_kind(name) in ("black-box", "model-free"):
        return scored, options
    if "query_model" in _signature(name):
        options["query_model"] = scored
    return model, options


def takes_judge(name: str) -> bool:
    """It stops early on some images, and asks the judge which (its signature takes `judge`)."""
    return "judge" in _signature(name)


def _signature(name: str):
    return inspect.signature(get_attack(name)).parameters


def draws_globally(name: str) -> bool:
    """It draws from torch's global RNG at every call (the zoo): it runs on fixed chunks of the test split, each
    seeded from its first index, and through a randomized defense it meets a fresh draw at every forward."""
    return bool(attack_entry(name).extras.get("global_rng"))


def seed_salt(name: str) -> int:
    """What the evaluation seed is xor-ed with for this attack's random starts (a stream of its own)."""
    return attack_entry(name).extras.get("seed_salt", 0)


def start_streams(name: str, params: dict) -> tuple[int, str] | None:
    """(streams, kind) of the random starts attack `name` takes with `params`; None when it takes none."""
    starts = attack_entry(name).extras.get("starts")
    return starts(params) if starts else None


def norm_of(params: dict) -> str:
    """The threat model's norm of an attack's parameters (L-infinity unless it says otherwise)."""
    return str(params.get("norm", "linf")).lower()    # the torchattacks zoo spells them Linf, L2


def max_eps(norm: str, shape: tuple[int, ...] = (3, 32, 32)) -> float:
    """The largest radius that means anything for images of `shape` in [0,1]: beyond it the ball holds the cube."""
    return 1.0 if norm == "linf" else math.sqrt(math.prod(shape))


def start_seed(seed: int, restart: int) -> int:
    """The generator seed of one restart's (one stream's) random starts."""
    return (seed * 1_000_003 + restart) % 2**63


def random_starts(n: int, shape: tuple[int, ...], restarts: int, seed: int, eps: float = 1.0,
                  kind: str = "uniform") -> torch.Tensor:
    """Start draws (n, restarts, *shape) on the CPU for the whole image set from (seed, restart) alone: image
    i's draw is the i-th in its restart's stream, whatever its batch (the CPU generator fills a tensor in
    order). kind: "uniform" in [-eps, eps] (torchattacks.PGD's draw), "rand" in [0, 1) (torch.rand, APGD's
    L-inf draw) or "randn" (torch.randn, the L2 draws): each the very draw torchattacks makes after
    torch.manual_seed(start_seed(seed, r)) for a contiguous batch, so the reference can replay it."""
    out = torch.empty((n, restarts, *shape))
    for r in range(restarts):
        g = torch.Generator().manual_seed(start_seed(seed, r))
        draw = torch.empty((n, *shape))
        if kind == "uniform":
            draw.uniform_(-eps, eps, generator=g)
        elif kind == "rand":
            draw.uniform_(0, 1, generator=g)
        elif kind == "randn":
            draw.normal_(generator=g)
        else:
            raise ValueError(f"unknown start kind {kind!r}")
        out[:, r] = draw
    return out


def attack_names() -> list[str]:
    return ATTACKS.names()


def get_attack(name: str) -> Attack:
    return attack_entry(name).obj


def attack_params_json(name: str, params: dict | None = None) -> str:
    """Canonical JSON of an attack's full parameters (defaults filled in): part of a cell's key."""
    import json
    return json.dumps(resolve_attack(name, params), sort_keys=True)


def resolve_attack(name: str, params: dict | None = None) -> dict:
    """An attack's full parameters: defaults filled in, each checked, derived ones spelled out (an entry with
    its own `resolve`, the zoo's, checks them its way)."""
    entry = attack_entry(name)
    if "resolve" in entry.extras:
        return entry.extras["resolve"](params or {})
    full = ATTACKS.resolve(name, params)
    expand = entry.extras.get("expand")
    return expand(full) if expand else full


ZOO_PREFIX = "torchattacks."
# zoo attacks draw from the global RNG per call: they run on fixed chunks of the test split, each seeded from
# its first index (an evaluation shard starts on a chunk boundary, so its cells equal the unsharded ones)
ZOO_CHUNK = 100


def gradient_step(name: str) -> Callable | None:
    """For single-step attacks, `step(images, grad, eps)`: one input gradient serves every eps."""
    return attack_entry(name).extras.get("step")


def input_gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                   return_logits: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the mean cross-entropy w.r.t. the input, model in eval mode, each image's
    up to its own positive power of two (its sign, all FGSM/PGD use, is the unscaled one's).

    Through a half-precision model the gradient of a confident image underflows to zero and
    sign(0) leaves its pixels unperturbed. So each image's loss is scaled by a power of two
    that brings its logit gradient near 1 before it enters the model's backward; a power of
    two is exact in fp32, so on an fp32 model the signs equal torchattacks' bit for bit.
    Images whose scaled gradient overflows are retried with a smaller scale; images whose gradient is still
    all zero (a softmax one-hot in float32) take the gradient of the loss's exact direction instead.

    A model with `eot_draws` (a randomized defense in front of it) gives the mean gradient over
    those draws of its randomness (EOT), every draw under the same per-image scale.
    return_logits: also the logits of this forward pass (their mean over EOT draws), which
    attacks that keep their best iterate read at no extra cost.
    """
    was_training = model.training
    model.eval()
    draws = getattr(model, "eot_draws", None) or [None]
    scale = None
    for _ in range(4):
        grads, logits = [], []
        for d in draws:
            if d is not None:
                model.draw = d
            grad, scale, out = _scaled_gradient(model, images, labels, scale)
            grads.append(grad)
            logits.append(out)
        grad = grads[0] if len(grads) == 1 else torch.stack(grads).mean(0)
        bad = ~torch.isfinite(grad).flatten(1).all(1)
        if not bad.any():
            break
        scale = torch.where(bad, scale * 2.0 ** -16, scale)
    dead = (grad.flatten(1) == 0).all(1)
    if dead.any():     # sign(0) would never move these images: take the direction, exact at any confidence
        redo = []
        for d in draws:
            if d is not None:
                model.draw = d
            redo.append(_direction_gradient(model, images, labels))
        redo = redo[0] if len(redo) == 1 else torch.stack(redo).mean(0)
        grad = torch.where(dead.view(-1, *[1] * (grad.dim() - 1)), redo, grad)
    model.train(was_training)
    if return_logits:
        return grad, logits[0] if len(logits) == 1 else torch.stack(logits).mean(0)
    return grad


def _scaled_gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                     scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = images.clone().detach().requires_grad_(True)
    logits = model(x).float()
    if scale is None:
        scale = _loss_scale(logits.detach(), labels)
    per_image = nn.functional.cross_entropy(logits, labels, reduction="none")
    loss = (per_image * scale).sum() / len(labels)       # the mean, each term scaled
    return torch.autograd.grad(loss, x)[0], scale, logits.detach()


def _direction_gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The input gradient of the cross-entropy's direction (`_cross_entropy_direction`) for images whose scaled
    gradient is still all zero: a margin past ~100 makes even a float32 softmax one-hot, and a half model's
    backward flushes what is left (the CUDA suite saw it on an H200 in fp16)."""
    x = images.clone().detach().requires_grad_(True)
    logits = model(x).float()
    direction = _cross_entropy_direction(logits.detach(), labels)
    return torch.autograd.grad(logits, x, grad_outputs=direction)[0]


def _cross_entropy_direction(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """q - onehot(y), q the softmax over the classes other than y: the cross-entropy's logit gradient up to the
    positive factor 1 - p_y, with its largest entry 1 however confident the image is."""
    others = logits.double().scatter(1, labels[:, None], float("-inf"))
    return (torch.softmax(others, 1) - nn.functional.one_hot(labels, logits.shape[1]).double()).float()


def _loss_scale(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per image 2**k, k such that its largest logit gradient, (softmax - onehot) / N * 2**k, is in [1, 2)."""
    p = torch.softmax(logits, 1)
    top = (p - nn.functional.one_hot(labels, p.shape[1]).to(p.dtype)).abs().amax(1) / len(labels)
    k = -torch.floor(torch.log2(top.clamp_min(2.0 ** -140)))
    return torch.exp2(k.clamp(0, 126))          # 2**126: the largest power of two a float32 holds with room


@contextlib.contextmanager
def input_gradients_only(model: nn.Module) -> Iterator[nn.Module]:
    """The model with its weights frozen while an attack runs: autograd then skips the weights'
    gradients, which no attack reads (a third of a simple_cnn's backward on a CPU). The input
    gradient is the same, bit for bit; the weights' flags are restored afterwards."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p in params:
            p.requires_grad_(True)


def to_8bit_grid(images: torch.Tensor) -> torch.Tensor:
    """What an attacker delivers as a file: round (never truncate) to the 8-bit grid."""
    return from_levels(to_levels(images), images.dtype)


def eps_levels(eps: float) -> int:
    """The largest perturbation, in 8-bit levels, that stays inside an L-infinity ball of radius eps."""
    return math.floor(eps * 255 + 1e-6)


def deliver(adv: torch.Tensor, clean: torch.Tensor, eps: float, norm: str = "linf") -> torch.Tensor:
    """What an attacker delivers as a file, inside the ball its row is labelled with: each pixel rounded
    to the 8-bit grid, toward the clean pixel where plain rounding would leave the L-infinity ball
    (eps 0.03 delivers at most 7/255, never 8/255). `clean` lies on the grid; `adv` is (N, C, H, W) or
    candidates (N, K, C, H, W). L2: rounded as close to the found image as the ball allows (`_l2_levels`)."""
    if adv.dim() == clean.dim() + 1:
        clean = clean.unsqueeze(1)
    u = torch.round(clean * 255)
    if norm == "linf":
        k = eps_levels(eps)
        r = torch.round(adv.clamp(0, 1) * 255)
        return from_levels(u + (r - u).clamp(-k, k), clean.dtype)
    return from_levels(u + _l2_levels(adv.clamp(0, 1).double() * 255 - u.double(), eps * 255), clean.dtype)


def _l2_levels(d: torch.Tensor, budget: float) -> torch.Tensor:
    """Integer perturbations (in 8-bit levels) inside the L2 ball of radius `budget` levels, as close to d as
    the ball allows: d (scaled onto the ball where it lies outside) rounded to nearest, then the roundings
    that moved a pixel away from the clean one undone, the largest excess first, until the norm fits.

    Rounding a perturbation on the sphere adds about n/12 squared levels (3072 pixels: ~16 levels of
    radius), so plain rounding almost always leaves the ball; truncating every pixel toward the clean
    one (the old rule) delivered a mean 0.179 for eps 0.25 (64 random images, CPU). Undoing only as many outward roundings as the ball
    needs delivers within one level of the found image, never outside eps."""
    norm = lambda t: t.flatten(-3).norm(dim=-1)[..., None, None, None]
    inside = budget * (1 - 1e-12)
    d = d * (inside / norm(d).clamp_min(1e-300)).clamp(max=1.0)
    r = torch.round(d)
    flat_r, flat_d = r.flatten(-3), d.flatten(-3)
    excess = torch.where(flat_r.abs() > flat_d.abs(), flat_r.abs() - flat_d.abs(), -1.0)   # outward roundings
    order = excess.argsort(dim=-1, descending=True)
    # undoing a level of a pixel at |r| takes 2|r| - 1 off the squared norm
    gain = torch.where(excess >= 0, 2 * flat_r.abs() - 1, 0.0).gather(-1, order)
    over = (flat_r ** 2).sum(-1, keepdim=True) - inside ** 2
    undo_sorted = (gain.cumsum(-1) - gain) < over          # still over the ball before this undo: undo it
    undo = torch.zeros_like(undo_sorted).scatter(-1, order, undo_sorted) & (excess >= 0)
    return (flat_r - torch.where(undo, flat_r.sign(), 0.0)).reshape(r.shape)


def as_candidates(adv: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """An attack's output as candidates (N, K, C, H, W): an attack returns one image per input, or K
    candidates each (its restarts' final and best iterates)."""
    return adv.unsqueeze(1) if adv.dim() == images.dim() else adv
