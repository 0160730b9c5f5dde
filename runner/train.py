"""One training trial: `train(config) -> result`, a plain function of a flat config.

DDP-ready in the nanoGPT way: launched by torchrun (WORLD_SIZE > 1) it joins the process
group from the environment (gloo on CPU, nccl on CUDA), each rank takes its shard of
every epoch's permutation (DistributedSampler) and rank 0 alone writes. Run as one
process it is plain single-device training. Ray Tune / Ray Train call it unchanged.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..models import (
    create_model,
    quantize,
    read_checkpoint,
    save_checkpoint,
    state_dict_bytes,
)
from . import adversarial as adv
from .data import Splits, TensorBatches, load_splits, to_float
from .device import ieee_fp32, pick_device
from .distributed import DistInfo, from_rank0, setup_distributed
from .provenance import images_digest, software
from .spec import TrainConfig

Reporter = Callable[[dict[str, Any], Path | None], None]


@torch.no_grad()
def accuracy(model: nn.Module, x_uint8: torch.Tensor, y: torch.Tensor, device: torch.device,
             batch_size: int | None = None, autocast=contextlib.nullcontext) -> tuple[float, float]:
    """(mean loss, accuracy) over a whole uint8 split."""
    model.eval()
    batch_size = batch_size or (1000 if device.type == "cuda" else 200)   # CPU: 200 stays in cache
    loss_sum, correct = 0.0, 0
    for i in range(0, len(x_uint8), batch_size):
        xb = to_float(x_uint8[i:i + batch_size].to(device, non_blocking=True))
        yb = y[i:i + batch_size].to(device, non_blocking=True)
        with autocast():
            logits = model(xb).float()
        loss_sum += F.cross_entropy(logits, yb, reduction="sum").item()
        correct += (logits.argmax(1) == yb).sum().item()
    n = max(len(x_uint8), 1)
    return loss_sum / n, correct / n


def build_model(cfg: TrainConfig, splits: Splits) -> tuple[nn.Module, dict[str, Any]]:
    kwargs: dict[str, Any] = {"num_classes": len(splits.classes), "mean": list(splits.mean), "std": list(splits.std),
                              **cfg.model_kwargs()}
    return create_model(cfg.model, **kwargs), kwargs


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def make_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """(scheduler, when it steps: 'metric' once an epoch on the selection metric, 'epoch', or 'step' every batch).
    one_cycle is Wong et al.'s cyclic schedule: linear from ~0 up to lr at 2/5 of the run, then down to ~0;
    multistep Madry's / Rice's decay by 10 at 1/2 and 3/4 of the epochs; cosine over every step."""
    sched = torch.optim.lr_scheduler
    total = max(cfg.epochs * steps_per_epoch, 1)
    if cfg.lr_schedule == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=total), "step"
    if cfg.lr_schedule == "one_cycle":
        return sched.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total, pct_start=0.4, anneal_strategy="linear",
                                cycle_momentum=False, div_factor=1e4, final_div_factor=1e4), "step"
    if cfg.lr_schedule == "multistep":
        return sched.MultiStepLR(optimizer, milestones=[cfg.epochs // 2, (3 * cfg.epochs) // 4], gamma=0.1), "epoch"
    return sched.ReduceLROnPlateau(optimizer, mode="max", factor=cfg.lr_factor, patience=cfg.lr_patience), "metric"


def train(config: dict[str, Any], report: Reporter | None = None, resume_from: str | Path | None = None,
          progress: Callable[[int, int, dict], None] | None = None) -> dict[str, Any]:
    """Train one configuration; returns the trial's results (test accuracy of the best epoch...).

    `report(metrics, checkpoint_dir)` is called by every rank after each epoch (Ray Tune
    wants it from every worker); `checkpoint_dir` holds last.pt on rank 0 and is None elsewhere.
    """
    cfg = TrainConfig.model_validate(config)
    t_start = time.time()
    di, device, out_dir = _setup(cfg)
    splits = load_splits(cfg.data)
    model, model_kwargs, step_net = _place_model(cfg, splits, device, di)
    optimizer = make_optimizer(cfg, model)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if (device.type == "cuda" and cfg.amp) \
        else contextlib.nullcontext
    batches = make_batches(cfg, splits, di, device)
    scheduler, sched_when = make_scheduler(cfg, optimizer, len(batches))
    robust = Robustness(cfg, model, splits, device, di) if cfg.adversarial != "none" else None

    state = {"epoch": 0, "best_val": -1.0, "best_epoch": -1, "bad_epochs": 0, "history": []}
    if resume_from is not None:
        state = _restore(Path(resume_from), cfg, model, optimizer, scheduler)
    seconds_before = state.get("seconds", 0.0)    # earlier segments (a crash, or PBT's source) behind these weights

    for epoch in range(state["epoch"], cfg.epochs):
        t0 = time.time()
        lr = optimizer.param_groups[0]["lr"]
        train_loss, train_acc = train_one_epoch(step_net, batches, epoch, optimizer, autocast,
                                                robust.trainer(epoch, batches) if robust else None,
                                                scheduler.step if sched_when == "step" else None)
        train_seconds = time.time() - t0    # train_one_epoch ends in .item(): the device has finished
        val_loss, val_acc = from_rank0(list(accuracy(model, splits.val_x, splits.val_y, device, autocast=autocast)),
                                       di, device)
        row = {"epoch": epoch + 1, "train_loss": train_loss, "train_accuracy": train_acc, "val_loss": val_loss,
               "val_accuracy": val_acc, "lr": lr, "seconds": 0.0, "train_seconds": train_seconds}
        if robust:
            row.update(robust.measure(state["history"] + [row]))
        metric = row["robust_val_accuracy"] if robust else val_acc     # Rice et al.: select on robust accuracy
        _step_on_epoch(scheduler, sched_when, metric)
        row["seconds"] = time.time() - t0
        improved = _record_epoch(state, row, metric, seconds_before + time.time() - t_start)
        ckpt_dir = _save_epoch(out_dir, cfg, model, model_kwargs, optimizer, scheduler, state, improved, splits) \
            if di.is_main else None
        if progress:
            progress(epoch + 1, cfg.epochs, row)
        if report:
            report({**row, "best_val_accuracy": state["best_val"],     # a searcher may rank by either figure
                    "best_robust_val_accuracy": state["best_metric"] if robust else None}, ckpt_dir)
        if cfg.early_stopping_patience is not None and state["bad_epochs"] >= cfg.early_stopping_patience:
            break

    result = _finish(cfg, out_dir, model, splits, device, di, state)
    # the whole trial: data, epochs, test accuracy, sizes, with the segments before a resume or a PBT clone
    result["seconds"] = seconds_before + time.time() - t_start
    if di.owns_group:
        dist.destroy_process_group()
    return result


def _setup(cfg: TrainConfig) -> tuple[DistInfo, torch.device, Path]:
    """Threads, the process group (under torchrun or Ray Train), this rank's device, the seed, the out folder."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    di = setup_distributed(pick_device(cfg.device).type)
    device = pick_device(cfg.device, di.local_rank)
    torch.manual_seed(cfg.seed)
    out_dir = Path(cfg.out_dir or ".").resolve()
    if di.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    return di, device, out_dir


