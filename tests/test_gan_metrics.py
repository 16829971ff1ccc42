"""GAN scores (droplab.evaluate.gan) on hand-made features with known answers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from droplab.errors import InvalidValue, WeightsUnavailable
from droplab.evaluate import gan as G


def _gauss(n: int, d: int, seed: int, mean: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) + mean


def test_fid_identical_sets_is_zero() -> None:
    x = _gauss(300, 8, 0)
    assert abs(G.frechet_distance(x, x)) < 1e-6


def test_fid_matches_closed_form_for_shifted_and_scaled_sets() -> None:
    # fake = s·real + δ has sample mean s·μ + δ and covariance s²Σ exactly, so
    # FID = ‖(s − 1)μ + δ‖² + tr(Σ + s²Σ − 2sΣ) = ‖(s − 1)μ + δ‖² + (1 − s)² tr Σ.
    # Only float64 eigen-decomposition error remains: relative tolerance 1e-6.
    real = _gauss(400, 6, 1)
    delta = torch.linspace(-1, 1, 6, dtype=torch.float64)
    for s in (1.0, 0.5, 2.0):
        fake = s * real + delta
        mu, cov = real.mean(0), torch.cov(real.T)
        expected = float(((s - 1) * mu + delta).square().sum() + (1 - s) ** 2 * cov.trace())
        assert G.frechet_distance(real, fake) == pytest.approx(expected, rel=1e-6)


def test_fid_of_independent_gaussian_samples_estimates_the_population_value() -> None:
    # N(0, I) vs N(μ, I) in d = 4: population FID = ‖μ‖² = 4·0.25 = 1. With n = 20,000 per
    # set the estimator's bias and spread are O(d/n) ≈ 2e-4 (mean term) and O(d²/n) (the
    # covariance term), so 0.05 is a loose but failing-when-wrong tolerance.
    real, fake = _gauss(20_000, 4, 2), _gauss(20_000, 4, 3, mean=0.5)
    assert G.frechet_distance(real, fake) == pytest.approx(1.0, abs=0.05)


def test_kid_is_unbiased_near_zero_for_the_same_distribution() -> None:
    # The KID estimator is an unbiased MMD² estimate, so over independent draws from one
    # distribution its average is 0 within ~3 standard errors; a 0.5-σ shift in every
    # feature is far above that.
    means = [G.kernel_inception_distance(_gauss(200, 8, 10 + i), _gauss(200, 8, 50 + i),
                                         subsets=20, seed=i)[0] for i in range(12)]
    avg = sum(means) / len(means)
    sd = math.sqrt(sum((m - avg) ** 2 for m in means) / (len(means) - 1))
    assert abs(avg) < 3 * sd / math.sqrt(len(means)) + 1e-12
    shifted, std = G.kernel_inception_distance(_gauss(200, 8, 7), _gauss(200, 8, 8, mean=0.5))
    assert shifted > 10 * (abs(avg) + 3 * sd) and std > 0


def test_kid_is_reproducible_and_leaves_global_rng_alone() -> None:
    a, b = _gauss(100, 4, 0), _gauss(100, 4, 1)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    assert G.kernel_inception_distance(a, b, seed=3) == G.kernel_inception_distance(a, b, seed=3)
    assert torch.equal(before, torch.get_rng_state())


def test_inception_score_extremes() -> None:
    # Confident predictions spread evenly over K classes: p(y) uniform, KL = ln K, IS = K
    # (one split: random splits would make each split's marginal only nearly uniform).
    k = 10
    logits = torch.eye(k).repeat(30, 1) * 60.0
    mean, std = G.inception_score(logits, splits=1)
    assert mean == pytest.approx(k, rel=1e-6) and std == 0.0
    # With splits the marginals are estimated per split, so IS ≤ K but stays close.
    split_mean, split_std = G.inception_score(logits, splits=3)
    assert 8.5 < split_mean <= k + 1e-9 and split_std > 0
    # Every sample the same class: p(y|x) = p(y), IS = 1.
    same = torch.zeros(90, k)
    same[:, 2] = 60.0
    assert G.inception_score(same)[0] == pytest.approx(1.0, abs=1e-9)


def test_precision_recall_cases() -> None:
    real = _gauss(400, 2, 0)
    assert G.precision_recall(real, real) == (1.0, 1.0)
    far = _gauss(400, 2, 1, mean=100.0)
    assert G.precision_recall(real, far) == (0.0, 0.0)
    # Real data: two far-apart clusters; fakes only reproduce one of them. Every fake lies
    # on the real manifold (precision ≈ 1) but only the covered half of the reals lies on
    # the fake manifold (recall ≈ 0.5).
    a, b = _gauss(300, 2, 2), _gauss(300, 2, 3, mean=50.0)
    real2 = torch.cat([a, b])
    fake = _gauss(300, 2, 4)
    precision, recall = G.precision_recall(real2, fake, k=3)
    assert precision > 0.95
    assert 0.45 < recall < 0.52


def test_mode_coverage_on_hand_made_histograms() -> None:
    uniform = G.mode_coverage(torch.arange(10).repeat(20), 10)
    assert uniform["modes_covered"] == 10 and uniform["kl_uniform"] == pytest.approx(0.0, abs=1e-12)
    one = G.mode_coverage(torch.full((50,), 3), 10)
    assert one["modes_covered"] == 1 and one["kl_uniform"] == pytest.approx(math.log(10))
    # Two classes half each: KL = ln(K / 2).
    two = G.mode_coverage(torch.tensor([500.0, 500.0] + [0.0] * 8), 10)
    assert two["modes_covered"] == 2 and two["kl_uniform"] == pytest.approx(math.log(5))
    # The 1 % threshold: 10 of 1000 is covered, 9 of 1000 is not.
    counts = torch.tensor([10.0, 9.0, 981.0])
    res = G.mode_coverage(counts, 3)
    assert res["modes_covered"] == 2 and res["class_histogram"] == [10, 9, 981]
    with pytest.raises(InvalidValue):
        G.mode_coverage(torch.tensor([1.0, 2.0]), 3)


def test_feature_sets_are_validated() -> None:
    with pytest.raises(InvalidValue, match="same D"):
        G.frechet_distance(_gauss(10, 3, 0), _gauss(10, 4, 0))
    with pytest.raises(InvalidValue, match="at least 2"):
        G.kernel_inception_distance(_gauss(1, 3, 0), _gauss(10, 3, 0))


class _TinyClassifier(nn.Module):
    """forward_features = flatten·W; head = Linear (the droplab classifier interface)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(3 * 8 * 8, 5)
        self.head = nn.Linear(5, 4)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.flatten(1))


