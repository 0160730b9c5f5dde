"""The reference pipeline: every cell computed on its own, by other code than the engine's.

It imports nothing from the engine. Adversarial images come from torchattacks (FGSM; PGD
from the same random starts, replayed through torch's global RNG; EOTPGD through a
randomized defense), the adaptive attacker differentiates a model o defense of its own
(the per-image OpenCV / scikit-image / numpy defense forward, the defense's declared
stand-in backward), delivery onto the 8-bit grid inside the eps-ball is its own numpy code,
and every candidate is judged one image at a time through the reference defenses under every
defender draw. PGD's best iterates are read from the iterates torchattacks feeds its model
(recorded on the way, with their logits). It is the oracle the engine is tested against
(same rows, cell by cell) and the baseline `robustgrid bench` measures it by.
"""
from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from ...attacks import start_seed
from ...defenses import DEFENSES, apply_defense, is_randomized
from ...models import fake_quant_twin, per_row_op, quant_mode, quantize, shipped_bytes
from ..device import fp32_precision, ieee_fp32
from ..provenance import images_digest
from ..spec import EvaluateSpec
from .plan import Cell, plan_cells
from .rows import Verdict, make_row
from .settings import DefenseSetting


def reference_rows(fp32: nn.Module, ev: EvaluateSpec, images: torch.Tensor, labels: torch.Tensor,
                   device: torch.device, meta: dict[str, Any], calibration: torch.Tensor | None = None) -> list[dict]:
    """Every cell of the grid, on the CPU whatever `device` (torchattacks' random starts are replayed
    through the CPU generator; against an engine on CUDA, float differences may move a few images)."""
    with ieee_fp32():
        return _reference_rows(fp32, ev, images.cpu(), labels.cpu(), device, meta, calibration)


def _reference_rows(fp32: nn.Module, ev: EvaluateSpec, images: torch.Tensor, labels: torch.Tensor,
                    device: torch.device, meta: dict[str, Any], calibration: torch.Tensor | None) -> list[dict]:
    models, twins = _models(fp32, ev.quant, calibration)
    sizes = {q: shipped_bytes(m) for q, m in models.items()}
    digest = images_digest(images, labels)
    clean_memo: dict[tuple, torch.Tensor] = {}    # as a plain loop keeps them: per (quant, defense)
    rows = []
    for c in plan_cells(ev):
        t0 = time.perf_counter()
        clean = torch.round(images * 255) / 255
        cands = clean.unsqueeze(1) if c.eps == 0 else _attack(models, twins, ev, c, images, labels)
        verdict = _judge(models[c.quant], cands, images, labels, c.defense, c.defense_setting, ev.batch_size)
        memo = (c.quant, c.defense, c.defense_setting)
        if memo not in clean_memo:
            clean_memo[memo] = _judge(models[c.quant], clean.unsqueeze(1), images, labels, c.defense,
                                      c.defense_setting, ev.batch_size).ok
        clean_ok = clean_memo[memo]
        rows.append(make_row(c, verdict, clean_ok, time.perf_counter() - t0, meta, model_bytes=sizes[c.quant],
                             device=torch.device("cpu"), precision=quant_mode(c.quant).precision or fp32_precision(torch.device("cpu")),
                             seed=ev.seed, data_digest=digest))
    return rows


def _models(fp32: nn.Module, quants: list[str], calibration) -> tuple[dict, dict]:
    """Every quant mode's model on the CPU (channels_last, as any deployment would run a CNN), and the
    fake-quant twins white-box attacks on int8 differentiate."""
    fp32 = copy.deepcopy(fp32).cpu().to(memory_format=torch.channels_last).eval()   # the caller's stays as it was
    models, twins = {"fp32": fp32}, {}
    for q in quants:
        models[q] = per_row_op(quantize(fp32, q, calibration))   # fbgemm's own op, image by image
        mode = quant_mode(q)
        if not mode.has_input_grad and mode.twin is not None:
            twins[q] = fake_quant_twin(fp32, models[q], q)
    return models, twins


