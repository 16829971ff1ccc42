"""The results of a study as plain records: one row per setting, one record per trial."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from droplab.tasks.sweep.config import OBJECTIVE_METRIC, SweepConfig
from droplab.tasks.sweep.progress import SURPLUS, counted
from droplab.tasks.sweep.space import RATE_PARAMS


def mean_std(values: Sequence[float | None]) -> dict[str, float]:
    """Mean and sample standard deviation (n − 1), ignoring missing and NaN values."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return {"mean": float("nan"), "std": float("nan")}
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}


def counted_trials(study: optuna.Study, cfg: SweepConfig) -> dict[tuple[Any, ...], FrozenTrial]:
    """The trial that counts for each setting (a complete one over a pruned one)."""
    by_key: dict[tuple[Any, ...], FrozenTrial] = {}
    for t in study.get_trials(deepcopy=False):
        key = cfg.space.key(t.params)
        if not counted(t) or key is None:
            continue
        prev = by_key.get(key)
        if prev is None or (prev.state != TrialState.COMPLETE and t.state == TrialState.COMPLETE):
            by_key[key] = t
    return by_key


def _row(params: dict[str, Any], t: FrozenTrial | None, cfg: SweepConfig) -> dict[str, Any]:
    row: dict[str, Any] = {**params, "state": "missing", "trial": None, "folds_done": 0}
    if t is None:
        return row
    folds = t.user_attrs.get("folds", [])
    values = list(t.values) if t.values is not None else None
    row.update(state=t.state.name.lower(), trial=t.number, folds_done=len(folds),
               value=values[0] if values else None,
               cv={k: mean_std([f.get(k) for f in folds]) for k in cfg.metric_keys
                   if any(k in f for f in folds) or not folds},
               per_fold={OBJECTIVE_METRIC[o]: [f[OBJECTIVE_METRIC[o]] for f in folds]
                         for o in cfg.objective_list})
    if cfg.multi:
        row["values"] = values
    return row


def settings_table(study: optuna.Study, cfg: SweepConfig) -> list[dict[str, Any]]:
    """One row per setting: its counted trial, CV mean ± std of every metric, and the
    per-fold values of the objectives' metrics.

    A grid lists every setting (``missing`` where no trial counted yet); other samplers
    list the settings they tried, ordered by their non-rate parameters, then rates.
    """
    by_key = counted_trials(study, cfg)
    if cfg.sampler == "grid":
        return [_row(s, by_key.get(cfg.space.key(s)), cfg)  # type: ignore[arg-type]
                for s in cfg.space.settings()]
    names = cfg.space.names
    order = [n for n in names if n not in RATE_PARAMS] + [n for n in reversed(names)
                                                        if n in RATE_PARAMS]
    rows = [_row({n: t.params[n] for n in names}, t, cfg) for t in by_key.values()]
    return sorted(rows, key=lambda r: tuple(str(r[n]) if n not in RATE_PARAMS else float(r[n])
                                            for n in order))


def trial_records(study: optuna.Study) -> list[dict[str, Any]]:
    """One record per trial of the study (``metrics.jsonl``)."""
    out = []
    for t in study.get_trials(deepcopy=False):
        values = list(t.values) if t.values is not None else None
        out.append({"trial": t.number, "state": t.state.name.lower(), "params": t.params,
                    "value": values[0] if values else None, "values": values,
                    "intermediate": t.intermediate_values,
                    "worker": t.user_attrs.get("worker"), "surplus": t.user_attrs.get(SURPLUS, False),
                    "retry_of": t.system_attrs.get("failed_trial"),
                    "folds": t.user_attrs.get("folds", []),
                    "duration_s": t.duration.total_seconds() if t.duration else None})
    return out
