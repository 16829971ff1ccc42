"""What a served classifier takes from its run folder beyond the weights.

* **Temperature scaling** (Guo et al. 2017): ``temperature.json``, written by ``droplab
  evaluate RUN --temperature`` (:mod:`droplab.evaluate.selective`). A model answered with
  MC dropout uses the temperature fitted on averaged MC passes (``mc``, from ``evaluate
  --temperature --mc T``), a model answered in one pass the deterministic one; each pass
  is scaled before averaging, as ``evaluate`` does.
* **Abstaining** (selective prediction, Geifman & El-Yaniv 2017): ``--abstain-at-error E``
  answers MC dropout over the run's own validation split (rebuilt from ``config.json``),
  then keeps the largest-coverage threshold on the uncertainty whose answered validation
  images err at most ``E`` (:func:`droplab.uncertainty.abstain_threshold`). A request
  above the threshold is answered with ``"abstained": true``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from droplab import data as D
from droplab.engine.config import ClassifyDataConfig, RunConfig
from droplab.errors import UserError
from droplab.evaluate.selective import read_temperature, run_validation
from droplab.uncertainty import (
    AbstainRule,
    Temperature,
    abstain_threshold,
    mc_predict,
    mutual_information,
    predictive_entropy,
)

if TYPE_CHECKING:
    from droplab.serve.registry import ClassifierModel

log = logging.getLogger("droplab.serve")

#: uncertainty scores a server can abstain by
SCORES = ("entropy", "mutual_information", "max_prob")


def served_temperature(m: ClassifierModel) -> Temperature | None:
    """The stored temperature that fits how ``m`` is answered (``None`` when none does)."""
    temps = read_temperature(m.run_dir)
    if not temps:
        return None
    key = "mc" if m.samples > 1 else "deterministic"
    if key not in temps:
        log.warning("%s: temperature.json holds no %s temperature; answering unscaled "
                    "(refit with droplab evaluate RUN --temperature%s)", m.run_dir,
                    "MC" if key == "mc" else "deterministic",
                    f" --mc {m.samples}" if key == "mc" else "")
        return None
    return temps[key]


def scale(mc: Tensor, temperature: Temperature | None) -> Tensor:
    """Per-pass probabilities ``(T, N, K)`` with the temperature applied to each pass."""
    return mc if temperature is None else temperature.apply_to_probs(mc).to(mc.dtype)


def uncertainty(mc: Tensor, score: str) -> Tensor:
    """Per-image uncertainty of ``(T, N, K)`` probabilities (larger: less certain)."""
    if score == "entropy":
        return predictive_entropy(mc)
    if score == "mutual_information":
        return mutual_information(mc)
    return 1.0 - mc.mean(0).max(-1).values


def fit_abstain(m: ClassifierModel, config: dict[str, Any], max_error: float, score: str,
                seed: int, data_root: str | None = None, batch_size: int = 256
                ) -> AbstainRule:
    """The abstain rule of ``m`` picked on its run's validation split (one-line errors for
    a run without one, or MI-abstaining with a model without dropout)."""
    if score == "mutual_information" and m.samples == 1:
        raise UserError(f"{m.run_dir} has no dropout layer, so its mutual information is 0; "
                        "abstain by --abstain-by entropy or max_prob")
    data = ClassifyDataConfig.from_section(config, "data")
    bundle = D.load_dataset(data.dataset, data_root or data.data_root, data.classes,
                            image_size=data.image_size,
                            seed=RunConfig.from_section(config, "run").seed,
                            download=data.download, limit=data.limit)
    val = run_validation(config, bundle.train)
    if val is None or len(val.labels) == 0:
        raise UserError(f"{m.run_dir} was trained without a validation split (--val-fraction "
                        "0); --abstain-at-error picks its threshold on one: retrain with "
                        "--val-fraction 0.1")
    loader = D.Loader(val, None, batch_size=batch_size, shuffle=False, mean=m.mean, std=m.std,
                      device=m.device)
    gen = torch.Generator().manual_seed(int(seed))
    parts, labels = [], []
    with m.lock:
        for x, y in loader:
            if m.samples > 1:
                p = mc_predict(m.model, x, samples=m.samples, reduce="none", generator=gen)
            else:
                with torch.no_grad():
                    p = torch.softmax(m.model.eval()(x).float(), dim=1).unsqueeze(0)
            parts.append(p.float().cpu())
            labels.append(y.cpu())
    mc = scale(torch.cat(parts, dim=1), m.temperature)
    correct = mc.mean(0).argmax(-1) == torch.cat(labels)
    rule = abstain_threshold(uncertainty(mc, score), correct, max_error, score)
    log.info("%s: abstaining above %s %s (validation: %.1f%% answered, error %.4f ≤ %g)",
             m.name, score, rule.to_dict()["threshold"], 100 * rule.coverage, rule.error,
             max_error)
    return rule


__all__ = ["SCORES", "fit_abstain", "scale", "served_temperature", "uncertainty"]
