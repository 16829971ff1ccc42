"""The report's active-learning figure: test accuracy against the number of labels, one
line per acquisition function, mean ± std over the runs (seeds) of each function
(``droplab active`` run folders; their ``summary.json`` holds ``labels`` and
``test_acc`` per round)."""

from __future__ import annotations

import io
import statistics
from collections.abc import Sequence

from matplotlib.figure import Figure

from droplab.report.collect import RunRecord

TASK = "active"


def curves(records: Sequence[RunRecord]) -> dict[str, dict[int, list[float]]]:
    """``acquisition → labels → test accuracies`` (one per run that reached that count)."""
    out: dict[str, dict[int, list[float]]] = {}
    for r in records:
        if r.task != TASK:
            continue
        labels, accs = r.summary.get("labels"), r.summary.get("test_acc")
        if not isinstance(labels, list) or not isinstance(accs, list):
            continue
        by = out.setdefault(str(r.summary.get("acquisition", "?")), {})
        for n, a in zip(labels, accs):
            if isinstance(n, int) and isinstance(a, (int, float)):
                by.setdefault(n, []).append(float(a))
    return out


def plot_accuracy_vs_labels(records: Sequence[RunRecord]) -> bytes | None:
    """Accuracy against labels per acquisition function (mean ± std band), or ``None``
    when no active-learning run is among ``records``."""
    data = curves(records)
    if not data:
        return None
    fig = Figure(figsize=(6.0, 4.2))
    ax = fig.add_subplot()
    for i, (name, by) in enumerate(sorted(data.items())):
        colour = f"C{i % 10}"
        xs = sorted(by)
        means = [statistics.mean(by[x]) for x in xs]
        stds = [statistics.stdev(by[x]) if len(by[x]) > 1 else 0.0 for x in xs]
        runs = max(len(v) for v in by.values())
        ax.plot(xs, means, marker=".", color=colour, label=f"{name} ({runs} run"
                f"{'s' if runs > 1 else ''})")
        ax.fill_between(xs, [m - s for m, s in zip(means, stds)],
                        [m + s for m, s in zip(means, stds)], color=colour, alpha=0.2)
    ax.set_xlabel("labelled images")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("active learning: mean ± std over seeds", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


__all__ = ["curves", "plot_accuracy_vs_labels"]
