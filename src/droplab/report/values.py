"""Small helpers on the plain values a run folder holds (numbers, nested dicts, text cells).

Shared by the collection, the views, the figures and the tables of :mod:`droplab.report`;
nothing here reads files or draws.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

#: Keys used as the x axis of a metrics series, in order of preference.
X_KEYS = ("epoch", "step", "trial", "iteration", "iter")
#: Config keys that hold a run's dropout rate, in order of preference (dotted = nested).
RATE_KEYS = ("dropout", "model.dropout", "dropout_p", "p", "rate", "drop_rate")


def is_number(v: Any) -> bool:
    """A finite int or float (booleans are not numbers here)."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts → one level with dotted keys (``{"model": {"p": .1}}`` → ``model.p``)."""
    out: dict[str, Any] = {}
    for k, v in obj.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def scalarize(v: Any) -> Any:
    """A value as shown in a table cell: lists of records become a count."""
    if isinstance(v, list) and any(isinstance(x, dict | list) for x in v):
        return f"[{len(v)} records]"
    return v


def fmt(v: Any, width: int = 60) -> str:
    """Short text for a table cell (4 significant digits, ``—`` for missing, cut at ``width``)."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    text = json.dumps(v, separators=(",", ":")) if isinstance(v, list | dict) else str(v)
    return text if len(text) <= width else text[: width - 1] + "…"


def natural_key(text: str) -> list[Any]:
    """Sort key that orders ``step_9`` before ``step_10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def rate_key(config: dict[str, Any]) -> str | None:
    """The (dotted) config key holding a run's dropout rate, e.g. ``dropout`` or ``d_dropout``."""
    flat = flatten(config)

    def ok(k: str) -> bool:
        return is_number(flat.get(k)) and 0 <= flat[k] < 1

    for key in RATE_KEYS:
        if ok(key):
            return key
    for key in flat:  # e.g. "classifier.dropout"
        if key.rsplit(".", 1)[-1] == "dropout" and ok(key):
            return key
    for key in flat:  # e.g. a GAN's "d_dropout"
        last = key.rsplit(".", 1)[-1]
        if last.endswith("dropout") and last != "input_dropout" and ok(key):
            return key
    return None


def lower_is_better(metric: str) -> bool:
    """Loss-like metrics (loss, NLL, ECE, Brier, gap, FID, error) are minimised."""
    return bool(re.search(r"loss|nll|ece|brier|gap|fid|kid|err|time", metric.lower()))


def metric_title(mean_key: str) -> str:
    """``cv.acc.mean`` → ``cv acc``; ``cv_mean`` → ``cv``."""
    return re.sub(r"[._]?mean$", "", mean_key).replace(".", " ") or mean_key


def safe_name(text: str, default: str = "plot") -> str:
    """``text`` reduced to ``[A-Za-z0-9_.-]`` for a file name (never empty, never ``..``)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.")
    return name or default