def _place_model(cfg: TrainConfig, splits: Splits, device: torch.device,
                 di: DistInfo) -> tuple[nn.Module, dict[str, Any], nn.Module]:
    """The model on its device (channels_last), and the module a step runs: DDP-wrapped over several
    processes, compiled if asked."""
    model, model_kwargs = build_model(cfg, splits)
    model.to(device)
    on_cuda = device.type == "cuda"
    if cfg.channels_last:  # faster convolutions on CUDA and CPU alike (1.6x a step on one CPU core)
        model = model.to(memory_format=torch.channels_last)
    if di.world_size > 1 and on_cuda:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # BN over the global batch, as one process would
    net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if on_cuda else None) \
        if di.world_size > 1 else model
    return model, model_kwargs, torch.compile(net) if cfg.compile else net


def _step_on_epoch(scheduler, when: str, metric: float) -> None:
    """A scheduler that steps per epoch: on the selection metric (plateau) or on the epoch."""
    if when == "metric":
        scheduler.step(metric)
    elif when == "epoch":
        scheduler.step()


def _record_epoch(state: dict[str, Any], row: dict[str, Any], metric: float, seconds: float) -> bool:
    """The epoch into the trial's state: its history, the time so far, the best epoch and patience; True when
    it is the best yet."""
    state["seconds"] = seconds
    state["history"].append(row)
    state["epoch"] = row["epoch"]
    improved = metric > state.get("best_metric", state["best_val"])
    if improved:
        state.update(best_metric=metric, best_val=row["val_accuracy"], best_epoch=row["epoch"], bad_epochs=0)
    else:
        state["bad_epochs"] += 1
    return improved


