"""One self-contained HTML page (and PNG plots) from any mix of run folders.

``droplab report runs/a runs/b --out report.html`` reads each run folder (``config.json``,
``metrics.jsonl``, ``summary.json``, ``evaluation.json`` and the images a task wrote) and
writes a single HTML file whose images are embedded as base64 ``data:`` URIs: no external
assets, no JavaScript. The plots it makes are also written as PNG files into a folder
beside the page (``report.html`` → ``report_files/``).

The report is generic first, so it copes with whatever keys a run folder holds:

- every numeric series of ``metrics.jsonl`` is plotted over epoch (or step), one line per
  run, ``train_x``/``val_x``/``test_x`` sharing one panel;
- every scalar of ``summary.json`` (and of ``evaluation.json``) and every config value is
  shown in a table, one row per run; columns whose values differ between runs carry the
  CSS class ``diff`` and come first;
- every image of a run folder is embedded with its file name.

On top of that come specific views when their data is present: test metrics against the
dropout rate (mean ± standard deviation over the runs — usually seeds — sharing a rate),
the per-setting cross-validation results of a sweep with error bars, MC-dropout
uncertainty histograms, and image sequences such as GAN samples over epochs as a
timeline.

Plots use matplotlib's object-oriented API with the Agg canvas (no pyplot state), so
building a report never opens a window.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from droplab.errors import DataNotFound, InvalidValue, UserError
from droplab.runs import CONFIG, DiskWriteError, RunDir, atomic_write_bytes

#: File holding the figures of ``droplab evaluate`` inside a run folder.
EVALUATION = "evaluation.json"
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
               ".gif": "image/gif", ".webp": "image/webp"}
#: Keys used as the x axis of a metrics series, in order of preference.
X_KEYS = ("epoch", "step", "trial", "iteration", "iter")
#: Most images embedded per run folder (sequences are thinned to ``MAX_FRAMES``).
MAX_IMAGES = 48
MAX_FRAMES = 10
#: Config keys that hold a run's dropout rate, in order of preference (dotted = nested).
RATE_KEYS = ("dropout", "model.dropout", "dropout_p", "p", "rate", "drop_rate")
#: Config keys that never define a group of comparable runs.
_NOT_A_SETTING = re.compile(
    r"(^|\.)(seed|out|run_dir|data_root|root|device|resume|json|tensorboard|workers|"
    r"num_workers|progress|name|path|storage|study_name)$"
)
#: Summary keys that are bookkeeping, not results.
_NOT_A_RESULT = {"epochs", "time_s", "seed", "run_dir", "task", "step", "steps", "n_trials"}
_PREFIXES = ("train_", "val_", "valid_", "test_")
_STYLES = {"train_": "-", "val_": "--", "valid_": "--", "test_": ":"}
_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
            "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


# -- reading run folders ------------------------------------------------------------------
@dataclass
class RunRecord:
    """Everything the report knows about one run folder."""

    path: Path
    label: str
    task: str
    config: dict[str, Any]
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]
    evaluation: dict[str, Any] | None = None
    images: list[Path] = field(default_factory=list)
    children: list[Path] = field(default_factory=list)
    #: per-image uncertainty arrays from ``*.npz`` files of the run folder
    uncertainty: dict[str, list[float]] = field(default_factory=dict)


def _read_json_dict(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataNotFound(
            f"{path} cannot be read as JSON ({exc.__class__.__name__}); "
            "repair or delete it and rerun the report"
        ) from None
    if not isinstance(data, dict):
        raise DataNotFound(f"{path} does not hold a JSON object; is this a droplab run folder?")
    return data


def _is_run(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG).is_file()


def expand_run_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Run folders named by ``paths``; a folder of run folders stands for all of them.

    Raises :class:`DataNotFound` (one line) for a path that is neither, and
    :class:`InvalidValue` when no path is given.
    """
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if _is_run(p):
            out.append(p)
            continue
        if not p.exists():
            raise DataNotFound(f"run folder {p} does not exist; pass folders written by droplab")
        kids = sorted(c for c in p.iterdir() if _is_run(c)) if p.is_dir() else []
        if not kids:
            raise DataNotFound(
                f"{p} is not a droplab run folder (no {CONFIG}) and holds none; "
                "pass folders written by droplab train/sweep/gan/style/finetune"
            )
        out.extend(kids)
    if not out:
        raise InvalidValue("no run folders given; usage: droplab report RUN [RUN ...] --out report.html")
    seen: set[Path] = set()
    unique = []
    for p in out:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def _find_images(root: Path) -> list[Path]:
    """Images in ``root`` and its sub-folders (not in nested run folders), sorted by name."""
    found: list[Path] = []
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            entries = sorted(d.iterdir())
        except OSError:
            continue
        for e in entries:
            if e.name.startswith("."):
                continue
            if e.is_dir():
                if not _is_run(e) and len(e.relative_to(root).parts) < 3:
                    stack.append(e)
            elif e.suffix.lower() in IMAGE_TYPES:
                found.append(e)
    return sorted(found, key=lambda q: _natural_key(str(q.relative_to(root))))


