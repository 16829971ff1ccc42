"""Selective-prediction and OOD metrics: hand-computed values, torch-uncertainty 0.13 and
torchmetrics on the same inputs (to 1e-4), and the properties that define them."""

from __future__ import annotations

import math

import pytest
import torch

from droplab.errors import InvalidValue
from droplab.uncertainty import (
    abstain_threshold,
    adaptive_calibration_error,
    aurc,
    fpr_at_tpr,
    ood_aupr,
    risk_coverage,
)
from peers import torch_uncertainty


def _probs(n: int, k: int, seed: int, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g) * scale
    probs = torch.softmax(logits, 1)
    # labels drawn from a softer distribution: an overconfident model that errs sometimes
    labels = torch.multinomial(torch.softmax(logits / 1.5, 1), 1, generator=g).squeeze(1)
    return probs, labels


# ----------------------------------------------------------------------------- AURC
def test_aurc_hand_computed() -> None:
    # torch-uncertainty's docstring example: confidences .7 .6 .8, only the .6 one wrong;
    # risks at coverage 1/3, 2/3, 1 are 0, 0, 1/3 → trapezoid 1/18, / (1 − 1/3) = 1/12
    probs = torch.tensor([[0.7, 0.3], [0.6, 0.4], [0.8, 0.2]])
    labels = torch.tensor([0, 1, 0])
    assert aurc(probs, labels) == pytest.approx(1 / 12, abs=1e-12)
    cov, risk = risk_coverage(probs, labels)
    assert cov.tolist() == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert risk.tolist() == pytest.approx([0.0, 0.0, 1 / 3])


def test_aurc_matches_torch_uncertainty() -> None:
    tu, _ = torch_uncertainty()
    for seed in range(3):
        probs, labels = _probs(700, 10, seed)
        ref = tu.AURC()
        ref.update(probs, labels)
        assert aurc(probs, labels) == pytest.approx(float(ref.compute()), abs=1e-4)


def test_aurc_oracle_and_full_coverage() -> None:
    probs, labels = _probs(400, 5, 3)
    wrong = (probs.argmax(1) != labels)
    e, n = int(wrong.sum()), labels.numel()
    # full coverage is the plain error rate
    assert float(risk_coverage(probs, labels)[1][-1]) == pytest.approx(e / n)
    # an oracle score (uncertainty = error) puts all errors last: risk_k = max(0, k−(n−e))/k
    oracle = [max(0, k - (n - e)) / k for k in range(1, n + 1)]
    area = sum((oracle[i] + oracle[i + 1]) / 2 / n for i in range(n - 1)) / (1 - 1 / n)
    assert aurc(probs, labels, uncertainty=wrong.double()) == pytest.approx(area, abs=1e-12)
    # the anti-oracle is the worst ordering, max probability lies in between
    worst = aurc(probs, labels, uncertainty=-wrong.double())
    assert area < aurc(probs, labels) < worst


def test_aurc_of_an_uninformative_score_is_the_error_rate() -> None:
    # a score independent of the errors: E[risk_k] = error rate for every k; averaged over
    # 200 random orderings the AURC is within 4σ of it (σ of one AURC ≈ sd of risk_k's area)
    probs, labels = _probs(300, 4, 5)
    rate = float((probs.argmax(1) != labels).double().mean())
    g = torch.Generator().manual_seed(0)
    values = torch.tensor([aurc(probs, labels, uncertainty=torch.rand(300, generator=g))
                           for _ in range(200)])
    sigma = float(values.std()) / math.sqrt(len(values))
    assert abs(float(values.mean()) - rate) < 4 * sigma + 1e-3


# ----------------------------------------------------------------------------- adaptive ECE
def test_adaptive_ece_hand_computed() -> None:
    # confidences .9 .8 (right, wrong) and .6 .55 (right, right), two equal-count bins:
    # low bin conf .575 acc 1 → .425; high bin conf .85 acc .5 → .35; ACE = (.425 + .35) / 2
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.45, 0.55]])
    labels = torch.tensor([0, 0, 0, 1])
    assert adaptive_calibration_error(probs, labels, n_bins=2) == pytest.approx(0.3875)


@pytest.mark.parametrize("n_bins", [10, 15])
def test_adaptive_ece_matches_torch_uncertainty(n_bins: int) -> None:
    tu, _ = torch_uncertainty()
    for seed in range(3):
        probs, labels = _probs(1003, 10, seed)  # 1003: bins of unequal size
        ref = tu.AdaptiveCalibrationError(task="multiclass", num_classes=10, num_bins=n_bins)
        ref.update(probs, labels)
        got = adaptive_calibration_error(probs, labels, n_bins=n_bins)
        assert got == pytest.approx(float(ref.compute()), abs=1e-4)


def test_adaptive_ece_of_calibrated_samples_is_small() -> None:
    # labels drawn from the predicted probabilities: each bin's |acc − conf| is noise with
    # σ ≤ sqrt(.25 / (N/B)); the weighted sum stays below 4σ
    g = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(20000, 4, generator=g) * 2, 1)
    labels = torch.multinomial(probs, 1, generator=g).squeeze(1)
    sigma = math.sqrt(0.25 / (20000 / 15))
    assert adaptive_calibration_error(probs, labels) < 4 * sigma
    # an overconfident copy (probabilities sharpened) is clearly miscalibrated
    sharp = torch.softmax(torch.log(probs) * 3, 1)
    assert adaptive_calibration_error(sharp, labels) > 10 * sigma