def make_batches(cfg: TrainConfig, splits: Splits, di: DistInfo, device: torch.device):
    if cfg.loader == "dataloader":
        from .data.loaders import DataLoaderBatches
        return DataLoaderBatches(splits.train_x, splits.train_y, cfg.batch_size, di, device, cfg.seed, cfg.augment,
                                 cfg.loader_workers)
    return TensorBatches(splits.train_x, splits.train_y, cfg.batch_size, di, device, cfg.seed, cfg.augment)


def train_one_epoch(net: nn.Module, batches, epoch: int, optimizer, autocast, attack=None,
                    on_step=None) -> tuple[float, float]:
    """attack(xb, yb) -> (images to train on, trades' x'): adversarial training (the attack runs outside autocast,
    in fp32: no fp16 gradient underflows). on_step: a per-step learning-rate schedule."""
    net.train()
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.int64)
    seen = 0
    for xb, yb in batches.epoch(epoch):
        x_adv = attack(xb, yb) if attack else None
        with autocast():
            if attack:
                loss, logits = attack.loss(net, xb, x_adv, yb)
            else:
                logits = net(xb)
                # bf16 logits (AMP) are scored in fp32; fp32 and fp64 logits as they are
                loss = F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if on_step:
            on_step()
        # .item() each step would sync the GPU; accumulate on device, read once per epoch.
        loss_sum = loss_sum.to(loss.device) + loss.detach().double() * len(yb)
        correct = correct.to(loss.device) + (logits.argmax(1) == yb).sum()
        seen += len(yb)
    return loss_sum.item() / max(seen, 1), correct.item() / max(seen, 1)


