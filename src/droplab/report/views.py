"""What the report computes from run records before drawing anything.

- runs grouped by series (task + the other settings that vary) and dropout rate, and the
  mean ± sample standard deviation of each result over the runs (usually seeds) at a rate;
- the per-setting cross-validation records of a sweep summary;
- per-sample uncertainty arrays of ``evaluation.json``.

Pure functions of the records: no files, no plots, no HTML.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from droplab.report.collect import UNCERTAINTY_WORDS, RunRecord
from droplab.report.values import flatten, fmt, is_number, rate_key

#: Config keys that never define a group of comparable runs.
_NOT_A_SETTING = re.compile(
    r"(^|\.)(seed|out|run_dir|data_root|root|device|resume|json|tensorboard|workers|"
    r"num_workers|progress|name|path|storage|study_name)$"
)
#: Summary keys that are bookkeeping, not results.
_NOT_A_RESULT = {"epochs", "time_s", "seed", "run_dir", "task", "step", "steps", "n_trials"}
#: Summary keys that look like results worth plotting against the rate.
_RESULT = re.compile(r"acc|loss|ece|nll|brier|fid|kid|auroc|auc|entropy|score|precision|"
                     r"recall|coverage|gap|error|robust|psnr|ssim|lpips|content|style")
#: String fields of a sweep setting that name a series (when they vary between settings).
_SERIES_KEYS = ("kind", "dropout_kind", "where", "dropout_where", "schedule",
                "dropout_schedule", "model")

#: ``{series: {rate: [runs]}}``
RateGroups = dict[str, dict[float, list[RunRecord]]]


def run_rate(rec: RunRecord) -> float | None:
    """The run's dropout rate from its config (``dropout``, ``model.dropout``, …)."""
    key = rate_key(rec.config)
    return None if key is None else float(flatten(rec.config)[key])


def _setting_key(rec: RunRecord, varying: set[str]) -> str:
    """Label of the series a run belongs to in rate plots: task + other varied settings."""
    flat = flatten(rec.config)
    parts = [rec.task]
    for k in sorted(varying):
        parts.append(f"{k.rsplit('.', 1)[-1]}={fmt(flat.get(k), 20)}")
    return " ".join(parts)


def rate_groups(records: Sequence[RunRecord]) -> RateGroups:
    """Runs with a rate and a summary, by series (task + other settings that vary) and rate."""
    with_rate = [(r, run_rate(r)) for r in records if r.summary]
    out: RateGroups = {}
    for task in sorted({r.task for r, p in with_rate if p is not None}):
        members = [(r, p) for r, p in with_rate if p is not None and r.task == task]
        flats = [flatten(r.config) for r, _ in members]
        varying = set()
        for k in {k for f in flats for k in f}:
            if _NOT_A_SETTING.search(k) or k == "task" or k == rate_key(members[0][0].config):
                continue
            values = {json.dumps(f.get(k), sort_keys=True, default=str) for f in flats}
            # a setting with many values (a path, a timestamp) would split every run apart
            if 1 < len(values) <= 6:
                varying.add(k)
        for rec, p in members:
            out.setdefault(_setting_key(rec, varying), {}).setdefault(p, []).append(rec)
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def result_keys(records: Iterable[RunRecord]) -> list[str]:
    """Numeric summary keys that name results (accuracy, losses, calibration, FID, …)."""
    keys: list[str] = []
    for r in records:
        rk = (rate_key(r.config) or "").rsplit(".", 1)[-1]
        for k, v in r.summary.items():
            if (is_number(v) and k not in _NOT_A_RESULT and k != rk and k not in keys
                    and _RESULT.search(k)):
                keys.append(k)
    order = ("test_acc", "test_loss", "test_ece", "test_nll", "best_val_acc")
    return sorted(keys, key=lambda k: (order.index(k) if k in order else len(order), k))


def values_at(runs: Iterable[RunRecord], key: str) -> list[float]:
    """The numeric summary values of ``key`` over ``runs``."""
    return [float(r.summary[key]) for r in runs if is_number(r.summary.get(key))]


