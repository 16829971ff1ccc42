"""Selective prediction and out-of-distribution metrics.

A classifier that may *abstain* answers only the images it is most confident about. These
metrics judge how well a confidence (or uncertainty) score orders the images:

* :func:`risk_coverage` – the risk–coverage curve: error rate among the ``k`` most
  confident images, for every ``k`` (Geifman & El-Yaniv, NeurIPS 2017);
* :func:`aurc` – its area (AURC), lower is better;
* :func:`adaptive_calibration_error` – ECE with equal-*count* bins (Nixon et al., CVPR-W
  2019), which is not dominated by the one or two crowded high-confidence bins;
* :func:`fpr_at_tpr` – false-positive rate on in-distribution images when 95 % of the
  out-of-distribution images are flagged (Hendrycks & Gimpel, ICLR 2017);
* :func:`ood_aupr` – area under the precision–recall curve (average precision), OOD as
  the positive class unless ``positive="in"``;
* :func:`abstain_threshold` – the uncertainty threshold at which the answered images of a
  validation set have an error rate of at most ``E``.

The formulas follow torch-uncertainty 0.13 (``AURC``, ``AdaptiveCalibrationError``,
``FPR95``) and scikit-learn (``average_precision_score``); ``tests/test_uncertainty_selective.py``
compares them where those packages are installed. Ordering is *stable*: among images with
equal confidence the earlier one counts as more confident, so results are reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from droplab.errors import InvalidValue
from droplab.uncertainty.metrics import _checked


def _order(probs: Tensor, labels: Tensor, uncertainty: Tensor | None) -> tuple[Tensor, int]:
    """Errors (float64, 0/1) sorted from the most to the least confident image."""
    p, y = _checked(probs, labels)
    errors = (p.argmax(1) != y).double()
    if uncertainty is None:
        key = -p.max(1).values
    else:
        key = _scores(uncertainty, "uncertainty").to(p.device)
        if key.numel() != errors.numel():
            raise InvalidValue(
                f"uncertainty has {key.numel()} values for {errors.numel()} images; pass one "
                "score per image"
            )
    order = torch.sort(key, stable=True).indices
    return errors[order], errors.numel()


def _scores(values: Tensor, what: str) -> Tensor:
    if not isinstance(values, Tensor):
        values = torch.as_tensor(values)
    s = values.detach().double().flatten()
    if s.numel() == 0:
        raise InvalidValue(f"{what} are empty; pass at least one score")
    if not torch.isfinite(s).all():
        raise InvalidValue(f"{what} contain NaN or inf")
    return s


def risk_coverage(probs: Tensor, labels: Tensor,
                  uncertainty: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(coverage, risk)``, both ``(N,)`` float64: answering only the ``k`` most confident
    images (coverage ``k/N``) gives error rate ``risk[k-1]``.

    Confidence is the maximum probability unless ``uncertainty`` (one score per image,
    higher = less sure, e.g. MC mutual information) is given.
    """
    errors, n = _order(probs, labels, uncertainty)
    k = torch.arange(1, n + 1, dtype=torch.float64, device=errors.device)
    return k / n, errors.cumsum(0) / k


def aurc(probs: Tensor, labels: Tensor, uncertainty: Tensor | None = None) -> float:
    """Area under the risk–coverage curve (Geifman & El-Yaniv 2017), in [0, 1].

    The trapezoidal area over coverages ``1/N … 1``, divided by ``1 − 1/N`` so the support
    counts as ``[0, 1]`` (torch-uncertainty's normalisation). Needs ``N ≥ 2`` images.
    """
    coverage, risk = risk_coverage(probs, labels, uncertainty)
    n = coverage.numel()
    if n < 2:
        raise InvalidValue("AURC needs at least 2 images")
    return float(torch.trapezoid(risk, coverage) / (1.0 - 1.0 / n))


def adaptive_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """Adaptive ECE (Nixon et al. 2019): sort images by top-class confidence, split them
    into ``n_bins`` bins of (nearly) equal count, ``Σ_b |B_b|/N · |acc(B_b) − conf(B_b)|``.

    The bins are ``torch.tensor_split`` of the sorted confidences, as in torch-uncertainty;
    with fewer images than bins every image is its own bin.
    """
    if int(n_bins) < 1:
        raise InvalidValue(f"n_bins={n_bins} must be a positive number of bins")
    p, y = _checked(probs, labels)
    conf, pred = p.max(1)
    order = torch.sort(conf, stable=True).indices
    conf, correct = conf[order], (pred == y).double()[order]
    n = conf.numel()
    total = torch.zeros((), dtype=torch.float64)
    for c_bin, a_bin in zip(conf.tensor_split(min(int(n_bins), n)),
                            correct.tensor_split(min(int(n_bins), n))):
        total += (a_bin.mean() - c_bin.mean()).abs() * (c_bin.numel() / n)
    return float(total)


def _in_out(scores_in: Tensor, scores_out: Tensor) -> tuple[Tensor, Tensor]:
    s_in = _scores(scores_in, "in-distribution scores")
    s_out = _scores(scores_out, "out-of-distribution scores")
    return s_in.cpu(), s_out.cpu()


