"""The results of a study as plain records: one row per setting, one record per trial."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from droplab.tasks.sweep.config import METRIC_KEYS, SweepConfig
from droplab.tasks.sweep.progress import SURPLUS, counted
from droplab.tasks.sweep.space import setting_key


def mean_std(values: Sequence[float | None]) -> dict[str, float]:
    """Mean and sample standard deviation (n − 1), ignoring missing and NaN values."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return {"mean": float("nan"), "std": float("nan")}
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}


def counted_trials(study: optuna.Study) -> dict[tuple[float, str, str] | None, FrozenTrial]:
    """The trial that counts for each setting (a complete one over a pruned one)."""
    by_key: dict[tuple[float, str, str] | None, FrozenTrial] = {}
    for t in study.get_trials(deepcopy=False):
        if not (counted(t) and t.params):
            continue
        key = setting_key(t.params)
        if key is None:
            continue
        prev = by_key.get(key)
        if prev is None or (prev.state != TrialState.COMPLETE and t.state == TrialState.COMPLETE):
            by_key[key] = t
    return by_key


def settings_table(study: optuna.Study, cfg: SweepConfig) -> list[dict[str, Any]]:
    """One row per setting of the space: its counted trial, CV mean ± std of every metric."""
    by_key = counted_trials(study)
    rows = []
    for s in cfg.space.settings():
        t = by_key.get(setting_key(s))
        row: dict[str, Any] = {**s, "state": "missing", "trial": None, "folds_done": 0}
        if t is not None:
            folds = t.user_attrs.get("folds", [])
            row.update(state=t.state.name.lower(), trial=t.number, folds_done=len(folds),
                       value=t.value,
                       cv={k: mean_std([f[k] for f in folds]) for k in METRIC_KEYS})
        rows.append(row)
    return rows


def trial_records(study: optuna.Study) -> list[dict[str, Any]]:
    """One record per trial of the study (``metrics.jsonl``)."""
    out = []
    for t in study.get_trials(deepcopy=False):
        out.append({"trial": t.number, "state": t.state.name.lower(), "params": t.params,
                    "value": t.value, "intermediate": t.intermediate_values,
                    "worker": t.user_attrs.get("worker"), "surplus": t.user_attrs.get(SURPLUS, False),
                    "retry_of": t.system_attrs.get("failed_trial"),
                    "folds": t.user_attrs.get("folds", []),
                    "duration_s": t.duration.total_seconds() if t.duration else None})
    return out
