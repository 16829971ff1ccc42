"""Monte-Carlo dropout prediction and uncertainty / calibration metrics.

* :mod:`~droplab.uncertainty.mc` – :func:`mc_mode` (the only definition of "dropout on,
  everything else in eval mode") and :func:`mc_predict`;
* :mod:`~droplab.uncertainty.plan` – the prefix plan that runs the deterministic part of a
  model once per batch instead of once per pass;
* :mod:`~droplab.uncertainty.metrics` – entropies, BALD, variation ratio, ECE, NLL, Brier,
  OOD AUROC, on probabilities that are checked, never softmaxed for you.
"""

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

__all__ = [
    "PrefixPlan", "brier_score", "check_probs", "expected_calibration_error",
    "expected_entropy", "logits_of", "mc_mode", "mc_predict", "mutual_information",
    "negative_log_likelihood", "ood_auroc", "predictive_entropy", "prefix_plan",
    "stochastic_modules", "variation_ratio",
]
