"""Consistent MC pool scoring: the same T masks for every image whatever the batching,
still MC dropout in distribution, prefix-cached passes equal full passes, refusals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from droplab.errors import InvalidValue
from droplab.layers import DropConnectLinear
from droplab.uncertainty import mc_predict, pool_mc_probs


def _net(drop: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), drop,
                         nn.Linear(4 * 6 * 6, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 5))


def _images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("drop", [nn.Dropout(0.3), nn.AlphaDropout(0.2), nn.Identity()])
def test_same_masks_whatever_the_batching(drop: nn.Module) -> None:
    model, x = _net(drop), _images(23)
    whole = pool_mc_probs(model, [x], samples=6, seed=3)
    split = pool_mc_probs(model, list(x.split(5)), samples=6, seed=3)
    assert whole.consistent and split.consistent and whole.cached
    assert torch.allclose(whole.probs, split.probs, atol=1e-6)
    assert whole.probs.shape == (6, 23, 5)
    # another seed, other masks
    assert not torch.allclose(whole.probs, pool_mc_probs(model, [x], 6, seed=4).probs)


def test_one_network_sample_per_pass() -> None:
    # identical images get identical outputs in every pass (one ω_t for the whole pool);
    # plain MC dropout gives each row its own mask
    model = _net(nn.Dropout(0.5))
    x = _images(1).expand(6, -1, -1, -1).contiguous()
    probs = pool_mc_probs(model, [x], samples=8, seed=0).probs
    assert torch.allclose(probs, probs[:, :1].expand_as(probs))
    assert probs.std(0).max() > 1e-3  # but the passes differ
    plain = mc_predict(model, x, samples=8, reduce="none")
    assert plain.std(1).max() > 1e-3


def test_still_mc_dropout_in_distribution() -> None:
    # a linear model after dropout: E_mask[W (m ⊙ x) / (1−p)] = W x, so the mean logit over
    # T passes is within 4σ of the eval-mode logit (σ from the per-pass spread)
    torch.manual_seed(2)
    model = nn.Sequential(nn.Dropout(0.4), nn.Linear(30, 3))
    x = torch.randn(4, 30)
    t = 1500
    with torch.no_grad():
        eval_logits = model.eval()(x)
    probs = pool_mc_probs(model, [x], samples=t, seed=1).probs
    logits = probs.log()  # log-softmax: logits up to a per-row constant
    logits = logits - logits[..., :1]
    ref = eval_logits - eval_logits[:, :1]
    sigma = logits.std(0) / t**0.5
    assert torch.all((logits.mean(0) - ref).abs()[:, 1:] < 4 * sigma[:, 1:] + 1e-6)


def test_prefix_cache_changes_nothing_and_modes_are_restored() -> None:
    model, x = _net(nn.Dropout(0.3)), _images(9)
    model.train()
    cached = pool_mc_probs(model, [x], samples=5, seed=7)
    full = pool_mc_probs(model, [x], samples=5, seed=7, cache_prefix=False)
    assert cached.cached and not full.cached
    assert torch.allclose(cached.probs, full.probs, atol=1e-6)
    assert all(m.training for m in model.modules())
    assert all("forward" not in vars(m) for m in model.modules())


def test_dropconnect_weight_masks_are_shared_across_batches() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), DropConnectLinear(64, 12, p=0.3), nn.ReLU(), nn.Linear(12, 3))
    x = _images(10)
    a = pool_mc_probs(model, [x], samples=4, seed=1)
    b = pool_mc_probs(model, list(x.split(3)), samples=4, seed=1)
    assert a.consistent and torch.allclose(a.probs, b.probs, atol=1e-6)


class _Functional(nn.Module):
    """Dropout called functionally behind the module's own flag (timm-style heads)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.dropout(x.flatten(1), 0.5, training=self.training))


def test_functional_dropout_cannot_be_shared() -> None:
    model, x = _Functional(), _images(6)
    got = pool_mc_probs(model, [x], samples=3)
    assert not got.consistent and "forward" in got.why_not
    with pytest.raises(InvalidValue, match="BatchBALD needs the same dropout masks"):
        pool_mc_probs(model, [x], samples=3, require_consistent=True)


def test_refusals() -> None:
    plain = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    with pytest.raises(InvalidValue, match="--acquisition random"):
        pool_mc_probs(plain, [_images(3)])
    with pytest.raises(InvalidValue, match="empty"):
        pool_mc_probs(_net(nn.Dropout(0.2)), [])
    with pytest.raises(InvalidValue, match="positive"):
        pool_mc_probs(_net(nn.Dropout(0.2)), [_images(2)], samples=0)
