"""Uncertainty and calibration metrics: hand-computed values and inputs they refuse."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from droplab.errors import InvalidValue
from droplab.uncertainty import (
    brier_score,
    check_probs,
    expected_calibration_error,
    expected_entropy,
    mutual_information,
    negative_log_likelihood,
    ood_auroc,
    predictive_entropy,
    variation_ratio,
)


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


def _calibration_set(n: int = 2000, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    probs = F.softmax(torch.randn(n, k, generator=g) * 2, dim=1)
    labels = torch.multinomial(probs, 1, generator=g).squeeze(1)  # calibrated by construction
    return probs, labels


def test_rows_within_1e6_of_the_simplex_are_repaired_not_softmaxed() -> None:
    # the case: one entry 1.0000001 used to make torchmetrics softmax every row
    probs, labels = _calibration_set()
    ref = expected_calibration_error(probs, labels)
    nudged = probs.double().clone()
    nudged[0] = 0.0
    nudged[0, 0] = 1.0000001
    value = expected_calibration_error(nudged, labels)
    # one of 2000 rows changed: ECE moves by at most 1/2000
    assert abs(value - ref) <= 1 / 2000 + 1e-9
    assert ref < 0.05  # labels drawn from the probabilities: calibrated up to noise
    repaired = check_probs(nudged)
    assert repaired[0, 0] == 1.0 and torch.allclose(repaired.sum(1), torch.ones(2000,
                                                                                dtype=torch.float64))
    # float32 softmax rows of many classes are off by ~K·1e-7 and must pass unchanged
    wide = F.softmax(torch.randn(50, 1000, generator=torch.Generator().manual_seed(1)), 1)
    assert torch.allclose(check_probs(wide), wide.double(), atol=1e-6)


@pytest.mark.parametrize("bad, match", [
    (torch.tensor([[2.0, -1.0], [0.5, 0.5]]), "not probabilities"),  # logits
    (torch.tensor([[0.6, 0.6], [0.5, 0.5]]), "not probabilities"),  # rows sum to 1.2
    (torch.tensor([[float("nan"), 0.5], [0.5, 0.5]]), "NaN"),
    (torch.ones(2, 1), "at least 2"),  # one class
    (torch.empty(0, 3), "empty"),
], ids=["logits", "sum", "nan", "one-class", "empty"])
def test_bad_probabilities_are_one_line_errors(bad: torch.Tensor, match: str) -> None:
    labels = torch.zeros(bad.shape[0], dtype=torch.long)
    for metric in (expected_calibration_error, negative_log_likelihood, brier_score):
        with pytest.raises(InvalidValue, match=match) as info:
            metric(bad, labels)
        assert "\n" not in str(info.value)
    for metric in (predictive_entropy, expected_entropy, mutual_information, variation_ratio):
        with pytest.raises(InvalidValue, match=match):
            metric(bad)


def test_labels_out_of_range_and_nan_scores_are_refused() -> None:
    with pytest.raises(InvalidValue, match="class indices"):
        negative_log_likelihood(PROBS, torch.tensor([0, 1, 2, 1]))
    with pytest.raises(InvalidValue, match="NaN"):
        ood_auroc(torch.tensor([0.1, float("nan")]), torch.tensor([0.5]))