def _natural_key(text: str) -> list[Any]:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def load_run_record(path: str | Path) -> RunRecord:
    """Read one run folder; a folder without ``config.json`` is a one-line :class:`UserError`."""
    run = RunDir.open(path)
    config = _read_json_dict(run.config_path) or {}
    summary = _read_json_dict(run.summary_path) or {}
    evaluation = _read_json_dict(run.path / EVALUATION)
    try:
        metrics = [r for r in run.read_metrics() if isinstance(r, dict)]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataNotFound(f"{run.metrics_path} cannot be read ({exc}); delete it or rerun") from None
    task = str(config.get("task") or summary.get("task") or "run")
    children = sorted(c for c in run.path.iterdir() if _is_run(c))
    return RunRecord(
        path=run.path, label=run.path.name, task=task, config=config, summary=summary,
        metrics=metrics, evaluation=evaluation, images=_find_images(run.path), children=children,
        uncertainty=npz_uncertainty(run.path),
    )


def npz_uncertainty(root: Path) -> dict[str, list[float]]:
    """Per-image uncertainty arrays from the ``*.npz`` files of a run folder.

    1-D float arrays whose names mention entropy, mutual information, variation ratio,
    confidence, … are returned; a boolean/0-1 array ``correct`` of the same length splits
    each into ``<name>_correct`` and ``<name>_wrong`` (overlaid in the histograms).
    """
    import numpy as np

    out: dict[str, list[float]] = {}
    for path in sorted(root.glob("*.npz")):
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise DataNotFound(f"{path} cannot be read as .npz ({exc}); delete it or rerun") from None
        correct = arrays.get("correct")
        for name, a in arrays.items():
            low = name.lower()
            if (a.ndim != 1 or a.size < 10 or not np.issubdtype(a.dtype, np.floating)
                    or not any(w in low for w in _UNCERTAINTY_WORDS)):
                continue
            a = a[np.isfinite(a)] if correct is None else a
            if correct is not None and correct.shape == a.shape:
                ok = correct.astype(bool)
                out[f"{name}_correct"] = a[ok].tolist()
                out[f"{name}_wrong"] = a[~ok].tolist()
            else:
                out[name] = a.tolist()
    return out


def _unique_labels(records: Sequence[RunRecord]) -> None:
    """Make labels unique by prefixing parent folders where names collide."""
    for depth in range(1, 6):
        labels = [r.label for r in records]
        dupes = {lab for lab in labels if labels.count(lab) > 1}
        if not dupes:
            return
        for r in records:
            if r.label in dupes:
                parts = r.path.resolve().parts
                r.label = "/".join(parts[-(depth + 1):])
    for i, r in enumerate(records):  # same folder given twice under different names
        r.label = f"{r.label}#{i + 1}"


# -- value helpers ------------------------------------------------------------------------
def _is_number(v: Any) -> bool:
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


def _scalarize(v: Any) -> Any:
    """A value as shown in a table cell: lists of records become a count."""
    if isinstance(v, list) and any(isinstance(x, dict | list) for x in v):
        return f"[{len(v)} records]"
    return v


def fmt(v: Any, width: int = 60) -> str:
    """Short text for a table cell."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    text = json.dumps(v, separators=(",", ":")) if isinstance(v, list | dict) else str(v)
    return text if len(text) <= width else text[: width - 1] + "…"


def rate_key(config: dict[str, Any]) -> str | None:
    """The (dotted) config key holding a run's dropout rate, e.g. ``dropout`` or ``d_dropout``."""
    flat = flatten(config)

    def ok(k: str) -> bool:
        return _is_number(flat.get(k)) and 0 <= flat[k] < 1

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


def run_rate(rec: RunRecord) -> float | None:
    """The run's dropout rate from its config (``dropout``, ``model.dropout``, …)."""
    key = rate_key(rec.config)
    return None if key is None else float(flatten(rec.config)[key])


# -- plots ----------------------------------------------------------------------------------
def _png(fig: Figure) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, facecolor="white")  # constrained layout: no "tight" pass
    return buf.getvalue()


def _grid(n: int, *, cols: int = 3, w: float = 4.2, h: float = 3.0) -> tuple[Figure, list[Any]]:
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(w * cols, h * rows), layout="constrained")
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n)]
    return fig, axes


def _series_x(records: list[dict[str, Any]]) -> tuple[str, list[float]]:
    """The x axis of a metrics log: epoch when it is one record per epoch, else step, else index."""
    for key in X_KEYS:
        xs = [r.get(key) for r in records]
        if all(_is_number(x) for x in xs) and len(set(xs)) == len(xs):
            return key, [float(x) for x in xs]
    return "record", [float(i + 1) for i in range(len(records))]


def _metric_group(key: str) -> tuple[str, str]:
    """``val_loss`` → (``loss``, ``val_``); ``d_loss`` → (``d_loss``, ``""``)."""
    for p in _PREFIXES:
        if key.startswith(p) and len(key) > len(p):
            return key[len(p):], p
    return key, ""


def _group_order(name: str) -> tuple[int, str]:
    for rank, word in enumerate(("loss", "acc", "ece", "nll", "fid", "kid", "lr", "dropout")):
        if word in name:
            return rank, name
    return 99, name


