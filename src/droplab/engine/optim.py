"""Optimisers, per-batch learning-rate schedules and mixed precision for the loop.

References: Loshchilov & Hutter 2017/2019 (SGDR cosine schedule, AdamW), Smith & Topin 2019
(one-cycle), Goyal et al. 2017 (linear warm-up), Jordan 2024 (airbench's triangle).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn
from torch.optim import lr_scheduler as sch

from droplab.engine.config import TrainConfig


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum or AdamW; no weight decay on biases and norm parameters.

    A model may define ``lr_groups() -> [(params, lr_scale), ...]`` (e.g. layer-wise
    learning-rate decay when fine-tuning); each group then trains at ``lr * lr_scale``.
    Frozen parameters are included so that unfreezing them later needs no new optimiser
    (parameters without gradients are skipped by the update).
    """
    lr, wd = cfg.resolved_lr, cfg.resolved_weight_decay
    lr_groups = getattr(model, "lr_groups", None)
    parts = lr_groups() if callable(lr_groups) else [(list(model.parameters()), 1.0)]
    groups: list[dict[str, Any]] = []
    for params, scale in parts:
        params = list(params)
        for decay, chosen in ((wd, [p for p in params if p.ndim > 1]),
                              (0.0, [p for p in params if p.ndim <= 1])):
            if chosen:
                groups.append({"params": chosen, "weight_decay": decay, "lr": lr * float(scale)})
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=lr)


def make_lr_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> sch.LRScheduler:
    """A per-batch scheduler: cosine to zero (with optional linear warm-up), one-cycle,
    triangle, or constant."""
    total = max(1, cfg.epochs * steps_per_epoch)
    if cfg.lr_schedule == "onecycle":
        max_lr = [g["lr"] for g in optimizer.param_groups]
        return sch.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total)
    warmup = min(total - 1, round(cfg.warmup_epochs * steps_per_epoch))
    if cfg.lr_schedule == "triangle":
        return sch.LambdaLR(optimizer, triangle(total, warmup or int(0.23 * total)))
    if cfg.lr_schedule == "cosine":
        main: sch.LRScheduler = sch.CosineAnnealingLR(optimizer, T_max=total - warmup)
    else:
        main = sch.LambdaLR(optimizer, lambda _step: 1.0)
    if warmup <= 0:
        return main
    ramp = sch.LinearLR(optimizer, start_factor=0.01, total_iters=warmup)
    return sch.SequentialLR(optimizer, [ramp, main], milestones=[warmup])


def triangle(total: int, peak: int, start: float = 0.2, end: float = 0.07
             ) -> Callable[[int], float]:
    """airbench's triangular schedule (Jordan 2024): the LR factor rises linearly from
    ``start`` to 1 over the first ``peak`` steps, then falls linearly to ``end`` at
    ``total``."""
    peak = max(1, min(peak, total - 1))

    def factor(step: int) -> float:
        if step < peak:
            return start + (1.0 - start) * step / peak
        return 1.0 + (end - 1.0) * min(step - peak, total - peak) / max(total - peak, 1)
    return factor


def amp_settings(cfg: TrainConfig, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """``(autocast dtype or None, use GradScaler)`` for ``cfg.amp`` on ``device``."""
    mode = cfg.amp
    if mode == "auto":
        if device.type != "cuda":
            return None, False
        mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if mode == "off":
        return None, False
    if mode == "fp16":
        return torch.float16, device.type == "cuda"
    return torch.bfloat16, False


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[Any]:
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op without AMP."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
