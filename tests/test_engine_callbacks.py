"""Engine callbacks of the fast recipe: Lookahead (EMA pull-back) against a hand-written
reference, its checkpointed state across a mid-epoch resume, and its options."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from droplab.engine import Lookahead, TrainConfig, fit
from droplab.errors import InvalidValue
from droplab.runs import RunDir


class Batches:
    """Fixed batches of three Gaussian blobs (the Loader protocol: len and set_epoch)."""

    def __init__(self, n: int = 96, bs: int = 16, stop_at: tuple[int, int] | None = None) -> None:
        g = torch.Generator().manual_seed(1)
        self.y = torch.arange(n) % 3
        self.x = torch.eye(3, 8)[self.y] * 3.0 + torch.randn(n, 8, generator=g)
        self.bs, self.epoch, self.stop_at = bs, 0, stop_at

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.bs)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(len(self)):
            if self.stop_at == (self.epoch, i):
                raise KeyboardInterrupt
            yield self.x[i * self.bs:(i + 1) * self.bs], self.y[i * self.bs:(i + 1) * self.bs]


def net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


CFG = dict(epochs=2, lr=0.1, momentum=0.0, weight_decay=0.0, lr_schedule="constant",
           lookahead=3, lookahead_decay=0.9)


def reference(model: nn.Module, data: Batches, every: int, beta: float, epochs: int) -> None:
    """The scheme written out: plain SGD; every k steps θ̄ ← lerp(θ̄, θ, 1 - β^k (t/T)³),
    θ ← θ̄ (BatchNorm running statistics included); at the end θ ← θ̄."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def floats() -> dict[str, torch.Tensor]:
        return {k: v for k, v in model.state_dict().items() if v.is_floating_point()}

    avg = {k: v.clone() for k, v in floats().items()}
    total, t = epochs * len(data), 0
    model.train()
    for epoch in range(epochs):
        data.set_epoch(epoch)
        for x, y in data:
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            t += 1
            if t % every == 0:
                d = beta**every * (t / total) ** 3
                with torch.no_grad():
                    for k, v in floats().items():
                        avg[k].lerp_(v, 1 - d)
                        v.copy_(avg[k])
    with torch.no_grad():
        for k, v in floats().items():
            v.copy_(avg[k])


def test_lookahead_matches_the_scheme_written_out() -> None:
    a, b = net(), net()
    fit(a, Batches(), None, TrainConfig(**CFG), device="cpu")
    reference(b, Batches(), every=3, beta=0.9, epochs=2)
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        assert torch.allclose(sa[k].double(), sb[k].double(), atol=1e-6), k
    # it did something: without lookahead the weights differ
    c = net()
    fit(c, Batches(), None, TrainConfig(**{**CFG, "lookahead": 0}), device="cpu")
    assert not torch.allclose(c[0].weight, a[0].weight, atol=1e-4)


def test_lookahead_decay_schedule() -> None:
    la = Lookahead(every=5, decay=0.95)
    assert la.decay_at(0, 100) == 0.0
    assert la.decay_at(100, 100) == pytest.approx(0.95**5)
    assert la.decay_at(50, 100) == pytest.approx(0.95**5 / 8)  # cubic: (1/2)³
    assert la.decay_at(150, 100) == pytest.approx(0.95**5)  # clamped at the end
    for bad in (dict(every=0), dict(every=2.5), dict(decay=1.0), dict(decay=0.0)):
        with pytest.raises(InvalidValue) as err:
            Lookahead(**bad)
        assert "\n" not in str(err.value)
    with pytest.raises(InvalidValue, match="--lookahead-decay"):
        TrainConfig(lookahead=5, lookahead_decay=1.5)


def test_lookahead_state_is_checkpointed_and_resumed_exactly(tmp_path: Path) -> None:
    cfg = TrainConfig(**{**CFG, "epochs": 3, "checkpoint_every": 4})
    ref = net()
    fit(ref, Batches(), None, cfg, device="cpu", run=RunDir.create(tmp_path / "ref", "t"))

    run = RunDir.create(tmp_path / "cut", "t")
    with pytest.raises(KeyboardInterrupt):  # 6 batches/epoch: interrupted at step 10
        fit(net(), Batches(stop_at=(1, 4)), None, cfg, device="cpu", run=run)
    ck = run.load_checkpoint()
    assert ck["step"] == 8
    average = ck["callbacks"]["lookahead"]["average"]
    assert set(average) == {k for k, v in ref.state_dict().items() if v.is_floating_point()}
    assert "1.running_mean" in average  # BatchNorm statistics are averaged too
    resumed = net(seed=5)
    fit(resumed, Batches(), None, cfg, device="cpu", run=run, resume=True)
    for k, v in ref.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
