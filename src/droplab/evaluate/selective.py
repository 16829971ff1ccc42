"""Baselines beside MC dropout for ``droplab evaluate``, and selective-prediction figures.

* **Temperature scaling in the run folder**: :func:`fit_run_temperature` fits one
  temperature on the run's own validation split (the stratified split the training task
  held out, rebuilt from ``config.json``), for the deterministic outputs and, with MC
  passes, for the averaged MC outputs; :func:`write_temperature` stores it as
  ``temperature.json``, which later evaluations (and the server) apply.
* **Deep ensembles**: :func:`ensemble_members` reloads K run folders and refuses members
  with other classes or input shapes in one line.
* **Selective prediction**: :func:`selective_metrics` (adaptive ECE, AURC),
  :func:`ood_metrics` (AUROC, FPR@95TPR, AUPR-Out) and :func:`risk_coverage_plot`.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from droplab import data as D
from droplab.errors import InvalidValue
from droplab.fileio import atomic_write_bytes, atomic_write_json
from droplab.runs.restore import CLASSIFIER_TASKS, LoadedRun, load_run
from droplab.uncertainty import (
    Member,
    Temperature,
    adaptive_calibration_error,
    aurc,
    check_members,
    fit_temperature,
    fpr_at_tpr,
    logits_from_probs,
    ood_aupr,
    ood_auroc,
    risk_coverage,
)

TEMPERATURE_FILE = "temperature.json"


def run_validation(config: dict[str, Any], train: D.ImageData) -> D.ImageData | None:
    """The validation images a ``train`` or ``finetune`` run held out, rebuilt from its
    ``config.json`` (same label budget, same stratified split, same seed); ``None`` when
    it held out none."""
    data = config["data"] if isinstance(config.get("data"), dict) else config  # 0.1: flat
    run = config["run"] if isinstance(config.get("run"), dict) else config
    seed = int(run.get("seed", 0))
    fraction = float(data.get("val_fraction") or 0.0)
    if not fraction > 0:
        return None
    idx = torch.arange(len(train.labels))
    per_class = data.get("labels_per_class")
    if per_class is not None:  # finetune: the split is of its label budget
        idx = D.subsample_per_class(train.labels, int(per_class), seed)
        if len(idx) < 4 * int(torch.unique(train.labels).numel()):
            return None
    _, val_idx = D.stratified_split(train.labels[idx], fraction, seed)
    return train.subset(idx[val_idx])


def fit_run_temperature(val_probs: Tensor, val_labels: Tensor,
                        val_mc: Tensor | None = None) -> dict[str, Any]:
    """``{"deterministic": Temperature record, "mc": … (with MC passes)}`` fitted on the
    validation probabilities (through ``log p``, the logits up to a constant)."""
    record: dict[str, Any] = {
        "deterministic": fit_temperature(logits_from_probs(val_probs), val_labels).to_dict()}
    if val_mc is not None:
        record["mc"] = fit_temperature(logits_from_probs(val_mc), val_labels).to_dict()
    return record


def write_temperature(run_dir: str | Path, record: dict[str, Any]) -> Path:
    path = Path(run_dir) / TEMPERATURE_FILE
    atomic_write_json(path, record)
    return path


def read_temperature(run_dir: str | Path) -> dict[str, Temperature] | None:
    """The stored temperatures of a run (``None`` when it has none); a damaged file is a
    one-line error naming the fix."""
    path = Path(run_dir) / TEMPERATURE_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        return {k: Temperature.from_dict(v) for k, v in record.items()
                if k in ("deterministic", "mc")}
    except (OSError, ValueError, AttributeError, InvalidValue) as exc:
        raise InvalidValue(f"{path} is not a temperature record ({exc}); refit it with "
                           "droplab evaluate RUN --temperature") from None


def selective_metrics(probs: Tensor, labels: Tensor, prefix: str = "",
                      uncertainty: Tensor | None = None) -> dict[str, float]:
    """``adaptive_ece`` and ``aurc`` (by max probability, or by ``uncertainty``)."""
    return {f"{prefix}adaptive_ece": adaptive_calibration_error(probs, labels),
            f"{prefix}aurc": aurc(probs, labels, uncertainty)}


def ood_metrics(scores_in: Tensor, scores_out: Tensor, name: str) -> dict[str, float]:
    """AUROC, FPR@95TPR and AUPR-Out of OOD detection by the score ``name``."""
    return {f"ood_auroc_{name}": ood_auroc(scores_in, scores_out),
            f"ood_fpr95_{name}": fpr_at_tpr(scores_in, scores_out),
            f"ood_aupr_{name}": ood_aupr(scores_in, scores_out)}


def ensemble_members(paths: Sequence[str | Path], device: str | torch.device,
                     first: LoadedRun) -> list[LoadedRun]:
    """Reload the other members' runs; all must share ``first``'s classes and input shape."""
    runs = [load_run(p, device, tasks=CLASSIFIER_TASKS) for p in paths]
    check_members([Member(str(r.run_dir), tuple(r.classes), tuple(r.in_shape))
                   for r in [first, *runs]])
    return runs


def risk_coverage_plot(curves: dict[str, tuple[Tensor, Tensor, Tensor | None]],
                       path: str | Path, title: str = "Risk–coverage") -> Path:
    """Error rate of the answered images against the share answered, one line per method
    (``name → (probs, labels, uncertainty or None)``), AURC in the legend."""
    fig = Figure(figsize=(5.0, 4.0))
    ax = fig.add_subplot()
    for name, (probs, labels, u) in curves.items():
        cov, risk = risk_coverage(probs, labels, u)
        ax.plot(cov.numpy(), risk.numpy(), lw=1.4,
                label=f"{name} (AURC {aurc(probs, labels, u):.4f})")
    ax.set_xlabel("coverage (share of images answered)")
    ax.set_ylabel("risk (error rate of the answered)")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


__all__ = ["TEMPERATURE_FILE", "ensemble_members", "fit_run_temperature", "ood_metrics",
           "read_temperature", "risk_coverage_plot", "run_validation", "selective_metrics",
           "write_temperature"]