class Robustness:
    """Adversarial training's per-trial parts: the attack each step and the robust measurements each epoch."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, splits: Splits, device: torch.device, di: DistInfo):
        self.cfg, self.model, self.device, self.di = cfg, model, device, di
        self.val_x = to_float(splits.val_x[:cfg.robust_val_images].to(device))
        self.val_y = splits.val_y[:cfg.robust_val_images].to(device)
        self.train_x = to_float(splits.train_x[:256].to(device))     # Wong et al.'s check: a fixed training batch
        self.train_y = splits.train_y[:256].to(device)

    def trainer(self, epoch: int, batches):
        """The epoch's attack: each sample's start from (seed, epoch, its index), so a resumed epoch, a DDP rank
        and one process draw the same (a DataLoader hides the indices: there, a stream per rank and epoch)."""
        gen = torch.Generator().manual_seed((self.cfg.seed * 1_000_003 + self.di.rank * 1009 + epoch) % 2**63)
        cfg, model = self.cfg, self.model

        def attack(xb, yb):
            index = getattr(batches, "index", None)
            u = (adv.sample_uniform(index, cfg.seed, epoch, tuple(xb.shape[1:])) if index is not None
                 else torch.rand(xb.shape, generator=gen, dtype=torch.float64))
            return adv.adversarial_batch(model, xb, yb, cfg, u)
        attack.loss = lambda net, xb, x_adv, yb: adv.training_loss(net, xb, x_adv, yb, cfg)
        return attack

    def measure(self, history: list[dict]) -> dict[str, Any]:
        """robust_val_accuracy (PGD-10 at the training eps), robust_train_accuracy, catastrophic_overfitting."""
        rv, rt = from_rank0([adv.robust_accuracy(self.model, self.val_x, self.val_y, self.cfg.adv_eps),
                             adv.robust_accuracy(self.model, self.train_x, self.train_y, self.cfg.adv_eps)], self.di, self.device)
        row = {"robust_val_accuracy": rv, "robust_train_accuracy": rt}
        return {**row, "catastrophic_overfitting": adv.catastrophic_overfitting(history[:-1] + [{**history[-1], **row}])}


def _save_epoch(out_dir: Path, cfg: TrainConfig, model, model_kwargs, optimizer, scheduler, state, improved, splits) -> Path:
    meta = {"config": cfg.model_dump(), "classes": splits.classes, "epoch": state["epoch"]}
    if improved:
        save_checkpoint(out_dir / "best.pt", cfg.model, model_kwargs, model.state_dict(), meta)
    # last.pt carries everything needed to continue the trial after a crash.
    save_checkpoint(out_dir / "last.pt", cfg.model, model_kwargs, model.state_dict(),
                    {**meta, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "state": {k: v for k, v in state.items()}})
    return out_dir


def _restore(path: Path, cfg: TrainConfig, model, optimizer, scheduler) -> dict[str, Any]:
    path = path / "last.pt" if path.is_dir() else path
    payload = read_checkpoint(path)
    model.load_state_dict(payload["state_dict"])
    optimizer.load_state_dict(payload["meta"]["optimizer"])
    scheduler.load_state_dict(payload["meta"]["scheduler"])
    state = dict(payload["meta"]["state"])
    source = payload["meta"]["config"]
    # A trial's folder is named by its id: another folder's checkpoint is another trial's weights (PBT's clone)
    if Path(source.get("out_dir") or ".").name != Path(cfg.out_dir or ".").name:
        state = _adopt(state, source, cfg, optimizer)
    return state


def _adopt(state: dict[str, Any], source: dict[str, Any], cfg: TrainConfig, optimizer) -> dict[str, Any]:
    """Continue from another trial's weights and optimizer state with this trial's (perturbed) hyperparameters;
    the learning rate scaled by the perturbation, so a plateau or step decay the source reached is kept.
    The lineage, carried in the checkpoints, says whose weights these are (every clone back to the first) and
    the values in force before and after (the optimizer's learning rate, not the configured one)."""
    before = _in_force(optimizer, source.get("trades_beta"))
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * cfg.lr / source["lr"]
        group["weight_decay"] = cfg.weight_decay
        if "momentum" in group:
            group["momentum"] = cfg.momentum
    entry = {"epoch": state["epoch"], "to": Path(cfg.out_dir or ".").name, "from": Path(source["out_dir"]).name,
             "from_config": before, "config": _in_force(optimizer, cfg.trades_beta)}
    return {**state, "lineage": [*state.get("lineage", []), entry]}


def _in_force(optimizer, trades_beta) -> dict[str, Any]:
    group = optimizer.param_groups[0]
    return {"lr": group["lr"], "weight_decay": group["weight_decay"], "momentum": group.get("momentum"),
            "trades_beta": trades_beta}


def _finish(cfg, out_dir, model, splits, device, di, state) -> dict[str, Any]:
    """Reload the best epoch's weights and measure it on the test split."""
    best = out_dir / "best.pt"
    if di.world_size > 1:
        dist.barrier()  # rank 0 has finished writing best.pt
    if best.exists():
        model.load_state_dict(read_checkpoint(best)["state_dict"])
    with ieee_fp32():    # the reported test accuracy is an fp32 figure, on a GPU too
        _, test_acc = accuracy(model, splits.test_x, splits.test_y, device)
    cpu_model = model.to("cpu")   # sizes as the notebooks measured them (state_dict_bytes ignores the layout)
    robust = [h for h in state["history"] if h.get("robust_val_accuracy") is not None]
    collapsed = [h["epoch"] for h in state["history"] if h.get("catastrophic_overfitting")]
    return {
        "best_val_accuracy": state["best_val"], "best_epoch": state["best_epoch"],
        "best_robust_val_accuracy": state.get("best_metric") if robust else None,
        "catastrophic_overfitting_epoch": collapsed[0] if collapsed else None,
        "test_accuracy": test_acc, "epochs_run": state["epoch"], "train_images": len(splits.train_x),
        "world_size": di.world_size, "device": str(device), "node": socket.gethostname(),
        "checkpoint": str(best), "fp32_bytes": state_dict_bytes(cpu_model),
        "int8_bytes": state_dict_bytes(quantize(cpu_model, "dynamic_int8")),
        "data_digest": images_digest(splits.train_x, splits.train_y), **software(),
        "lineage": json.dumps(state["lineage"]) if state.get("lineage") else None,
        "history": state["history"],
    }


def main(argv: list[str] | None = None) -> None:
    """torchrun --nproc_per_node=N -m robustgrid.runner.train key=value ... (TrainConfig keys)."""
    import sys

    import yaml
    config = {}
    for arg in (argv if argv is not None else sys.argv[1:]):
        key, _, value = arg.partition("=")
        config[key] = yaml.safe_load(value)
    result = train(config)
    if int(os.environ.get("RANK", 0)) == 0:
        print({k: v for k, v in result.items() if k != "history"})


if __name__ == "__main__":
    main()