def plot_learning_curves(records: Sequence[RunRecord], title: str = "") -> bytes | None:
    """Every numeric metrics series over epoch/step, one panel per metric, a line per run.

    ``train_X``, ``val_X`` and ``test_X`` share the panel ``X`` (solid, dashed, dotted).
    Returns PNG bytes, or ``None`` when no run has a numeric series.
    """
    panels: dict[str, list[tuple[int, str, list[float], list[float], str, str]]] = {}
    for ri, rec in enumerate(records):
        rows = rec.metrics
        keys: list[str] = []
        for r in rows:
            for k, v in r.items():
                if k not in keys and k not in X_KEYS and _is_number(v):
                    keys.append(k)
        for k in keys:
            sub = [r for r in rows if _is_number(r.get(k))]
            xkey, xs = _series_x(sub)
            group, prefix = _metric_group(k)
            panels.setdefault(group, []).append(
                (ri, prefix, xs, [float(r[k]) for r in sub], k, xkey))
    if not panels:
        return None
    names = sorted(panels, key=_group_order)
    fig, axes = _grid(len(names))
    multi = len(records) > 1
    for ax, name in zip(axes, names):
        for ri, prefix, xs, ys, key, _x in panels[name]:
            ax.plot(xs, ys, _STYLES.get(prefix, "-"), color=_PALETTE[ri % len(_PALETTE)],
                    marker="o" if len(xs) <= 25 else None, markersize=3,
                    label=None if multi else key)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(" / ".join(sorted({t[5] for t in panels[name]})), fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs, steps, trials
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if not multi and len(panels[name]) > 1:
            ax.legend(fontsize=7)
    if multi:  # one legend: colour = run, line style = split
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=_PALETTE[i % len(_PALETTE)], marker="o", markersize=3,
                          label=r.label) for i, r in enumerate(records)]
        used = {t[1] for v in panels.values() for t in v}
        handles += [Line2D([], [], color="0.3", linestyle=_STYLES[pre], label=pre.rstrip("_"))
                    for pre in ("train_", "val_", "valid_", "test_") if pre in used]
        fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    return _png(fig)


def _setting_key(rec: RunRecord, varying: set[str]) -> str:
    """Label of the series a run belongs to in rate plots: task + other varied settings."""
    flat = flatten(rec.config)
    parts = [rec.task]
    for k in sorted(varying):
        parts.append(f"{k.rsplit('.', 1)[-1]}={fmt(flat.get(k), 20)}")
    return " ".join(parts)


def rate_groups(records: Sequence[RunRecord]) -> dict[str, dict[float, list[RunRecord]]]:
    """Runs with a rate and a summary, by series (task + other settings that vary) and rate."""
    with_rate = [(r, run_rate(r)) for r in records if r.summary]
    out: dict[str, dict[float, list[RunRecord]]] = {}
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


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


#: Summary keys that look like results worth plotting against the rate.
_RESULT = re.compile(r"acc|loss|ece|nll|brier|fid|kid|auroc|auc|entropy|score|precision|"
                     r"recall|coverage|gap|error|robust|psnr|ssim|lpips|content|style")


def _result_keys(records: Iterable[RunRecord]) -> list[str]:
    """Numeric summary keys that name results (accuracy, losses, calibration, FID, …)."""
    keys: list[str] = []
    for r in records:
        rk = (rate_key(r.config) or "").rsplit(".", 1)[-1]
        for k, v in r.summary.items():
            if (_is_number(v) and k not in _NOT_A_RESULT and k != rk and k not in keys
                    and _RESULT.search(k)):
                keys.append(k)
    order = ("test_acc", "test_loss", "test_ece", "test_nll", "best_val_acc")
    return sorted(keys, key=lambda k: (order.index(k) if k in order else len(order), k))


def rate_table(groups: dict[str, dict[float, list[RunRecord]]]) -> list[dict[str, Any]]:
    """Rows ``{series, p, n, <metric>_mean, <metric>_std}`` for every series and rate."""
    rows = []
    for series, by_rate in groups.items():
        keys = _result_keys(r for rs in by_rate.values() for r in rs)
        for p in sorted(by_rate):
            row: dict[str, Any] = {"series": series, "p": p, "n": len(by_rate[p])}
            for k in keys:
                vals = [float(r.summary[k]) for r in by_rate[p] if _is_number(r.summary.get(k))]
                if vals:
                    row[f"{k}_mean"], row[f"{k}_std"] = _mean_std(vals)
            rows.append(row)
    return rows


