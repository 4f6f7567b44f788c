"""Optimizers and per-step learning-rate schedules.

Schedules are plain functions of the step fraction wrapped in LambdaLR, so their state is two integers
(JSON-serializable, which keeps checkpoints simple) and resuming lands on exactly the same learning rate."""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from ..recipe import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and norm parameters (1-D tensors): standard practice for CNNs and transformers."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(params: Iterable | list[dict], cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    # on CUDA one fused kernel per step; elsewhere (and with compile, where fused optimizers have had stride
    # errors) the foreach kernels, the fast path on CPU
    fused = device.type == "cuda" and not (cfg.compile or cfg.cuda_graphs)
    kernels = dict(fused=True) if fused else dict(foreach=True)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.effective_lr, momentum=cfg.momentum,
                               nesterov=cfg.nesterov and cfg.momentum > 0, weight_decay=cfg.weight_decay, **kernels)
    return torch.optim.AdamW(params, lr=cfg.effective_lr, weight_decay=cfg.weight_decay, **kernels)


def lr_factor(cfg: TrainConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Multiplier of the base lr at `step` (0-based) out of `total_steps`."""
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.schedule == "onecycle" and warmup == 0:
        warmup = max(1, int(0.3 * total_steps))
    if step < warmup:
        start = 1 / 25 if cfg.schedule == "onecycle" else 0.0  # onecycle starts at lr/25, like torch's OneCycleLR
        return start + (1 - start) * (step + 1) / warmup
    frac = (step - warmup) / max(1, total_steps - warmup)
    if cfg.schedule in ("cosine", "onecycle"):
        floor = 1e-4 if cfg.schedule == "onecycle" else 0.0
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
    if cfg.schedule == "multistep":
        progress = step / max(1, total_steps)
        return cfg.gamma ** sum(progress >= m for m in cfg.milestones)
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
    total = cfg.epochs * steps_per_epoch
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(cfg, step, total, steps_per_epoch))
