"""MC-dropout prediction (modes, prefix caching, chunking) and uncertainty metrics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from droplab import layers
from droplab.errors import InvalidValue
from droplab.surgery import add_dropconnect, add_dropout
from droplab.uncertainty import (
    brier_score,
    expected_calibration_error,
    expected_entropy,
    mc_predict,
    mutual_information,
    negative_log_likelihood,
    ood_auroc,
    predictive_entropy,
    prefix_plan,
    variation_ratio,
)


def _net(drop: nn.Module | None = None) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        drop if drop is not None else nn.Dropout(0.5),
        nn.Linear(32, 4),
    )


def _with_stats(model: nn.Sequential) -> nn.Sequential:
    """Give BatchNorm running statistics far from any batch's own statistics."""
    bn = model[1]
    bn.running_mean.fill_(-1.0)  # negative: most activations survive the ReLU
    bn.running_var.fill_(4.0)
    return model


X = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(3))


def _gen(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_shapes_sum_to_one_and_passes_differ() -> None:
    model = _net().eval()
    probs = mc_predict(model, X, 12, reduce="none")
    assert probs.shape == (12, 6, 4)
    assert torch.allclose(probs.sum(-1), torch.ones(12, 6), atol=1e-6)
    # independent masks: no two passes are the same
    flat = probs.flatten(1)
    assert all(not torch.equal(flat[i], flat[j]) for i in range(12) for j in range(i))
    mean = mc_predict(model, X, 12)
    assert mean.shape == (6, 4)


def test_prefix_plan_splits_at_first_dropout() -> None:
    plan = prefix_plan(_net())
    assert plan is not None
    assert plan.first_stochastic == "5"
    assert (plan.n_prefix, plan.n_suffix) == (5, 2)  # conv,bn,relu,pool,flatten | drop,linear


@pytest.mark.parametrize(
    "drop",
    [nn.Dropout(0.5), layers.Dropout(0.5), layers.GaussianDropout(0.5), nn.AlphaDropout(0.3)],
    ids=["nn.Dropout", "Dropout", "GaussianDropout", "nn.AlphaDropout"],
)
def test_cached_and_uncached_are_identical_with_the_same_generator(drop: nn.Module) -> None:
    model = _with_stats(_net(drop)).eval()
    a = mc_predict(model, X, 10, reduce="none", generator=_gen())
    b = mc_predict(model, X, 10, reduce="none", generator=_gen(), cache_prefix=False)
    assert torch.equal(a, b)
    c = mc_predict(model, X, 10, reduce="none", generator=_gen(8))
    assert not torch.equal(a, c)


def test_cached_and_uncached_have_the_same_distribution_without_generator() -> None:
    model = _net().eval()
    T = 400
    a = mc_predict(model, X, T, reduce="none")
    b = mc_predict(model, X, T, reduce="none", cache_prefix=False)
    # two independent means of T draws: their difference has std sqrt((s_a² + s_b²) / T);
    # 6 standard errors (plus float slack) bound all 24 entries with overwhelming probability
    se = ((a.var(0) + b.var(0)) / T).sqrt()
    assert ((a.mean(0) - b.mean(0)).abs() <= 6 * se + 1e-6).all()


def test_chunked_replicas_match_the_loop_in_distribution() -> None:
    model = _net().eval()
    T = 300
    loop = mc_predict(model, X, T, reduce="none", chunk_size=1)
    chunked = mc_predict(model, X, T, reduce="none", chunk_size=7)
    auto = mc_predict(model, X, T, reduce="none")
    for other in (chunked, auto):
        assert other.shape == loop.shape
        se = ((loop.var(0) + other.var(0)) / T).sqrt()
        assert ((loop.mean(0) - other.mean(0)).abs() <= 6 * se + 1e-6).all()
    # uncached replicas of the whole input too
    full = mc_predict(model, X, 20, reduce="none", chunk_size=20, cache_prefix=False)
    flat = full.flatten(1)
    assert not torch.equal(flat[0], flat[19])


def test_batchnorm_stays_in_eval_and_modes_are_restored() -> None:
    model = _with_stats(_net(nn.Dropout(0.0)))
    model.train()
    model[6].eval()  # a mixed pattern must come back exactly
    modes = [m.training for m in model.modules()]
    stats = model[1].running_mean.clone()
    probs = mc_predict(model, X, 3, reduce="none")
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(model[1].running_mean, stats)  # BN never ran in train mode
    model.eval()
    with torch.no_grad():
        ref = F.softmax(model(X), dim=1)  # p = 0: every pass is the eval-mode output
    assert torch.allclose(probs, ref.expand(3, -1, -1), atol=1e-6)


def test_no_dropout_warns_and_gives_identical_passes() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 3)).eval()
    with pytest.warns(UserWarning, match="no dropout layer"):
        probs = mc_predict(model, X, 4, reduce="none")
    assert torch.equal(probs[0], probs[3])
    assert mutual_information(probs).abs().max() == 0.0


class _Dynamic(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(192, 3)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if x.sum() > 0:
            x = -x
        return self.fc(self.drop(x))


def test_untraceable_model_falls_back_to_full_passes() -> None:
    model = _Dynamic().eval()
    assert prefix_plan(model) is None
    a = mc_predict(model, X, 5, reduce="none", generator=_gen())
    b = mc_predict(model, X, 5, reduce="none", generator=_gen(), cache_prefix=False)
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])