def test_adaptive_ece_more_bins_than_images() -> None:
    probs = torch.tensor([[0.9, 0.1], [0.3, 0.7]])
    labels = torch.tensor([0, 0])
    # every image its own bin: (|1 − .9| + |0 − .7|) / 2
    assert adaptive_calibration_error(probs, labels, n_bins=15) == pytest.approx(0.4)


# ----------------------------------------------------------------------------- OOD
def test_fpr95_hand_computed_and_ties() -> None:
    # torch-uncertainty's docstring: scores .9 .8 .7 .6 .4 .2 .1 with OOD at .9 .7 .2
    s_out = torch.tensor([0.9, 0.7, 0.2])
    s_in = torch.tensor([0.8, 0.6, 0.4, 0.1])
    assert fpr_at_tpr(s_in, s_out) == pytest.approx(0.75)
    # a tie group is flagged whole: all four at one score → FPR 1 at any recall
    assert fpr_at_tpr(torch.zeros(4), torch.zeros(3)) == 1.0
    # perfect separation
    assert fpr_at_tpr(torch.zeros(10), torch.ones(10)) == 0.0


def test_fpr95_matches_torch_uncertainty() -> None:
    tu, _ = torch_uncertainty()
    g = torch.Generator().manual_seed(4)
    for rounded in (False, True):
        s_in = torch.randn(900, generator=g)
        s_out = torch.randn(400, generator=g) + 1.5
        if rounded:  # many ties
            s_in, s_out = s_in.round(decimals=1), s_out.round(decimals=1)
        ref = tu.FPR95(pos_label=1)
        ref.update(torch.cat([s_in, s_out]),
                   torch.cat([torch.zeros(900), torch.ones(400)]).long())
        assert fpr_at_tpr(s_in, s_out) == pytest.approx(float(ref.compute()), abs=1e-4)


def test_aupr_matches_torchmetrics() -> None:
    from torchmetrics.functional.classification import binary_average_precision

    g = torch.Generator().manual_seed(2)
    s_in, s_out = torch.randn(500, generator=g), torch.randn(200, generator=g) + 1.0
    target = torch.cat([torch.zeros(500), torch.ones(200)]).long()
    scores = torch.cat([s_in, s_out])
    assert ood_aupr(s_in, s_out) == pytest.approx(
        float(binary_average_precision(scores, target)), abs=1e-4)
    assert ood_aupr(s_in, s_out, positive="in") == pytest.approx(
        float(binary_average_precision(-scores, 1 - target)), abs=1e-4)
    assert ood_aupr(torch.zeros(5), torch.ones(5)) == 1.0
    # chance level: AUPR-Out ≈ the OOD share for uninformative scores (4σ of ~ .015)
    chance = ood_aupr(torch.rand(3000, generator=g), torch.rand(1000, generator=g))
    assert abs(chance - 0.25) < 0.06


# ----------------------------------------------------------------------------- abstaining
def test_abstain_threshold_is_the_largest_safe_coverage() -> None:
    g = torch.Generator().manual_seed(7)
    u = torch.rand(300, generator=g)
    correct = torch.rand(300, generator=g) > u * 0.6  # more errors at high uncertainty
    rule = abstain_threshold(u, correct, 0.1)
    answered = u <= rule.threshold
    assert float((~correct[answered]).double().mean()) <= 0.1
    assert rule.coverage == pytest.approx(float(answered.double().mean()))
    # brute force: no threshold answering more images keeps the error ≤ 0.1
    for t in u[u > rule.threshold]:
        a = u <= t
        assert float((~correct[a]).double().mean()) > 0.1
    assert rule.to_dict()["threshold"] == rule.threshold


def test_abstain_threshold_extremes_and_bad_values() -> None:
    u = torch.tensor([0.1, 0.2, 0.3])
    assert abstain_threshold(u, torch.tensor([True, True, True]), 0.05).coverage == 1.0
    none = abstain_threshold(u, torch.tensor([False, True, True]), 0.05)
    assert none.coverage == 0.0 and none.to_dict()["threshold"] is None
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(InvalidValue, match=r"\(0, 1\)"):
            abstain_threshold(u, torch.ones(3, dtype=torch.bool), bad)


def test_bad_inputs_are_one_line_errors() -> None:
    probs, labels = _probs(10, 3, 0)
    with pytest.raises(InvalidValue, match="one score per image"):
        aurc(probs, labels, uncertainty=torch.zeros(9))
    with pytest.raises(InvalidValue, match="at least 2"):
        aurc(probs[:1], labels[:1])
    with pytest.raises(InvalidValue, match="not probabilities"):
        adaptive_calibration_error(torch.randn(10, 3), labels)
    with pytest.raises(InvalidValue, match="NaN"):
        fpr_at_tpr(torch.tensor([float("nan")]), torch.ones(2))
    with pytest.raises(InvalidValue, match="empty"):
        ood_aupr(torch.zeros(0), torch.ones(2))
    with pytest.raises(InvalidValue, match="tpr"):
        fpr_at_tpr(torch.zeros(2), torch.ones(2), tpr=1.5)
