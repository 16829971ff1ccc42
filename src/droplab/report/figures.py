"""The report's plots, each returned as PNG bytes (``None`` when there is nothing to draw).

- :func:`plot_learning_curves`: every numeric ``metrics.jsonl`` series over epoch/step;
- :func:`plot_metric_vs_rate`: summary results against the dropout rate, mean ± std over
  the runs (seeds) at each rate;
- :func:`plot_sweep`: a sweep's cross-validated score per setting, its best one starred;
- :func:`plot_uncertainty_histograms`: per-image MC-dropout uncertainty, correct vs wrong.

matplotlib's object-oriented API with the Agg canvas (no pyplot state), so drawing never
opens a window and two reports in one process do not share figures.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from droplab.report.collect import RunRecord
from droplab.report.values import X_KEYS, flatten, fmt, is_number, lower_is_better, metric_title
from droplab.report.views import (
    RateGroups,
    mean_keys,
    mean_std,
    result_keys,
    series_namer,
    setting_x,
    std_key,
    values_at,
)

_PREFIXES = ("train_", "val_", "valid_", "test_")
_STYLES = {"train_": "-", "val_": "--", "valid_": "--", "test_": ":"}
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
           "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, facecolor="white")  # constrained layout: no "tight" pass
    return buf.getvalue()


def _grid(n: int, *, cols: int = 3, w: float = 4.2, h: float = 3.0) -> tuple[Figure, list[Any]]:
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(w * cols, h * rows), layout="constrained")
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n)]
    return fig, axes


def _dress(ax: Any, *, legend: bool, grid: bool = True) -> None:
    """Small tick labels, a light grid, and a legend where one helps."""
    ax.tick_params(labelsize=8)
    if grid:
        ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=7)


def _finish(fig: Figure, title: str, fontsize: int = 10) -> bytes:
    if title:
        fig.suptitle(title, fontsize=fontsize)
    return _png(fig)


def _colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _series_x(records: list[dict[str, Any]]) -> tuple[str, list[float]]:
    """The x axis of a metrics log: epoch when it is one record per epoch, else step, else index."""
    for key in X_KEYS:
        xs = [r.get(key) for r in records]
        if all(is_number(x) for x in xs) and len(set(xs)) == len(xs):
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
                if k not in keys and k not in X_KEYS and is_number(v):
                    keys.append(k)
        for k in keys:
            sub = [r for r in rows if is_number(r.get(k))]
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
            ax.plot(xs, ys, _STYLES.get(prefix, "-"), color=_colour(ri),
                    marker="o" if len(xs) <= 25 else None, markersize=3,
                    label=None if multi else key)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel(" / ".join(sorted({t[5] for t in panels[name]})), fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs, steps, trials
        _dress(ax, legend=not multi and len(panels[name]) > 1)
    if multi:  # one legend: colour = run, line style = split
        handles = [Line2D([], [], color=_colour(i), marker="o", markersize=3, label=r.label)
                   for i, r in enumerate(records)]
        used = {t[1] for v in panels.values() for t in v}
        handles += [Line2D([], [], color="0.3", linestyle=_STYLES[pre], label=pre.rstrip("_"))
                    for pre in _PREFIXES if pre in used]
        fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)
    return _finish(fig, title, 11)


def plot_metric_vs_rate(groups: RateGroups) -> bytes | None:
    """Summary metrics against the dropout rate: mean ± std over the runs at each rate.

    Drawn only when some series has at least two rates; up to six metrics.
    """
    groups = {s: g for s, g in groups.items() if len(g) >= 2}
    if not groups:
        return None
    keys = result_keys(r for g in groups.values() for rs in g.values() for r in rs)[:6]
    if not keys:
        return None
    fig, axes = _grid(len(keys))
    for ax, k in zip(axes, keys):
        for si, (series, by_rate) in enumerate(sorted(groups.items())):
            ps, means, stds = [], [], []
            for p in sorted(by_rate):
                vals = values_at(by_rate[p], k)
                if vals:
                    m, s = mean_std(vals)
                    ps.append(p), means.append(m), stds.append(s)
            if ps:
                ax.errorbar(ps, means, yerr=stds, marker="o", capsize=4, label=series,
                            color=_colour(si))
        ax.set_title(k, fontsize=10)
        ax.set_xlabel("dropout rate p", fontsize=8)
        _dress(ax, legend=len(groups) > 1)
    return _finish(fig, "mean ± std over runs (seeds) at each rate")


def plot_sweep(settings: list[dict[str, Any]], title: str = "") -> bytes | None:
    """Cross-validated score per sweep setting (mean ± 1 std over folds), best one starred.

    The x axis is the dropout rate when settings carry one (``rate``, ``p``, …), else the
    setting's name; settings that differ in kind or placement become separate lines.
    """
    keys: list[str] = []
    for r in settings:
        keys += [k for k in mean_keys(r) if k not in keys]
    if not keys:
        return None
    keys = keys[:6]
    namer = series_namer(settings)
    fig, axes = _grid(len(keys), cols=3, w=4.2, h=3.1)
    for ax, mk in zip(axes, keys):
        series: dict[str, list[tuple[Any, float, float]]] = {}
        xkind = "p"
        for r in settings:
            flat = flatten(r)
            if not is_number(flat.get(mk)):
                continue
            xkind_r, x = setting_x(r)
            xkind = xkind if xkind_r == "p" else "setting"
            sk = std_key(mk, flat)
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
                        capsize=4, color=_colour(si), label=name or None)
            for x, (_, y, _s) in zip(xs, pts):
                if y == best_y:
                    ax.plot([x], [y], marker="*", markersize=14, color="#f2b705",
                            markeredgecolor="black", zorder=5)
        ax.set_xlabel("dropout rate p" if xkind == "p" else "setting", fontsize=8)
        better = "lower" if lower_is_better(mk) else "higher"
        ax.set_title(f"{metric_title(mk)} (mean ± std, {better} is better)", fontsize=9)
        _dress(ax, legend=len(series) > 1)
    return _finish(fig, title)


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
                        color=_colour(i), label=f"{part} (n={len(v)})" if part else None)
        ax.set_title(base, fontsize=10)
        ax.set_ylabel("density", fontsize=8)
        _dress(ax, legend=len(parts) > 1, grid=False)
    return _finish(fig, title)
