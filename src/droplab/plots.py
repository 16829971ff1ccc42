"""Figures for run folders: reliability diagram, confusion matrix, learning curves.

Every function draws on its own :class:`matplotlib.figure.Figure` with the Agg canvas (no
pyplot global state, no display needed, safe in threads) and writes a PNG atomically
with :func:`droplab.runs.atomic_write_bytes`. Inputs are plain tensors/arrays and lists of
``metrics.jsonl`` records, so every task and the report can reuse them.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix

from droplab.fileio import atomic_write_bytes

ArrayLike = torch.Tensor | np.ndarray


def _np(a: ArrayLike) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Render ``fig`` to PNG bytes and write them atomically to ``path``."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def calibration_bins(
    probs: ArrayLike, labels: ArrayLike, n_bins: int = 15
) -> dict[str, np.ndarray]:
    """Equal-width confidence bins of the top-1 prediction (Guo et al. 2017).

    Returns ``confidence``, ``accuracy`` (mean per bin, NaN when empty), ``count`` and the
    bin ``edges``. ECE is ``sum(count/N * |accuracy - confidence|)`` over non-empty bins.
    """
    p, y = _np(probs).astype(np.float64), _np(labels).astype(np.int64)
    conf, pred = p.max(axis=1), p.argmax(axis=1)
    hit = (pred == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(idx, weights=hit, minlength=n_bins) / count
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
    return {"confidence": mean_conf, "accuracy": acc, "count": count, "edges": edges}


def reliability_diagram(
    probs: ArrayLike,
    labels: ArrayLike,
    path: str | Path,
    *,
    n_bins: int = 15,
    title: str = "Reliability diagram",
    extra: dict[str, ArrayLike] | None = None,
) -> Path:
    """Accuracy against confidence per bin, with the gap to the diagonal shaded.

    ``extra`` maps a label (e.g. ``"MC dropout T=30"``) to another probability tensor
    drawn as a line over the same bins, to compare calibrations in one figure.
    """
    bins = calibration_bins(probs, labels, n_bins)
    edges, width = bins["edges"], 1.0 / n_bins
    centers = edges[:-1] + width / 2
    n = bins["count"].sum()
    ok = bins["count"] > 0
    ece = float(np.sum(bins["count"][ok] / n * np.abs(bins["accuracy"][ok] - bins["confidence"][ok])))

    fig = Figure(figsize=(5.0, 5.4))
    ax = fig.add_axes((0.14, 0.30, 0.8, 0.62))
    ax_hist = fig.add_axes((0.14, 0.08, 0.8, 0.15), sharex=ax)
    ax.plot([0, 1], [0, 1], "--", color="0.5", lw=1, label="perfect calibration")
    ax.bar(centers[ok], bins["accuracy"][ok], width=width, edgecolor="black", lw=0.6,
           color="#4c72b0", label=f"accuracy (ECE {ece:.3f})")
    gap_lo = np.minimum(bins["accuracy"][ok], bins["confidence"][ok])
    gap = np.abs(bins["accuracy"][ok] - bins["confidence"][ok])
    ax.bar(centers[ok], gap, bottom=gap_lo, width=width, color="#dd8452", alpha=0.5,
           edgecolor="#dd8452", hatch="//", label="gap")
    for name, other in (extra or {}).items():
        b = calibration_bins(other, labels, n_bins)
        m = b["count"] > 0
        ax.plot(b["confidence"][m], b["accuracy"][m], "o-", ms=3, label=name)
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=title)
    ax.legend(loc="upper left", fontsize=8)
    ax_hist.bar(centers, bins["count"] / max(n, 1), width=width, color="0.6")
    ax_hist.set(xlabel="confidence (top-1 probability)", ylabel="share")
    return save_figure(fig, path)


def confusion_matrix_plot(
    labels: ArrayLike,
    preds: ArrayLike,
    classes: Sequence[str],
    path: str | Path,
    *,
    normalize: bool = True,
    title: str = "Confusion matrix",
) -> Path:
    """Rows: true class, columns: predicted class (row-normalised by default)."""
    k = len(classes)
    cm = confusion_matrix(_np(labels), _np(preds), labels=list(range(k))).astype(np.float64)
    shown = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) if normalize else cm
    size = min(12.0, 2.5 + 0.45 * k)
    fig = Figure(figsize=(size, size))
    ax = fig.add_subplot()
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ticks = list(range(k))
    ax.set_xticks(ticks, [str(c) for c in classes], rotation=45 if k > 5 else 0, ha="right")
    ax.set_yticks(ticks, [str(c) for c in classes])
    ax.set(xlabel="predicted", ylabel="true", title=title)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                v = shown[i, j]
                ax.text(j, i, f"{v:.2f}" if normalize else f"{int(v)}", ha="center",
                        va="center", fontsize=7, color="white" if v > 0.5 * shown.max() else "black")
    return save_figure(fig, path)


def learning_curves(
    records: Sequence[dict[str, Any]], path: str | Path, *, title: str = "Learning curves"
) -> Path:
    """Loss and accuracy per epoch (train and validation) from ``metrics.jsonl`` records."""
    recs = [r for r in records if "epoch" in r]
    epochs = [r["epoch"] for r in recs]
    fig = Figure(figsize=(9.0, 3.6))
    ax_loss, ax_acc = fig.subplots(1, 2)

    def series(key: str) -> tuple[list[float], list[float]]:
        pts = [(r["epoch"], r[key]) for r in recs if r.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    for ax, what in ((ax_loss, "loss"), (ax_acc, "acc")):
        for split, style in (("train", "-o"), ("val", "-s")):
            xs, ys = series(f"{split}_{what}")
            if xs:
                ax.plot(xs, ys, style, ms=3, label=split)
        ax.set(xlabel="epoch", ylabel="loss (NLL)" if what == "loss" else "accuracy")
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=8)
    if epochs:
        ax_loss.set_xlim(min(epochs) - 0.2, max(epochs) + 0.2)
    fig.suptitle(title)
    return save_figure(fig, path)