def fpr_at_tpr(scores_in: Tensor, scores_out: Tensor, tpr: float = 0.95) -> float:
    """False-positive rate at ``tpr`` recall of OOD detection (FPR@95TPR by default).

    Scores are *higher = more likely out-of-distribution* (entropy, mutual information,
    ``1 − max p``). The threshold is the highest one flagging at least ``tpr`` of the OOD
    images; ties are never split (a tie group is flagged whole), as in torch-uncertainty.
    Returns the fraction of in-distribution images flagged at that threshold.
    """
    if not 0.0 < float(tpr) <= 1.0:
        raise InvalidValue(f"tpr={tpr} must be in (0, 1]")
    s_in, s_out = _in_out(scores_in, scores_out)
    scores = torch.cat([s_out, s_in])
    positive = torch.cat([torch.ones(s_out.numel(), dtype=torch.bool),
                          torch.zeros(s_in.numel(), dtype=torch.bool)])
    order = torch.sort(scores, descending=True, stable=True).indices
    scores, positive = scores[order], positive[order]
    # a threshold sits after the last member of each group of tied scores
    ends = torch.cat([torch.nonzero(scores[1:] != scores[:-1]).flatten(),
                      torch.tensor([scores.numel() - 1])])
    tp = positive.long().cumsum(0)[ends]
    fp = ends + 1 - tp
    first = int(torch.nonzero(tp.double() / s_out.numel() >= float(tpr) - 1e-12)[0, 0])
    return float(fp[first].double() / s_in.numel())


def ood_aupr(scores_in: Tensor, scores_out: Tensor, positive: str = "out") -> float:
    """Area under the precision–recall curve (average precision, scikit-learn's
    ``average_precision_score``) of OOD detection by a *higher = more OOD* score.

    ``positive="out"`` (AUPR-Out) treats OOD images as positives; ``"in"`` (AUPR-In)
    treats in-distribution images as positives with the score negated (Hendrycks &
    Gimpel 2017 report both).
    """
    # scikit-learn is slow to import: only OOD evaluation pays for it
    from sklearn.metrics import average_precision_score

    if positive not in ("out", "in"):
        raise InvalidValue(f"positive={positive!r}; use 'out' or 'in'")
    s_in, s_out = _in_out(scores_in, scores_out)
    y = torch.cat([torch.zeros(s_in.numel()), torch.ones(s_out.numel())])
    s = torch.cat([s_in, s_out])
    if positive == "in":
        y, s = 1 - y, -s
    return float(average_precision_score(y.numpy(), s.numpy()))


@dataclass(frozen=True)
class AbstainRule:
    """Answer an image when its uncertainty is at most ``threshold``; picked on a
    validation set so the answered images had error ``≤ max_error`` there."""

    threshold: float
    max_error: float
    coverage: float  # fraction of the validation images answered
    error: float  # error rate of the answered validation images
    score: str = "mutual_information"  # which uncertainty the threshold applies to

    def to_dict(self) -> dict[str, float | str | None]:
        """Plain JSON values (a rule that answers nothing has ``threshold: null``)."""
        finite = self.threshold != float("-inf")
        return {"threshold": self.threshold if finite else None, "max_error": self.max_error,
                "coverage": self.coverage, "error": self.error, "score": self.score}


def abstain_threshold(uncertainty: Tensor, correct: Tensor, max_error: float,
                      score: str = "mutual_information") -> AbstainRule:
    """The largest-coverage rule "answer when uncertainty ≤ t" with validation error
    ``≤ max_error``.

    Candidate thresholds are the observed scores; a threshold answers every image whose
    score is at most it (ties answered together). When even the most certain group errs
    more than ``max_error``, the rule answers nothing (threshold −inf, coverage 0).
    """
    e = float(max_error)
    if not 0.0 < e < 1.0:
        raise InvalidValue(f"--abstain-at-error must be in (0, 1), got {max_error}")
    u = _scores(uncertainty, "uncertainty")
    ok = torch.as_tensor(correct).detach().flatten().bool().cpu()
    if ok.numel() != u.numel():
        raise InvalidValue(f"{u.numel()} uncertainty scores for {ok.numel()} correctness flags")
    u = u.cpu()
    order = torch.sort(u, stable=True).indices
    u_sorted, wrong = u[order], (~ok[order]).double()
    ends = torch.cat([torch.nonzero(u_sorted[1:] != u_sorted[:-1]).flatten(),
                      torch.tensor([u.numel() - 1])])
    answered = (ends + 1).double()
    err = wrong.cumsum(0)[ends] / answered
    good = torch.nonzero(err <= e + 1e-12).flatten()
    if good.numel() == 0:
        return AbstainRule(float("-inf"), e, 0.0, 0.0, score)
    best = int(good[-1])
    return AbstainRule(float(u_sorted[ends[best]]), e, float(answered[best] / u.numel()),
                       float(err[best]), score)


__all__ = ["AbstainRule", "abstain_threshold", "adaptive_calibration_error", "aurc",
           "fpr_at_tpr", "ood_aupr", "risk_coverage"]