def rate_table(groups: RateGroups) -> list[dict[str, Any]]:
    """Rows ``{series, p, n, <metric>_mean, <metric>_std}`` for every series and rate."""
    rows = []
    for series, by_rate in groups.items():
        keys = result_keys(r for rs in by_rate.values() for r in rs)
        for p in sorted(by_rate):
            row: dict[str, Any] = {"series": series, "p": p, "n": len(by_rate[p])}
            for k in keys:
                vals = values_at(by_rate[p], k)
                if vals:
                    row[f"{k}_mean"], row[f"{k}_std"] = mean_std(vals)
            rows.append(row)
    return rows


# -- sweeps -------------------------------------------------------------------------------------
def _records_in(obj: Any) -> list[dict[str, Any]] | None:
    """A list of dicts, or a dict of dicts (keys kept as ``setting``), else ``None``."""
    if isinstance(obj, list) and obj and all(isinstance(x, dict) for x in obj):
        return obj
    if isinstance(obj, dict) and obj and all(isinstance(x, dict) for x in obj.values()):
        return [{"setting": k, **v} for k, v in obj.items()]
    return None


def sweep_settings(summary: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Per-setting results of a sweep summary: records with a ``…mean`` number.

    Looks through the summary's values (lists or dicts of records) for the first one whose
    records carry a numeric key ending in ``mean``; returns those records or ``None``.
    """
    candidates = [summary.get(k) for k in ("settings", "results", "per_setting", "grid", "table")]
    candidates += list(summary.values())
    for c in candidates:
        recs = _records_in(c)
        if recs and any(mean_keys(r) for r in recs):
            return recs
    return None


def mean_keys(rec: dict[str, Any]) -> list[str]:
    """Dotted keys of ``rec`` that hold a numeric mean (``cv.acc.mean``, ``cv_mean``)."""
    flat = flatten(rec)
    return [k for k, v in flat.items() if is_number(v) and re.search(r"(^|[._])mean$", k)]


def std_key(mean_key: str, flat: dict[str, Any]) -> str | None:
    """The standard deviation beside ``mean_key`` (``…mean`` → ``…std``), if numeric."""
    cand = re.sub(r"mean$", "std", mean_key)
    return cand if is_number(flat.get(cand)) else None


def is_std_key(key: str) -> bool:
    return bool(re.search(r"(^|[._])std$", key))


def setting_x(rec: dict[str, Any]) -> tuple[str, Any]:
    """Where a sweep setting sits on the x axis: ``("p", rate)`` or ``("setting", name)``."""
    flat = flatten(rec)
    for k in ("p", "rate", "dropout", "dropout_p", "drop_rate"):
        if is_number(flat.get(k)):
            return "p", float(flat[k])
    for k in ("setting", "name", "label"):
        if k in flat:
            return "setting", str(flat[k])
    return "setting", fmt({k: v for k, v in flat.items() if not is_number(v)}, 30)


def series_namer(settings: Sequence[dict[str, Any]]) -> Callable[[dict[str, Any]], str]:
    """A function naming a setting's series by the string fields that vary, e.g. ``kind=spatial``."""
    flats = [flatten(r) for r in settings]
    varying = [k for k in _SERIES_KEYS
               if len({str(f.get(k)) for f in flats if isinstance(f.get(k), str)}) > 1]

    def name(rec: dict[str, Any]) -> str:
        flat = flatten(rec)
        return " ".join(f"{k}={flat.get(k)}" for k in varying)

    return name


# -- uncertainty ----------------------------------------------------------------------------------
def uncertainty_arrays(evaluation: dict[str, Any] | None) -> dict[str, list[float]]:
    """Per-sample uncertainty arrays (≥ 10 numbers) found in ``evaluation.json``."""
    if not evaluation:
        return {}
    out: dict[str, list[float]] = {}
    for k, v in flatten(evaluation).items():
        name = k.rsplit(".", 1)[-1].lower()
        if (isinstance(v, list) and len(v) >= 10 and all(is_number(x) for x in v)
                and any(w in name for w in UNCERTAINTY_WORDS)):
            out[k] = [float(x) for x in v]
    return out