# --- judging: every candidate, every defender draw, one image at a time through the reference library --------

def _judge(model: nn.Module, cands: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, defense: str,
           setting: DefenseSetting, batch_size: int) -> Verdict:
    per_draw, first = [], []
    for d in range(setting.n_draws):
        draw_params = {**setting.params, "draw": d} if is_randomized(defense) else setting.params
        ok = torch.ones(len(images), dtype=torch.bool)
        fooled_by = torch.full((len(images),), -1, dtype=torch.long)
        for k in range(cands.shape[1]):
            defended = apply_defense(defense, cands[:, k], draw_params, "reference", torch.arange(len(images)))
            right = _predict(model, defended, batch_size) == labels
            fooled_by[ok & ~right] = k
            ok &= right
        per_draw.append(ok)
        first.append(fooled_by)
    d = np.rint((cands - images.unsqueeze(1)).numpy().astype(np.float64) * 255)
    linf, l2 = int(np.abs(d).max()), float(np.sqrt((d.reshape(*d.shape[:2], -1) ** 2).sum(-1)).max() / 255)
    return Verdict.of_draws(per_draw, first, cands.shape[1], (linf, l2))


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch_size].contiguous(memory_format=torch.channels_last)).argmax(1)
                      for i in range(0, len(x), batch_size)])


def _deliver(adv: torch.Tensor, clean: torch.Tensor, eps: float) -> torch.Tensor:
    """The 8-bit file an attacker delivers inside the L-infinity ball: numpy's rint, clipped to the ball."""
    k = np.floor(eps * 255 + 1e-6)
    u = np.rint(clean.numpy().astype(np.float64) * 255)
    if adv.dim() == clean.dim() + 1:
        u = u[:, None]
    r = np.clip(np.rint(np.clip(adv.numpy().astype(np.float64), 0, 1) * 255), u - k, u + k)
    return torch.from_numpy(r / 255).to(torch.float32)


# --- attacking: torchattacks, through a model o defense of its own for adaptive cells -----------------------

def _attack(models: dict, twins: dict, ev: EvaluateSpec, c: Cell, images: torch.Tensor,
            labels: torch.Tensor) -> torch.Tensor:
    """The cell's candidates (N, K, C, H, W), made for it alone."""
    src = c.quant if c.attack_source == "self" else "fp32"
    attacked = Attacked(twins.get(src, models[src]), c)
    setting = c.attack_setting.own
    if c.attack == "fgsm":
        return _fgsm(attacked, images, labels, c.eps).unsqueeze(1)
    if c.attack == "pgd":
        return _pgd(attacked, images, labels, c.eps, setting, ev.seed, ev.batch_size)
    raise ValueError(f"the reference pipeline has no {c.attack}")


class Attacked(nn.Module):
    """The model the cell's attacker differentiates, recording what torchattacks feeds it: the model alone
    (oblivious), or model o defense (adaptive): the reference defense forward, its declared gradient backward;
    through a randomized defense the attacker's draws 1..eot_samples in turn, one a forward call."""

    def __init__(self, model: nn.Module, c: Cell):
        super().__init__()
        self.model, self.defense, self.params = model, c.defense, c.defense_setting.params
        self.adaptive = c.threat == "adaptive"
        self.eot = c.attack_setting.eot_draws if self.adaptive and is_randomized(c.defense) else 1
        self.calls, self.seen = 0, []
        # torchattacks restores the mode it found after each attack: a wrapper left in train mode (nn.Module's
        # default) put the model in train mode for every later cell (BatchNorm on batch statistics, updating
        # its running stats; dropout on), and the caller's model came back changed
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seen = x.detach().clone()      # the iterate torchattacks is at
        if self.adaptive:
            params = {**self.params, "draw": 1 + self.calls % self.eot} if is_randomized(self.defense) else self.params
            x = _ThroughReference.apply(x, self.defense, params)
        self.calls += 1
        logits = self.model(x.contiguous(memory_format=torch.channels_last))
        self.seen.append((seen, logits.detach().float()))
        return logits


