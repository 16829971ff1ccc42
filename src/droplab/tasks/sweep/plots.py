"""Figures of a sweep: CV score, train–validation gap and robust accuracy against the rate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from droplab.plots import save_figure
from droplab.tasks.sweep.config import OBJECTIVE_METRIC, SweepConfig


def plot_sweep(rows: list[dict[str, Any]], cfg: SweepConfig, out: Path) -> list[str]:
    """CV score vs rate (error bars: std over folds), train–val gap vs rate, robust acc vs rate."""
    metric = OBJECTIVE_METRIC[cfg.objective]
    specs = [("cv_vs_rate.png", metric, f"CV {metric} ({cfg.folds}-fold, mean ± std)"),
             ("gap_vs_rate.png", "gap", "train − validation accuracy"),
             ("robust_vs_rate.png", "robust_acc",
              f"robust accuracy ({cfg.attack.upper()}, ε={cfg.eps:g})")]
    paths = []
    for fname, key, ylabel in specs:
        fig = Figure(figsize=(5.5, 3.8))
        ax = fig.add_subplot(1, 1, 1)
        for kind in cfg.space.kinds:
            for where in cfg.space.wheres:
                pts = [r for r in rows if r["kind"] == kind and r["where"] == where and "cv" in r]
                pts.sort(key=lambda r: r["rate"])
                if not pts:
                    continue
                xs = [r["rate"] for r in pts]
                ys = [r["cv"][key]["mean"] for r in pts]
                es = [r["cv"][key]["std"] for r in pts]
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=f"{kind} @ {where}")
                for r in pts:
                    if r["state"] == "pruned":
                        ax.annotate("pruned", (r["rate"], r["cv"][key]["mean"]), fontsize=7)
        ax.set_xlabel("dropout rate p (drop probability)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save_figure(fig, out / fname)
        paths.append(str(out / fname))
    return paths