def test_classifier_features_treat_real_and_generated_images_alike() -> None:
    # A uint8 image and the same image as generator output in [−1, 1] must give identical
    # features: both are put on the 8-bit grid, expanded to 3 channels and resized the same.
    fx = G.ClassifierFeatures(_TinyClassifier(), (3, 8, 8), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25),
                              ["a", "b", "c", "d"])
    u8 = torch.randint(0, 256, (6, 1, 16, 16), dtype=torch.uint8)
    as_fake = u8.float() / 127.5 - 1.0 + 1e-4  # tiny perturbation, removed by quantisation
    f1, l1 = fx(u8)
    f2, l2 = fx(as_fake, batch_size=4)
    assert f1.shape == (6, 5) and l1.shape == (6, 4)
    assert torch.allclose(f1, f2, atol=1e-5) and torch.allclose(l1, l2, atol=1e-5)
    scores = G.gan_scores(torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8),
                          torch.rand(40, 1, 8, 8) * 2 - 1, fx)
    assert {"fid", "kid_mean", "kid_std", "inception_score", "precision", "recall",
            "modes_covered", "kl_uniform"} <= set(scores)
    assert scores["num_classes"] == 4 and sum(scores["class_histogram"]) == 40


def test_inception_without_torch_fidelity_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(G.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(WeightsUnavailable) as info:
        G.InceptionFeatures()
    msg = str(info.value)
    assert "\n" not in msg and "pip install torch-fidelity" in msg and G.INCEPTION_WEIGHTS in msg


def test_inception_weights_that_cannot_be_fetched_are_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torchmetrics.image.fid as tm_fid

    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("network unreachable")

    monkeypatch.setattr(G.importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(tm_fid, "NoTrainInceptionV3", offline)
    with pytest.raises(WeightsUnavailable, match="OSError") as info:
        G.InceptionFeatures()
    assert "\n" not in str(info.value)


# -- density and coverage (Naeem et al. 2020) -----------------------------------------------


@pytest.mark.parametrize("k", [3, 5])
def test_density_coverage_and_precision_recall_match_the_prdc_package(k: int) -> None:
    # The authors' package (numpy + scikit-learn distances, strict inequalities). Random
    # continuous features have no ties on a ball's boundary, so both implementations count
    # the same pairs; 1e-6 leaves room only for float64 rounding.
    prdc = pytest.importorskip("prdc")
    real, fake = _gauss(600, 12, 20), _gauss(500, 12, 21, mean=0.3) * 1.2
    ref = prdc.compute_prdc(real_features=real.numpy(), fake_features=fake.numpy(), nearest_k=k)
    density, coverage = G.density_coverage(real, fake, k=k)
    precision, recall = G.precision_recall(real, fake, k=k)
    assert density == pytest.approx(float(ref["density"]), abs=1e-6)
    assert coverage == pytest.approx(float(ref["coverage"]), abs=1e-6)
    assert precision == pytest.approx(float(ref["precision"]), abs=1e-6)
    assert recall == pytest.approx(float(ref["recall"]), abs=1e-6)
    assert 0 < coverage < 1 and density > 0  # the case is not degenerate


def test_density_coverage_of_identical_distributions() -> None:
    # Naeem et al. 2020, §4: for real and fake from one distribution E[density] = 1 and,
    # with N = M, E[coverage] = 1 − ∏_{i=1..k} (N − i)/(2N − i) ≈ 1 − 2^−k = 0.969 (k = 5).
    # With 2,000 + 2,000 points in 6-d the sampling sd of either is ≈ 0.01–0.02.
    n, k = 2000, 5
    real, fake = _gauss(n, 6, 30), _gauss(n, 6, 31)
    density, coverage = G.density_coverage(real, fake, k=k)
    expected = 1 - math.prod((n - i) / (2 * n - i) for i in range(1, k + 1))
    assert density == pytest.approx(1.0, abs=0.06)
    assert coverage == pytest.approx(expected, abs=0.03)
    # fakes collapsed onto 5 real points: each lies in its own ball and, on average, in k
    # others, so coverage ≈ 5·(k + 1)/N = 0.015 while density stays ≈ (k + 1)/k
    collapsed = real[:5].repeat(400, 1)
    d2, c2 = G.density_coverage(real, collapsed, k=k)
    assert c2 < 0.05 and d2 > 0.5
    # far-away fakes: both 0
    assert G.density_coverage(real, fake + 100.0, k=k) == (0.0, 0.0)
    with pytest.raises(InvalidValue, match="more than 5"):
        G.density_coverage(real[:5], fake, k=5)


def test_mode_coverage_with_a_minimum_count() -> None:
    # Stacked MNIST counts a mode with a single sample (VEEGAN, PacGAN), not a 1 % share.
    counts = torch.tensor([1.0, 0.0, 5.0] + [2.0] * 997)
    res = G.mode_coverage(counts, 1000, min_count=1)
    assert res["modes_covered"] == 999
    assert G.mode_coverage(counts, 1000)["modes_covered"] == 0  # no mode holds 1 % of 2000
    assert G.mode_coverage(counts, 1000, min_count=3)["modes_covered"] == 1