class _Functional(nn.Module):
    """Dropout as a function call in forward, not as a module."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(144, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv(x)).flatten(1)
        return self.fc(F.dropout(h, 0.5, training=True))


def test_functional_dropout_is_found_and_cached() -> None:
    model = _Functional().eval()
    plan = prefix_plan(model)
    assert plan is not None and plan.first_stochastic == "dropout"
    a = mc_predict(model, X, 6, reduce="none", generator=_gen())
    b = mc_predict(model, X, 6, reduce="none", generator=_gen(), cache_prefix=False)
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])


def test_resnet18_dropout_head_runs_backbone_once() -> None:
    model = torchvision.models.resnet18(weights=None, num_classes=5)
    add_dropout(model, "head", p=0.5)
    model.eval()
    plan = prefix_plan(model)
    assert plan is not None and plan.first_stochastic == "fc.0"
    assert plan.n_suffix == 2 and plan.n_prefix > 50
    x = torch.randn(2, 3, 32, 32)
    a = mc_predict(model, x, 4, reduce="none", generator=_gen())
    b = mc_predict(model, x, 4, reduce="none", generator=_gen(), cache_prefix=False)
    assert torch.equal(a, b)
    # surgery after a call re-traces: DropConnect in the first conv makes it all stochastic
    add_dropconnect(model, 0.2, where="conv1")
    plan2 = prefix_plan(model)
    assert plan2 is not None and plan2.first_stochastic == "conv1"
    c = mc_predict(model, x, 3, reduce="none")
    assert not torch.equal(c[0], c[1])


def test_dropconnect_head_draws_fresh_masks_per_pass() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    add_dropconnect(model, 0.3, where="head")
    assert isinstance(model[3], layers.DropConnectLinear)
    a = mc_predict(model, X, 5, reduce="none", generator=_gen())
    b = mc_predict(model, X, 5, reduce="none", generator=_gen(), cache_prefix=False)
    assert torch.equal(a, b)
    assert not torch.equal(a[0], a[1])


def test_bad_arguments() -> None:
    model = _net()
    for kw in ({"reduce": "median"}, {"chunk_size": 0}):
        with pytest.raises(InvalidValue):
            mc_predict(model, X, 3, **kw)
    with pytest.raises(InvalidValue):
        mc_predict(model, X, 0)

    class TupleOut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.drop = nn.Dropout(0.5)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.drop(x), x

    with pytest.raises(InvalidValue, match="one logits tensor"):
        mc_predict(TupleOut(), X.flatten(1), 2)


# --------------------------------------------------------------------------- metrics
def test_entropy_terms_on_hand_computed_examples() -> None:
    K = 5
    uniform = torch.full((3, 2, K), 1.0 / K)
    assert torch.allclose(predictive_entropy(uniform), torch.full((2,), math.log(K)))
    assert torch.allclose(expected_entropy(uniform), torch.full((2,), math.log(K)))
    # identical passes: no epistemic uncertainty
    assert torch.allclose(mutual_information(uniform), torch.zeros(2), atol=1e-7)
    # two confident passes that disagree: H[mean] = log 2, E[H] = 0, MI = log 2
    disagree = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    assert predictive_entropy(disagree).item() == pytest.approx(math.log(2), abs=1e-6)
    assert expected_entropy(disagree).item() == pytest.approx(0.0, abs=1e-6)
    assert mutual_information(disagree).item() == pytest.approx(math.log(2), abs=1e-6)
    assert variation_ratio(disagree).item() == pytest.approx(0.5)
    # (N, K) input is treated as one pass
    p = torch.tensor([[0.25, 0.75]])
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert predictive_entropy(p).item() == pytest.approx(h, abs=1e-6)


def test_variation_ratio_counts_the_mode() -> None:
    # 4 passes, top classes 0, 0, 2, 0 -> mode frequency 3/4
    mc = torch.tensor([[[0.6, 0.3, 0.1]], [[0.5, 0.4, 0.1]], [[0.1, 0.2, 0.7]], [[0.9, 0.05, 0.05]]])
    assert variation_ratio(mc).item() == pytest.approx(0.25)


PROBS = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
LABELS = torch.tensor([0, 1, 1, 1])


def test_ece_nll_brier_by_hand() -> None:
    # confidences 0.9, 0.8, 0.7, 0.6 fall into four different 1/15-wide bins with
    # accuracies 1, 0, 1, 1: ECE = (0.1 + 0.8 + 0.3 + 0.4) / 4
    assert expected_calibration_error(PROBS, LABELS) == pytest.approx(0.4, abs=1e-6)
    nll = -(math.log(0.9) + math.log(0.2) + math.log(0.7) + math.log(0.6)) / 4
    assert negative_log_likelihood(PROBS, LABELS) == pytest.approx(nll, abs=1e-6)
    # Σ_k (p_k - y_k)²: 0.02, 1.28, 0.18, 0.32
    assert brier_score(PROBS, LABELS) == pytest.approx(0.45, abs=1e-6)
    perfect = F.one_hot(LABELS, 2).float()
    assert brier_score(perfect, LABELS) == 0.0
    assert negative_log_likelihood(perfect, LABELS) == pytest.approx(0.0, abs=1e-9)
    assert expected_calibration_error(perfect, LABELS) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(InvalidValue):
        brier_score(PROBS, LABELS[:3])


def test_ood_auroc_by_hand() -> None:
    # out-scores beat in-scores in 5 of the 6 pairs
    auroc = ood_auroc(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.25, 0.4]))
    assert auroc == pytest.approx(5 / 6)
    assert ood_auroc(torch.tensor([0.0, 0.1]), torch.tensor([0.5, 0.9])) == 1.0
    with pytest.raises(InvalidValue):
        ood_auroc(torch.tensor([]), torch.tensor([0.5]))