class _ThroughReference(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, name, params):
        ctx.save_for_backward(x)
        ctx.name, ctx.params = name, params
        return apply_defense(name, x, params, "reference")

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        approx = DEFENSES.get(ctx.name).extras.get("approx")
        if approx is None:            # BPDA with the identity
            return grad_out, None, None
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(approx(xr, **{**DEFENSES.get(ctx.name).defaults, **ctx.params}), xr, grad_out)
        return grad, None, None


def _fgsm(attacked: Attacked, images: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    import torchattacks
    if attacked.eot > 1:      # one EOT step of size eps from the clean image is FGSM with EOT
        adv = torchattacks.EOTPGD(attacked, eps=eps, alpha=eps, steps=1, eot_iter=attacked.eot, random_start=False)(images, labels)
    else:
        adv = torchattacks.FGSM(attacked, eps=eps)(images, labels)
    return _deliver(adv, images, eps)


def _pgd(attacked: Attacked, images: torch.Tensor, labels: torch.Tensor, eps: float, setting: dict, seed: int,
         batch_size: int) -> torch.Tensor:
    """Per restart: torchattacks' PGD (EOTPGD through a randomized defense) from the engine's starts,
    batch after batch after torch.manual_seed(start_seed(seed, r)) (its uniform_ draw, in order, is the
    one random_starts makes); its final iterate and the iterate that scored highest on the attacker's
    model (iterates read as torchattacks feeds them to the model)."""
    import torchattacks
    alpha = setting.get("alpha") or max(eps / 4, 1 / 255)
    steps, random_start = int(setting["steps"]), bool(setting["random_start"])
    found = []
    for r in range(int(setting["restarts"])):
        torch.manual_seed(start_seed(seed, r))
        finals, bests = [], []
        for i in range(0, len(images), batch_size):
            x, y = images[i:i + batch_size].contiguous(), labels[i:i + batch_size]
            attacked.calls, attacked.seen = 0, []
            attack = torchattacks.EOTPGD(attacked, eps=eps, alpha=alpha, steps=steps, eot_iter=attacked.eot,
                                         random_start=random_start)
            final = attack(x, y)
            iterates = _iterates(attacked, final, steps)
            finals.append(final)
            bests.append(_best(attacked, iterates, y))
        found += [torch.cat(finals), torch.cat(bests)]
    return _deliver(torch.stack(found, dim=1), images, eps)


def _iterates(attacked: Attacked, final: torch.Tensor, steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(iterate, its logits' mean over the EOT calls) for iterates 0..steps: the steps' as torchattacks fed
    them to the model, the final one scored with one more round of calls."""
    per_step = [attacked.seen[t * attacked.eot:(t + 1) * attacked.eot] for t in range(steps)]
    iterates = [(calls[0][0], torch.stack([lg for _, lg in calls]).mean(0)) for calls in per_step]
    with torch.no_grad():
        outs = [attacked(final).float() for _ in range(attacked.eot)]
    return iterates + [(final, torch.stack(outs).mean(0))]


def _best(attacked: Attacked, iterates, labels: torch.Tensor) -> torch.Tensor:
    """Per image the first iterate with the highest strength (fooled beats unfooled, then the higher loss)."""
    best, best_key = None, None
    for adv, logits in iterates:
        loss = nn.functional.cross_entropy(logits, labels, reduction="none")
        key = (logits.argmax(1) != labels).float() * 1e6 + loss.clamp(max=1e5)
        if best is None:
            best, best_key = adv, key
            continue
        better = key > best_key
        best = torch.where(better.view(-1, 1, 1, 1), adv, best)
        best_key = torch.maximum(key, best_key)
    return best
