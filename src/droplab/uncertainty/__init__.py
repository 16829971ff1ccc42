"""Monte-Carlo dropout prediction and uncertainty / calibration metrics.

* :mod:`~droplab.uncertainty.mc` – :func:`mc_mode` (the only definition of "dropout on,
  everything else in eval mode") and :func:`mc_predict`;
* :mod:`~droplab.uncertainty.plan` – the prefix plan that runs the deterministic part of a
  model once per batch instead of once per pass;
* :mod:`~droplab.uncertainty.metrics` – entropies, BALD, variation ratio, ECE, NLL, Brier,
  OOD AUROC, on probabilities that are checked, never softmaxed for you;
* :mod:`~droplab.uncertainty.selective` – risk–coverage, AURC, adaptive ECE, FPR@95TPR,
  AUPR, the abstain threshold;
* :mod:`~droplab.uncertainty.calibration` – temperature scaling (deterministic and MC);
* :mod:`~droplab.uncertainty.ensemble` – deep ensembles and MC over an ensemble;
* :mod:`~droplab.uncertainty.pool` – consistent MC passes over an unlabelled pool;
* :mod:`~droplab.uncertainty.acquisition` – BALD, BatchBALD, PowerBALD, max entropy,
  variation ratios, mean std, random.
"""

from droplab.uncertainty.acquisition import ACQUISITIONS, acquire, batch_bald
from droplab.uncertainty.calibration import Temperature, fit_temperature, logits_from_probs
from droplab.uncertainty.ensemble import Member, check_members, ensemble_probs, stack_members
from droplab.uncertainty.mc import mc_mode, mc_predict, prefix_plan, stochastic_modules
from droplab.uncertainty.metrics import (
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
from droplab.uncertainty.plan import PrefixPlan, logits_of
from droplab.uncertainty.pool import PoolScores, pool_mc_probs
from droplab.uncertainty.selective import (
    AbstainRule,
    abstain_threshold,
    adaptive_calibration_error,
    aurc,
    fpr_at_tpr,
    ood_aupr,
    risk_coverage,
)

__all__ = [
    "ACQUISITIONS",
    "AbstainRule",
    "Member",
    "PoolScores",
    "PrefixPlan",
    "Temperature",
    "abstain_threshold",
    "acquire",
    "adaptive_calibration_error",
    "aurc",
    "batch_bald",
    "brier_score",
    "check_members",
    "check_probs",
    "ensemble_probs",
    "expected_calibration_error",
    "expected_entropy",
    "fit_temperature",
    "fpr_at_tpr",
    "logits_from_probs",
    "logits_of",
    "mc_mode",
    "mc_predict",
    "mutual_information",
    "negative_log_likelihood",
    "ood_aupr",
    "ood_auroc",
    "pool_mc_probs",
    "predictive_entropy",
    "prefix_plan",
    "risk_coverage",
    "stack_members",
    "stochastic_modules",
    "variation_ratio",
]
