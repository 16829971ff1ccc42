"""The triangular LR schedule (airbench) as the loop applies it, step by step."""

from __future__ import annotations

import pytest
import torch

from droplab.engine import TrainConfig, make_lr_scheduler
from droplab.engine.optim import triangle


def lrs(cfg: TrainConfig, steps_per_epoch: int) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.resolved_lr)
    sched = make_lr_scheduler(opt, cfg, steps_per_epoch)
    out = []
    for _ in range(cfg.epochs * steps_per_epoch):
        out.append(opt.param_groups[0]["lr"])  # the rate this step uses
        opt.step()
        sched.step()
    return out


def test_triangle_rises_then_falls_linearly() -> None:
    cfg = TrainConfig(epochs=4, lr=2.0, lr_schedule="triangle")
    seen = lrs(cfg, 25)  # T = 100 steps, peak at 23
    assert seen[0] == pytest.approx(0.4)  # 0.2 × lr
    assert seen[23] == pytest.approx(2.0)
    assert max(seen) == pytest.approx(2.0)
    # linear pieces: constant differences on each side of the peak
    up = torch.tensor(seen[:24]).diff()
    down = torch.tensor(seen[23:]).diff()
    assert torch.allclose(up, torch.full_like(up, 1.6 / 23), atol=1e-6)
    assert torch.allclose(down, torch.full_like(down, -2.0 * 0.93 / 77), atol=1e-6)
    assert seen[-1] == pytest.approx(2.0 * (1 - 0.93 * 76 / 77))  # step 99 of 100
    assert triangle(100, 23)(100) == pytest.approx(0.07)


def test_triangle_peak_follows_warmup_epochs() -> None:
    seen = lrs(TrainConfig(epochs=4, lr=1.0, lr_schedule="triangle", warmup_epochs=2), 10)
    assert seen.index(max(seen)) == 20
