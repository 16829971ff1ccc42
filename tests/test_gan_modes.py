"""Mode counting (droplab.evaluate.gan_modes): Stacked MNIST per channel, 2-D mixtures."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from droplab.data import toy2d
from droplab.errors import InvalidValue
from droplab.evaluate import gan as G
from droplab.evaluate.gan_modes import StackedFeatures, mixture_scores, point_scores


class _IntensityDigits(nn.Module):
    """A 'digit classifier' for 1×4×4 images: the digit is round(mean·9) of the [0, 1]
    image; features = (mean, spread), logits peaked at that digit."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Identity()
        self.register_buffer("centres", torch.arange(10.0) / 9)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).mean(1)
        return torch.stack([m, x.flatten(1).std(1)], dim=1)

    def head_logits(self, f: torch.Tensor) -> torch.Tensor:
        return -((f[:, :1] - self.centres) ** 2) * 400


class _Net(_IntensityDigits):
    def __init__(self) -> None:
        super().__init__()
        self.head = _Head(self)


class _Head(nn.Module):
    def __init__(self, owner: _IntensityDigits) -> None:
        super().__init__()
        self.owner = [owner]

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.owner[0].head_logits(f)


def _stacked(digits: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, 4, 4) images whose channel c shows digit digits[:, c]."""
    return (digits.float() / 9 * 255).round().to(torch.uint8).view(-1, 3, 1, 1).expand(-1, 3, 4, 4)


def _features() -> StackedFeatures:
    return StackedFeatures(G.ClassifierFeatures(_Net(), (1, 4, 4), (0.0,), (1.0,),
                                                [str(i) for i in range(10)]))


def test_stacked_modes_are_the_channel_digits_and_the_logits_their_product() -> None:
    fx = _features()
    digits = torch.randint(0, 10, (300, 3), generator=torch.Generator().manual_seed(0))
    imgs = _stacked(digits)
    expect = digits[:, 0] * 100 + digits[:, 1] * 10 + digits[:, 2]
    assert torch.equal(fx.modes(imgs), expect)
    feats, logp = fx(imgs)
    assert feats.shape == (300, 6) and logp.shape == (300, 1000)
    assert torch.equal(logp.argmax(1), expect)
    # exp(log p) sums to 1 over the 1,000 modes: the product of three softmaxes
    assert torch.allclose(logp.double().exp().sum(1), torch.ones(300, dtype=torch.float64), atol=1e-5)
    one = G.ClassifierFeatures(_Net(), (1, 4, 4), (0.0,), (1.0,), [str(i) for i in range(10)])
    for c in range(3):  # features of channel c are the 1-channel extractor's on that channel
        assert torch.allclose(feats[:, 2 * c : 2 * c + 2], one(imgs[:, c : c + 1])[0])
    with pytest.raises(InvalidValue, match="3 channels"):
        fx(imgs[:, :1])


def test_stacked_scores_count_modes_from_one_sample() -> None:
    fx = _features()
    gen = torch.Generator().manual_seed(1)
    real = _stacked(torch.randint(0, 10, (400, 3), generator=gen))
    # a generator that only ever draws digits 0–4 in the first channel: ≤ 500 modes
    half = torch.randint(0, 10, (3000, 3), generator=gen)
    half[:, 0] %= 5
    fake = _stacked(half).float() / 127.5 - 1
    s = G.gan_scores(real, fake, fx, mode_min_count=1)
    assert s["num_classes"] == 1000 and sum(s["class_histogram"]) == 3000
    assert s["modes_covered"] == len(set((half[:, 0] * 100 + half[:, 1] * 10 + half[:, 2]).tolist()))
    assert 480 <= s["modes_covered"] <= 500
    # half the modes, evenly: KL ≈ ln 2 (plus the finite-sample excess ≈ (K−1)/2N ≈ 0.08)
    assert s["kl_uniform"] == pytest.approx(math.log(2) + 0.08, abs=0.06)
    assert {"density", "coverage", "fid", "precision", "recall"} <= set(s)


def test_stacked_features_need_a_digit_classifier() -> None:
    three = G.ClassifierFeatures(_Net(), (3, 4, 4), (0.0,) * 3, (1.0,) * 3, [str(i) for i in range(10)])
    with pytest.raises(InvalidValue, match="1-channel") as e:
        StackedFeatures(three)
    assert "\n" not in str(e.value)


def test_mixture_scores_on_hand_made_points() -> None:
    ring = toy2d.ring()
    at_means = ring.means.repeat(10, 1)
    s = mixture_scores(at_means, ring)
    assert s["modes_hit"] == 8 and s["high_quality"] == 1.0
    assert s["kl_uniform"] == pytest.approx(0.0, abs=1e-12) and s["mode_histogram"] == [10] * 8
    # 4σ off every mean: no sample is of high quality, no mode is hit
    off = ring.means * (1 + 4 * ring.std)
    s = mixture_scores(off, ring)
    assert s["modes_hit"] == 0 and s["high_quality"] == 0.0 and s["kl_uniform"] is None
    # everything on one mode (collapse): 1 mode, KL = ln 8; half junk halves the quality
    one = torch.cat([ring.means[:1].repeat(50, 1), torch.zeros(50, 2)])
    s = mixture_scores(one, ring)
    assert s["modes_hit"] == 1 and s["high_quality"] == 0.5
    assert s["kl_uniform"] == pytest.approx(math.log(8))
    with pytest.raises(InvalidValue):
        mixture_scores(torch.zeros(3, 3), ring)


def test_real_mixture_samples_are_high_quality_at_the_chi_square_rate() -> None:
    # ‖x − μ‖²/σ² ~ χ²(2) for a real sample: P(within 3σ) = 1 − e^{−4.5} = 0.98889. With
    # 8,000 points the share's standard error is 0.0012: 5 SE = 0.006.
    d = toy2d.toy_data("ring", per_mode=1000, test_per_mode=500, seed=2)
    s = point_scores(d.test, d.train, d.mixture)
    assert s["high_quality"] == pytest.approx(1 - math.exp(-4.5), abs=0.006)
    assert s["modes_hit"] == 8 and s["kl_uniform"] < 0.002
    assert s["fid"] < 1e-3 and s["coverage"] > 0.9
    collapsed = d.train[d.train_labels < 2]
    c = point_scores(d.test, collapsed, d.mixture)
    assert c["modes_hit"] == 2 and c["coverage"] < 0.3 and c["fid"] > 0.5