def plot_metric_vs_rate(groups: dict[str, dict[float, list[RunRecord]]]) -> bytes | None:
    """Summary metrics against the dropout rate: mean ± std over the runs at each rate.

    Drawn only when some series has at least two rates; up to six metrics.
    """
    groups = {s: g for s, g in groups.items() if len(g) >= 2}
    if not groups:
        return None
    keys = _result_keys(r for g in groups.values() for rs in g.values() for r in rs)[:6]
    if not keys:
        return None
    fig, axes = _grid(len(keys))
    for ax, k in zip(axes, keys):
        for si, (series, by_rate) in enumerate(sorted(groups.items())):
            ps, means, stds = [], [], []
            for p in sorted(by_rate):
                vals = [float(r.summary[k]) for r in by_rate[p] if _is_number(r.summary.get(k))]
                if vals:
                    m, s = _mean_std(vals)
                    ps.append(p), means.append(m), stds.append(s)
            if ps:
                ax.errorbar(ps, means, yerr=stds, marker="o", capsize=4, label=series,
                            color=_PALETTE[si % len(_PALETTE)])
        ax.set_title(k, fontsize=10)
        ax.set_xlabel("dropout rate p", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if len(groups) > 1:
            ax.legend(fontsize=7)
    fig.suptitle("mean ± std over runs (seeds) at each rate", fontsize=10)
    return _png(fig)


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
        if recs and any(_mean_keys(r) for r in recs):
            return recs
    return None


def _mean_keys(rec: dict[str, Any]) -> list[str]:
    flat = flatten(rec)
    return [k for k, v in flat.items() if _is_number(v) and re.search(r"(^|[._])mean$", k)]


def _std_key(mean_key: str, flat: dict[str, Any]) -> str | None:
    cand = re.sub(r"mean$", "std", mean_key)
    return cand if _is_number(flat.get(cand)) else None


def _setting_x(rec: dict[str, Any]) -> tuple[str, Any]:
    flat = flatten(rec)
    for k in ("p", "rate", "dropout", "dropout_p", "drop_rate"):
        if _is_number(flat.get(k)):
            return "p", float(flat[k])
    for k in ("setting", "name", "label"):
        if k in flat:
            return "setting", str(flat[k])
    return "setting", fmt({k: v for k, v in flat.items() if not _is_number(v)}, 30)


#: String fields of a sweep setting that name a series (when they vary between settings).
_SERIES_KEYS = ("kind", "dropout_kind", "where", "dropout_where", "schedule",
                "dropout_schedule", "model")


def _series_namer(settings: Sequence[dict[str, Any]]) -> Any:
    """A function naming a setting's series by the string fields that vary, e.g. ``kind=spatial``."""
    flats = [flatten(r) for r in settings]
    varying = [k for k in _SERIES_KEYS
               if len({str(f.get(k)) for f in flats if isinstance(f.get(k), str)}) > 1]

    def name(rec: dict[str, Any]) -> str:
        flat = flatten(rec)
        return " ".join(f"{k}={flat.get(k)}" for k in varying)

    return name


def lower_is_better(metric: str) -> bool:
    """Loss-like metrics (loss, NLL, ECE, Brier, gap, FID, error) are minimised."""
    return bool(re.search(r"loss|nll|ece|brier|gap|fid|kid|err|time", metric.lower()))


def _metric_title(mean_key: str) -> str:
    """``cv.acc.mean`` → ``cv acc``; ``cv_mean`` → ``cv``."""
    return re.sub(r"[._]?mean$", "", mean_key).replace(".", " ") or mean_key


def plot_sweep(settings: list[dict[str, Any]], title: str = "") -> bytes | None:
    """Cross-validated score per sweep setting (mean ± 1 std over folds), best one starred.

    The x axis is the dropout rate when settings carry one (``rate``, ``p``, …), else the
    setting's name; settings that differ in kind or placement become separate lines.
    """
    mean_keys: list[str] = []
    for r in settings:
        for k in _mean_keys(r):
            if k not in mean_keys:
                mean_keys.append(k)
    if not mean_keys:
        return None
    mean_keys = mean_keys[:6]
    namer = _series_namer(settings)
    fig, axes = _grid(len(mean_keys), cols=3, w=4.2, h=3.1)
    for ax, mk in zip(axes, mean_keys):
        series: dict[str, list[tuple[Any, float, float]]] = {}
        xkind = "p"
        for r in settings:
            flat = flatten(r)
            if not _is_number(flat.get(mk)):
                continue
            xkind_r, x = _setting_x(r)
            xkind = xkind if xkind_r == "p" else "setting"
            sk = _std_key(mk, flat)
            series.setdefault(namer(r), []).append(
                (x, float(flat[mk]), float(flat[sk]) if sk else 0.0))
        pick = min if lower_is_better(mk) else max
        best_y = pick(t[1] for pts in series.values() for t in pts)
        for si, (name, pts) in enumerate(sorted(series.items())):
            if xkind == "p":
                pts.sort(key=lambda t: t[0])
                xs = [t[0] for t in pts]
            else:
                xs = list(range(len(pts)))
                ax.set_xticks(xs, [fmt(t[0], 14) for t in pts], rotation=30, ha="right")
            ax.errorbar(xs, [t[1] for t in pts], yerr=[t[2] for t in pts], marker="o",
                        capsize=4, color=_PALETTE[si % len(_PALETTE)], label=name or None)
            for x, (_, y, _s) in zip(xs, pts):
                if y == best_y:
                    ax.plot([x], [y], marker="*", markersize=14, color="#f2b705",
                            markeredgecolor="black", zorder=5)
        ax.set_xlabel("dropout rate p" if xkind == "p" else "setting", fontsize=8)
        better = "lower" if lower_is_better(mk) else "higher"
        ax.set_title(f"{_metric_title(mk)} (mean ± std, {better} is better)", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _png(fig)


def sweep_table(settings: Sequence[dict[str, Any]], caption: str = "settings",
                pick: dict[str, Any] | None = None) -> str:
    """Settings as rows; each ``…mean``/``…std`` pair in one ``mean ± std`` cell.

    The sweep's own pick (the settings whose fields match every field ``pick`` shares with
    them) gets the CSS class ``best``; without one, the row with the best first metric.
    """
    flats = [flatten(r) for r in settings]
    means: list[str] = []
    plain: list[str] = []
    for f in flats:
        for k, v in f.items():
            if k in _mean_keys(f):
                means += [k] if k not in means else []
            elif not (re.search(r"(^|[._])std$", k) and _is_number(v)) and k not in plain:
                plain.append(k)
    best_row = -1
    if isinstance(pick, dict):
        for i, f in enumerate(flats):
            shared = [k for k in pick if k in f and not isinstance(pick[k], dict | list)]
            if shared and all(f[k] == pick[k] for k in shared):
                best_row = i
                break
    if means and best_row < 0:
        vals = [f.get(means[0]) if _is_number(f.get(means[0])) else None for f in flats]
        ok = [i for i, v in enumerate(vals) if v is not None]
        if ok:
            pick = min if lower_is_better(means[0]) else max
            best_row = pick(ok, key=lambda i: vals[i])
    head = "".join(f"<th>{html.escape(k)}</th>" for k in plain)
    head += "".join(f"<th>{html.escape(_metric_title(m))}</th>" for m in means)
    body = []
    for i, f in enumerate(flats):
        cells = "".join(f"<td>{html.escape(fmt(_scalarize(f.get(k)), 40))}</td>" for k in plain)
        for m in means:
            sk = _std_key(m, f)
            text = fmt(f.get(m)) + (f" ± {f[sk]:.2g}" if sk else "")
            cells += f"<td>{html.escape(text)}</td>"
        cls = ' class="best"' if i == best_row else ""
        body.append(f"<tr{cls}>{cells}</tr>")
    note = ""
    if best_row >= 0:
        what = "the sweep's pick" if isinstance(pick, dict) else f"best {_metric_title(means[0])}"
        note = f' <span class="muted">— {html.escape(what)} highlighted</span>'
    if not flats:
        return ""
    return (f'<div class="table-wrap"><table class="plain"><caption>{html.escape(caption)}'
            f"{note}</caption><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody>"
            "</table></div>")


#: evaluation.json keys (any nesting) holding per-sample uncertainty values.
_UNCERTAINTY_WORDS = ("entropy", "mutual_information", "variation", "uncertainty",
                      "confidence", "max_prob", "std")


def uncertainty_arrays(evaluation: dict[str, Any] | None) -> dict[str, list[float]]:
    """Per-sample uncertainty arrays (≥ 10 numbers) found in ``evaluation.json``."""
    if not evaluation:
        return {}
    out: dict[str, list[float]] = {}
    for k, v in flatten(evaluation).items():
        name = k.rsplit(".", 1)[-1].lower()
        if (isinstance(v, list) and len(v) >= 10 and all(_is_number(x) for x in v)
                and any(w in name for w in _UNCERTAINTY_WORDS)):
            out[k] = [float(x) for x in v]
    return out


def plot_uncertainty_histograms(arrays: dict[str, list[float]], title: str = "") -> bytes | None:
    """One histogram per uncertainty measure; ``…_correct``/``…_wrong`` pairs overlaid."""
    if not arrays:
        return None
    panels: dict[str, list[tuple[str, list[float]]]] = {}
    for k, v in arrays.items():
        m = re.match(r"(.*?)[._](correct|wrong|incorrect|in|out|id|ood)$", k)
        base, part = (m.group(1), m.group(2)) if m else (k, "")
        panels.setdefault(base, []).append((part, v))
    fig, axes = _grid(len(panels), cols=3, w=4.0, h=2.8)
    for ax, (base, parts) in zip(axes, panels.items()):
        values = [x for _, v in parts for x in v]
        lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
        bins = [lo + (hi - lo or 1.0) * i / 30 for i in range(31)]  # shared, so shapes compare
        for i, (part, v) in enumerate(parts):
            if v:
                ax.hist(v, bins=bins, density=True, alpha=0.55 if len(parts) > 1 else 0.9,
                        color=_PALETTE[i % len(_PALETTE)], label=f"{part} (n={len(v)})" if part else None)
        ax.set_title(base, fontsize=10)
        ax.set_ylabel("density", fontsize=8)
        ax.tick_params(labelsize=8)
        if len(parts) > 1:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _png(fig)


# -- image sequences ---------------------------------------------------------------------
_SEQ = re.compile(r"^(?P<stem>.*?)[_-]?(?P<unit>epoch|step|iter|it|e)[_-]?(?P<n>\d+)$", re.I)


def image_sequences(images: Sequence[Path], root: Path) -> tuple[dict[str, list[tuple[int, Path]]], list[Path]]:
    """Split images into numbered sequences (``samples_epoch_003.png``) and single images."""
    seqs: dict[str, list[tuple[int, Path]]] = {}
    for img in images:
        m = _SEQ.match(img.stem)
        if m:
            name = f"{m['stem']} ({m['unit']})" if m["stem"] else f"{m['unit']}s"
            key = str(img.parent.relative_to(root) / name)
            seqs.setdefault(key, []).append((int(m["n"]), img))
    seqs = {k: sorted(v) for k, v in seqs.items() if len(v) >= 2}
    in_seq = {p for v in seqs.values() for _, p in v}
    return seqs, [p for p in images if p not in in_seq]


def thin(frames: list[Any], k: int = MAX_FRAMES) -> list[Any]:
    """At most ``k`` evenly spaced items, always keeping the first and the last."""
    if len(frames) <= k:
        return list(frames)
    idx = sorted({round(i * (len(frames) - 1) / (k - 1)) for i in range(k)})
    return [frames[i] for i in idx]


# -- HTML -----------------------------------------------------------------------------------
def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _img(data: bytes, name: str, mime: str = "image/png", cls: str = "") -> str:
    e = html.escape(name)
    c = f' class="{cls}"' if cls else ""
    return (f'<figure{c}><img src="{data_uri(data, mime)}" alt="{e}" loading="eager">'
            f"<figcaption>{e}</figcaption></figure>")


def diff_table(rows: Sequence[dict[str, Any]], labels: Sequence[str], caption: str,
               first_col: str = "run") -> str:
    """Table with one row per run and one column per key; differing columns first.

    Columns whose values are not all equal (a missing key counts as a value) get the CSS
    class ``diff``.
    """
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    missing = object()

    def norm(v: Any) -> str:
        return "\x00missing" if v is missing else json.dumps(v, sort_keys=True, default=str)

    differs = {k for k in keys if len({norm(r.get(k, missing)) for r in rows}) > 1}
    pathish = re.compile(r"(^|\.)(out|run_dir|path|data_root)$")
    keys.sort(key=lambda k: (k not in differs, bool(pathish.search(k)) and k in differs))
    if not keys:
        return f'<p class="muted">{html.escape(caption)}: nothing recorded.</p>'
    head = "".join(f'<th class="diff">{html.escape(k)}</th>' if k in differs else
                   f"<th>{html.escape(k)}</th>" for k in keys)
    body = []
    for lab, r in zip(labels, rows):
        cells = []
        for k in keys:
            v = r.get(k, None)
            full = fmt(v, 10_000)
            cls = ' class="diff"' if k in differs else ""
            title = f' title="{html.escape(full)}"' if len(full) > 40 else ""
            cells.append(f"<td{cls}{title}>{html.escape(fmt(v, 40))}</td>")
        body.append(f'<tr><th scope="row">{html.escape(lab)}</th>{"".join(cells)}</tr>')
    n = len(differs)
    note = (f"{n} of {len(keys)} columns differ between runs (highlighted, shown first)"
            if len(rows) > 1 else f"{len(keys)} values")
    return (f'<div class="table-wrap"><table class="runs"><caption>{html.escape(caption)}'
            f' <span class="muted">— {note}</span></caption>'
            f'<thead><tr><th>{html.escape(first_col)}</th>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _rate_html(rows: Sequence[dict[str, Any]]) -> str:
    """The rate table with one ``mean ± std`` cell per metric."""
    metrics: list[str] = []
    for r in rows:
        metrics += [k[:-5] for k in r if k.endswith("_mean") and k[:-5] not in metrics]
    head = "".join(f"<th>{html.escape(m)}</th>" for m in metrics)
    body = []
    for r in rows:
        cells = "".join(
            f"<td>{fmt(r[m + '_mean'])} ± {r[m + '_std']:.2g}</td>" if m + "_mean" in r
            else "<td>—</td>" for m in metrics)
        body.append(f"<tr><td>{html.escape(r['series'])}</td><td>{fmt(r['p'])}</td>"
                    f"<td>{r['n']}</td>{cells}</tr>")
    return ('<div class="table-wrap"><table class="plain"><caption>mean ± std over the runs '
            f"at each rate</caption><thead><tr><th>series</th><th>p</th><th>n</th>{head}</tr>"
            f"</thead><tbody>{''.join(body)}</tbody></table></div>")


CSS = """
:root { --fg:#1d2330; --muted:#667085; --line:#e4e7ec; --accent:#2457c5; --diff:#fff4c2; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: var(--fg); background: #f6f7f9; margin: 0; }
header { background: #17213a; color: #fff; padding: 18px 32px 14px; }
header h1 { margin: 0 0 4px; font-size: 22px; font-weight: 600; }
header p { margin: 0; color: #c5cce0; font-size: 13px; }
nav { padding: 8px 32px; background: #fff; border-bottom: 1px solid var(--line); font-size: 13px; }
nav a { color: var(--accent); margin-right: 14px; text-decoration: none; }
main { padding: 16px 32px 40px; max-width: 1500px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px;
          padding: 14px 18px; margin: 0 0 18px; }
h2 { font-size: 17px; margin: 0 0 10px; }
h3 { font-size: 15px; margin: 16px 0 8px; }
.muted { color: var(--muted); font-weight: normal; font-size: 12px; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; background: #e8eefc;
         color: var(--accent); font-size: 12px; margin-left: 6px; }
.table-wrap { overflow-x: auto; margin: 6px 0 12px; }
table { border-collapse: collapse; font-size: 12.5px; }
caption { text-align: left; font-weight: 600; padding: 4px 0 6px; }
th, td { border: 1px solid var(--line); padding: 4px 8px; text-align: left; white-space: nowrap;
         font-variant-numeric: tabular-nums; }
thead th { background: #f0f2f5; }
tbody tr:nth-child(even) td { background: #fafbfc; }
th.diff { background: #ffe58a; }
tr.best td, tbody tr.best:nth-child(even) td { background: #dcf5e3; font-weight: 600; }
td.diff, tbody tr:nth-child(even) td.diff { background: var(--diff); }
figure { margin: 0; display: inline-block; vertical-align: top; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); background: #fff; }
figure.plot img { border: none; }
figcaption { font-size: 12px; color: var(--muted); text-align: center; padding: 2px 0 8px; }
.gallery { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
.gallery figure img { max-height: 320px; }
.timeline { display: flex; gap: 8px; overflow-x: auto; padding-bottom: 4px; }
.timeline figure img { height: 150px; width: auto; image-rendering: pixelated; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr)); gap: 14px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; }
.card h3 { margin: 0 0 6px; font-size: 14px; }
.card .gallery figure img { max-height: 240px; }
dl.kv { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 4px 0; font-size: 12.5px; }
dl.kv dt { color: var(--muted); } dl.kv dd { margin: 0; }
"""


@dataclass
class ReportConfig:
    """Options of ``droplab report``."""

    runs: list[str]
    out: str = "report.html"
    tensorboard: str | None = None
    title: str | None = None


class _Writer:
    """Collects the plots of one report and writes each as PNG into the files folder."""

    def __init__(self, files_dir: Path) -> None:
        self.files_dir = files_dir
        self.written: list[Path] = []

    def plot(self, name: str, png: bytes | None, caption: str) -> str:
        if png is None:
            return ""
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "plot"
        path = self.files_dir / f"{safe}.png"
        n = 2
        while path in self.written:
            path = self.files_dir / f"{safe}_{n}.png"
            n += 1
        atomic_write_bytes(path, png)
        self.written.append(path)
        return _img(png, caption, cls="plot")


def _read_image(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _run_section(rec: RunRecord, w: _Writer, anchor: str) -> tuple[str, int, bool]:
    """The per-run section: sweep results, evaluation, image sequences and every image.

    Empty (``""``) when the run has none of these; its config and summary are in the
    runs table either way. The flag is true for a run with nothing but single images,
    shown as a compact card among the others.
    """
    parts = [f'<section id="{anchor}"><h2>{html.escape(rec.label)}'
             f'<span class="badge">{html.escape(rec.task)}</span> '
             f'<span class="muted">{html.escape(str(rec.path))}</span></h2>']
    settings = sweep_settings(rec.summary)
    if settings:
        parts.append("<h3>Sweep: score per setting</h3>")
        parts.append(w.plot(f"sweep_{rec.label}", plot_sweep(settings),
                            f"{rec.label}: cross-validated mean ± std per setting"))
        pick = rec.summary.get("pick") or rec.summary.get("best")
        parts.append(sweep_table(settings, "settings (cross-validation over folds)",
                                 pick if isinstance(pick, dict) else None))
    if rec.evaluation:
        ev = {k: v for k, v in flatten(rec.evaluation).items()
              if not (isinstance(v, list) and len(v) > 20)}
        parts.append("<h3>Evaluation</h3>" + '<dl class="kv">' + "".join(
            f"<dt>{html.escape(k)}</dt><dd>{html.escape(fmt(_scalarize(v), 100))}</dd>"
            for k, v in ev.items()) + "</dl>")
    arrays = {**uncertainty_arrays(rec.evaluation), **rec.uncertainty}
    if arrays:
        parts.append("<h3>Uncertainty</h3>" + w.plot(
            f"uncertainty_{rec.label}", plot_uncertainty_histograms(arrays),
            f"{rec.label}: per-image uncertainty histograms"))
    if rec.children:
        parts.append(f'<p class="muted">{len(rec.children)} nested run folders: '
                     + html.escape(", ".join(c.name for c in rec.children[:20]))
                     + (" …" if len(rec.children) > 20 else "")
                     + " (pass them to the report to include them)</p>")
    n_img = 0
    seqs, singles = image_sequences(rec.images, rec.path)
    for name, frames in seqs.items():
        shown = thin(frames)
        parts.append(f"<h3>{html.escape(name)} <span class=\"muted\">{len(shown)} of "
                     f"{len(frames)} frames</span></h3><div class=\"timeline\">")
        for _n, p in shown:
            data = _read_image(p)
            if data is not None:
                parts.append(_img(data, p.name, IMAGE_TYPES[p.suffix.lower()]))
                n_img += 1
        parts.append("</div>")
    compact = len(parts) == 1
    if singles:
        shown = singles[:MAX_IMAGES]
        more = f" (first {len(shown)} of {len(singles)})" if len(singles) > len(shown) else ""
        parts.append(f"<h3>Images{more}</h3>" if not compact or more else "")
        parts.append('<div class="gallery">')
        for p in shown:
            data = _read_image(p)
            if data is not None:
                parts.append(_img(data, str(p.relative_to(rec.path)), IMAGE_TYPES[p.suffix.lower()]))
                n_img += 1
        parts.append("</div>")
    if len(parts) == 1:  # nothing beyond the runs table: no section
        return "", 0, False
    parts.append("</section>")
    text = "".join(parts)
    if compact:
        text = text.replace("<section ", '<div class="card" ', 1).removesuffix("</section>")
        text = text.replace("<h2>", "<h3>", 1).replace("</h2>", "</h3>", 1) + "</div>"
    return text, n_img, compact


def _anchor(i: int, label: str) -> str:
    return f"run-{i}-" + re.sub(r"[^A-Za-z0-9_-]+", "-", label).strip("-")


def render_html(records: Sequence[RunRecord], files_dir: Path, title: str) -> tuple[str, _Writer, int]:
    """The whole page; plots are written into ``files_dir`` on the way."""
    w = _Writer(files_dir)
    anchors = [_anchor(i, r.label) for i, r in enumerate(records)]
    tasks = list(dict.fromkeys(r.task for r in records))
    body: list[str] = []

    # runs tables, one pair per task: summary and config, differences highlighted
    runs_html = ['<section id="runs"><h2>Runs</h2>']
    for task in tasks:
        members = [r for r in records if r.task == task]
        cfg_rows = [{k: _scalarize(v) for k, v in flatten(r.config).items() if k != "task"}
                    for r in members]
        sum_rows = []
        for r in members:
            row = {k: _scalarize(v) for k, v in flatten(r.summary).items() if k != "task"}
            if r.evaluation:
                row.update({f"eval.{k}": _scalarize(v) for k, v in flatten(r.evaluation).items()
                            if not isinstance(v, list)})
            sum_rows.append(row)
        mlabels = [r.label for r in members]
        n = len(members)
        runs_html.append(f'<h3>{html.escape(task)} <span class="muted">{n} run'
                         f'{"s" if n > 1 else ""}</span></h3>'
                         + diff_table(sum_rows, mlabels, "Summary")
                         + diff_table(cfg_rows, mlabels, "Configuration"))
    body.append("".join(runs_html) + "</section>")

    # metric vs dropout rate
    groups = rate_groups(records)
    png = plot_metric_vs_rate(groups)
    if png is not None:
        body.append('<section id="rates"><h2>Metrics vs dropout rate</h2>'
                    + w.plot("metrics_vs_rate", png, "summary metrics vs dropout rate (mean ± std)")
                    + _rate_html(rate_table({s: g for s, g in groups.items() if len(g) >= 2}))
                    + "</section>")

    # per-run views (sweep results, evaluation, image sequences), then learning curves
    n_img = 0
    cards = []
    for rec, anchor in zip(records, anchors):
        sec, k, compact = _run_section(rec, w, anchor)
        (cards if compact else body).append(sec)
        n_img += k
    # learning curves, one figure per task
    curves = []
    for task in tasks:
        recs = [r for r in records if r.task == task]
        png = plot_learning_curves(recs, f"{task}: {len(recs)} run{'s' if len(recs) > 1 else ''}")
        curves.append(w.plot(f"curves_{task}", png, f"learning curves ({task})"))
    if any(curves):
        body.append('<section id="curves"><h2>Learning curves</h2>' + "".join(curves) + "</section>")

    if cards:
        body.append('<section id="images"><h2>Images of the runs</h2><div class="cards">'
                    + "".join(cards) + "</div></section>")

    # navigation: every section in page order (run cards are reached through "Images")
    nav = [f'<a href="#{sid}">{title}</a>'
           for sid, title in re.findall(r'<section id="([^"]+)"><h2>([^<]*)', "".join(body))]
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{html.escape(title)}</h1><p>{len(records)} run"
        f"{'s' if len(records) != 1 else ''} ({html.escape(', '.join(tasks))}) · generated {stamp}"
        f" by droplab report</p></header><nav>{''.join(nav)}</nav><main>"
        + "".join(body) + "</main></body></html>\n"
    )
    return page, w, n_img


# -- TensorBoard --------------------------------------------------------------------------
def export_tensorboard(records: Sequence[RunRecord], log_dir: str | Path) -> list[Path]:
    """Write each run's metrics (and summary scalars at step 0) as TensorBoard scalars.

    One sub-folder per run (its label); metrics use ``step`` as global step when present,
    else ``epoch``, else the record index.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package; pip install tensorboard") from None
    root = Path(log_dir)
    dirs = []
    for rec in records:
        d = root / re.sub(r"[^A-Za-z0-9_.-]+", "_", rec.label)
        try:
            writer = SummaryWriter(log_dir=str(d))
        except OSError as exc:
            raise DiskWriteError(f"cannot write TensorBoard logs to {d}: {exc.strerror or exc}") from None
        with writer:
            for i, r in enumerate(rec.metrics):
                step = next((int(r[k]) for k in ("step", "epoch") if _is_number(r.get(k))), i)
                for k, v in r.items():
                    if k not in X_KEYS and _is_number(v):
                        writer.add_scalar(k, float(v), step)
            for k, v in flatten(rec.summary).items():
                if _is_number(v):
                    writer.add_scalar(f"summary/{k}", float(v), 0)
            writer.add_text("config", "```\n" + json.dumps(rec.config, indent=2, default=str) + "\n```", 0)
        dirs.append(d)
    return dirs


# -- entry point ----------------------------------------------------------------------------
def run(cfg: ReportConfig) -> dict[str, Any]:
    """Build the report: returns ``{path, runs, plots, images, files_dir, tensorboard}``."""
    paths = expand_run_paths(cfg.runs)
    records = [load_run_record(p) for p in paths]
    _unique_labels(records)
    out = Path(cfg.out)
    if out.is_dir():
        raise InvalidValue(f"--out {out} is a folder; give an HTML file name, e.g. {out / 'report.html'}")
    if out.suffix.lower() not in (".html", ".htm"):
        out = out.with_name(out.name + ".html")
    files_dir = out.with_name(out.stem + "_files")
    try:
        files_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DiskWriteError(
            f"cannot create {files_dir}: {exc.strerror or exc}; choose a writable --out"
        ) from None
    title = cfg.title or ("droplab report: " + ", ".join(r.label for r in records[:3])
                          + (f" and {len(records) - 3} more" if len(records) > 3 else ""))
    page, w, n_img = render_html(records, files_dir, title)
    atomic_write_bytes(out, page.encode("utf-8"))
    tb = [str(d) for d in export_tensorboard(records, cfg.tensorboard)] if cfg.tensorboard else []
    return {
        "task": "report",
        "path": str(out),
        "runs": len(records),
        "run_dirs": [str(r.path) for r in records],
        "plots": [str(p) for p in w.written],
        "images_embedded": n_img,
        "files_dir": str(files_dir),
        "html_bytes": len(page.encode("utf-8")),
        "tensorboard": tb,
    }


__all__ = [
    "EVALUATION",
    "ReportConfig",
    "RunRecord",
    "data_uri",
    "diff_table",
    "expand_run_paths",
    "export_tensorboard",
    "flatten",
    "image_sequences",
    "load_run_record",
    "npz_uncertainty",
    "plot_learning_curves",
    "plot_metric_vs_rate",
    "plot_sweep",
    "plot_uncertainty_histograms",
    "rate_groups",
    "rate_table",
    "render_html",
    "run",
    "run_rate",
    "sweep_settings",
    "thin",
    "uncertainty_arrays",
]
