"""Uncertainty and calibration metrics of MC-dropout probabilities.

Metrics take probability tensors: ``mc_probs`` of shape ``(T, N, K)`` or mean
probabilities ``(N, K)``; they return tensors per sample or Python floats for dataset
summaries.

**Inputs are checked, never guessed at.** Probabilities must lie within 1e-6 of the
probability simplex in the max norm: every entry in ``[-1e-6, 1 + 1e-6]`` and every row
sum within ``K · 1e-6`` of 1 (float32 softmax rows of 1000 classes are off by up to 1e-6).
Such rows are clamped to ``[0, 1]`` and renormalised; anything else (logits, NaN or inf,
an empty tensor, a single class, labels out of range) is a one-line
:class:`~droplab.errors.InvalidValue`. No metric applies a softmax for you.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from droplab.errors import InvalidValue

_EPS = 1e-12
#: max-norm distance to the simplex accepted (and repaired) in probability inputs
SIMPLEX_TOLERANCE = 1e-6


def check_probs(probs: Tensor, what: str = "probabilities") -> Tensor:
    """``probs`` (``(..., K)``) as float64 rows on the simplex, or a one-line error.

    Rows within :data:`SIMPLEX_TOLERANCE` of the simplex (module docstring) are clamped and
    renormalised; anything else raises :class:`~droplab.errors.InvalidValue`.
    """
    if not isinstance(probs, Tensor):
        raise InvalidValue(f"{what} must be a tensor, got {type(probs).__name__}")
    if probs.numel() == 0:
        raise InvalidValue(f"{what} are empty (shape {tuple(probs.shape)}); pass at least one sample")
    if probs.dim() < 1 or probs.shape[-1] < 2:
        raise InvalidValue(
            f"{what} have {probs.shape[-1] if probs.dim() else 0} class(es); uncertainty and "
            "calibration need at least 2 (the last dimension is the class)"
        )
    if probs.is_complex() or not probs.is_floating_point():
        raise InvalidValue(f"{what} must be floating point, got {probs.dtype}")
    p = probs.detach().double()
    if not torch.isfinite(p).all():
        raise InvalidValue(f"{what} contain NaN or inf; check the model's outputs")
    k = p.shape[-1]
    lo, hi = float(p.min()), float(p.max())
    sums = p.sum(-1)
    worst = float((sums - 1.0).abs().max())
    if lo < -SIMPLEX_TOLERANCE or hi > 1.0 + SIMPLEX_TOLERANCE or worst > k * SIMPLEX_TOLERANCE:
        raise InvalidValue(
            f"{what} are not probabilities (entries in [{lo:.4g}, {hi:.4g}], row sums off "
            f"by up to {worst:.3g}); pass softmax(logits), not logits"
        )
    p = p.clamp(0.0, 1.0)
    return p / p.sum(-1, keepdim=True)


def _as_mc(mc_probs: Tensor) -> Tensor:
    if not isinstance(mc_probs, Tensor) or mc_probs.dim() not in (2, 3):
        shape = tuple(mc_probs.shape) if isinstance(mc_probs, Tensor) else type(mc_probs).__name__
        raise InvalidValue(
            f"expected MC probabilities of shape (T, N, K) or (N, K), got {shape}"
        )
    p = check_probs(mc_probs, "MC probabilities")
    return p.unsqueeze(0) if p.dim() == 2 else p


def _entropy(probs: Tensor) -> Tensor:
    return -(probs * torch.log(probs.clamp_min(_EPS))).sum(-1)


def _out_dtype(t: Tensor) -> torch.dtype:
    return t.dtype if t.is_floating_point() else torch.float32


def predictive_entropy(mc_probs: Tensor) -> Tensor:
    """``H[E_t p_t]`` per sample (nats): total uncertainty. Accepts (T, N, K) or (N, K)."""
    return _entropy(_as_mc(mc_probs).mean(0)).to(_out_dtype(mc_probs))


def expected_entropy(mc_probs: Tensor) -> Tensor:
    """``E_t H[p_t]`` per sample (nats): aleatoric part of the predictive entropy."""
    return _entropy(_as_mc(mc_probs)).mean(0).to(_out_dtype(mc_probs))


def mutual_information(mc_probs: Tensor) -> Tensor:
    """BALD score (Houlsby et al., 2011): ``H[E_t p_t] − E_t H[p_t] ≥ 0`` per sample (nats),
    the epistemic part; 0 when all passes agree."""
    mc = _as_mc(mc_probs)
    mi = _entropy(mc.mean(0)) - _entropy(mc).mean(0)
    return mi.clamp_min(0.0).to(_out_dtype(mc_probs))


def variation_ratio(mc_probs: Tensor) -> Tensor:
    """``1 − f_mode / T`` per sample (Freeman, 1965; Gal, 2016): the fraction of passes whose
    top class differs from the most frequent top class."""
    mc = _as_mc(mc_probs)
    votes = mc.argmax(-1)  # (T, N)
    counts = F.one_hot(votes, mc.shape[-1]).sum(0)  # (N, K)
    return (1.0 - counts.max(-1).values.double() / mc.shape[0]).to(_out_dtype(mc_probs))


def _checked(probs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Probabilities (N, K) on the simplex and int64 labels (N,) in range, or an error."""
    if not isinstance(labels, Tensor):
        raise InvalidValue(f"labels must be a tensor, got {type(labels).__name__}")
    if not isinstance(probs, Tensor) or probs.dim() != 2 or labels.dim() != 1 \
            or probs.shape[0] != labels.shape[0]:
        shape = tuple(probs.shape) if isinstance(probs, Tensor) else type(probs).__name__
        raise InvalidValue(
            f"expected probs (N, K) and labels (N,), got {shape} and {tuple(labels.shape)}"
        )
    p = check_probs(probs)
    if labels.is_floating_point() and not torch.equal(labels, labels.round()):
        raise InvalidValue("labels must be class indices (integers)")
    y = labels.long()
    if int(y.min()) < 0 or int(y.max()) >= p.shape[1]:
        raise InvalidValue(
            f"labels must be class indices in [0, {p.shape[1] - 1}], got "
            f"{int(y.min())}…{int(y.max())}"
        )
    return p, y


def expected_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """ECE with ``n_bins`` equal-width confidence bins (Guo et al., 2017):
    ``Σ_b |B_b|/N · |acc(B_b) − conf(B_b)|`` (torchmetrics, ``norm="l1"``), on checked
    probabilities (module docstring)."""
    # torchmetrics takes ~1 s to import: only callers of ECE pay for it
    from torchmetrics.functional.classification import multiclass_calibration_error

    if int(n_bins) < 1:
        raise InvalidValue(f"n_bins={n_bins} must be a positive number of bins")
    p, y = _checked(probs, labels)
    value = multiclass_calibration_error(p.float().clamp(0.0, 1.0), y, num_classes=p.shape[1],
                                         n_bins=int(n_bins), norm="l1")
    return float(value)


def negative_log_likelihood(probs: Tensor, labels: Tensor) -> float:
    """Mean ``−log p(y|x)`` (nats); probabilities are clamped at 1e-12."""
    p, y = _checked(probs, labels)
    picked = p.gather(1, y.unsqueeze(1)).squeeze(1)
    return float(-torch.log(picked.clamp_min(_EPS)).mean())


def brier_score(probs: Tensor, labels: Tensor) -> float:
    """Multi-class Brier score (Brier, 1950): mean over samples of ``Σ_k (p_k − 1[y=k])²``,
    in [0, 2]."""
    p, y = _checked(probs, labels)
    onehot = F.one_hot(y, p.shape[1]).double()
    return float(((p - onehot) ** 2).sum(1).mean())


def ood_auroc(scores_in: Tensor, scores_out: Tensor) -> float:
    """AUROC of separating out-of-distribution from in-distribution samples by a score
    where *higher means more likely OOD* (e.g. predictive entropy or mutual information);
    0.5 is chance, 1.0 perfect (scikit-learn ``roc_auc_score``)."""
    # scikit-learn is slow to import: only OOD evaluation pays for it
    from sklearn.metrics import roc_auc_score

    s_in = torch.as_tensor(scores_in).detach().double().flatten().cpu()
    s_out = torch.as_tensor(scores_out).detach().double().flatten().cpu()
    if s_in.numel() == 0 or s_out.numel() == 0:
        raise InvalidValue("ood_auroc needs at least one in-distribution and one OOD score")
    if not (torch.isfinite(s_in).all() and torch.isfinite(s_out).all()):
        raise InvalidValue("ood_auroc scores contain NaN or inf")
    y = torch.cat([torch.zeros(s_in.numel()), torch.ones(s_out.numel())]).numpy()
    s = torch.cat([s_in, s_out]).numpy()
    return float(roc_auc_score(y, s))


__all__ = [
    "SIMPLEX_TOLERANCE", "brier_score", "check_probs", "expected_calibration_error",
    "expected_entropy", "mutual_information", "negative_log_likelihood", "ood_auroc",
    "predictive_entropy", "variation_ratio",
]
