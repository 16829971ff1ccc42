"""Figures of a sweep: CV score, train–validation gap and robust accuracy against the rate
(a GAN sweep: its objective's mean ± std over seeds only), and (several objectives) the
Pareto front with its knee."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from droplab.plots import save_figure
from droplab.tasks.sweep.config import OBJECTIVE_METRIC, SweepConfig


def _series(rows: list[dict[str, Any]], cfg: SweepConfig) -> dict[str, list[dict[str, Any]]]:
    """Rows grouped by their categorical parameters (kind @ where, schedule, listed rates
    other than the main one)."""
    dims = [d for d in cfg.space.dims if d.name != "rate" and d.discrete]
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if "cv" not in r:
            continue
        parts = [f"{r['kind']} @ {r['where']}"]
        parts += [f"{d.name}={r[d.name]}" for d in dims
                  if d.name not in ("kind", "where") and len(d.values or ()) > 1]
        groups.setdefault(", ".join(parts), []).append(r)
    return groups


def plot_sweep(rows: list[dict[str, Any]], cfg: SweepConfig, out: Path,
               chosen: dict[str, Any] | None = None) -> list[str]:
    """CV score vs rate (error bars: std over folds), train–val gap vs rate, robust acc vs
    rate; with several objectives also ``pareto_front.png``. Returns the files written."""
    metric = OBJECTIVE_METRIC[cfg.objective_list[0]]
    continuous = not cfg.space.dims[0].discrete
    gan = cfg.sweep_task == "gan"
    if gan:
        specs = [("cv_vs_rate.png", metric, f"held-out {metric} ({cfg.folds} seeds, mean ± std)")]
    else:
        specs = [("cv_vs_rate.png", metric, f"CV {metric} ({cfg.folds}-fold, mean ± std)"),
                 ("gap_vs_rate.png", "gap", "train − validation accuracy"),
                 ("robust_vs_rate.png", "robust_acc",
                  f"robust accuracy ({cfg.attack.upper()}, ε={cfg.eps:g})")]
    groups = _series(rows, cfg)
    paths = []
    for fname, key, ylabel in specs:
        fig = Figure(figsize=(5.5, 3.8))
        ax = fig.add_subplot(1, 1, 1)
        for label, pts in groups.items():
            pts = sorted(pts, key=lambda r: float(r["rate"]))
            xs = [float(r["rate"]) for r in pts]
            ys = [r["cv"][key]["mean"] for r in pts]
            es = [r["cv"][key]["std"] for r in pts]
            ax.errorbar(xs, ys, yerr=es, fmt="o" if continuous else "o-", capsize=3, label=label)
            for r in pts:
                if r["state"] == "pruned":
                    ax.annotate("pruned", (float(r["rate"]), r["cv"][key]["mean"]), fontsize=7)
        if chosen is not None and key == metric:
            p = chosen["pick"]
            ax.plot([float(p["rate"])], [p["cv_score"]], marker="*", markersize=14,
                    color="black", linestyle="none", label=f"pick ({p['rule']})")
        ax.set_xlabel("discriminator dropout rate p (drop probability)" if gan
                      else "dropout rate p (drop probability)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save_figure(fig, out / fname)
        paths.append(str(out / fname))
    if chosen is not None and "pareto" in chosen:
        paths.append(plot_pareto(rows, chosen["pareto"], out / "pareto_front.png"))
    return paths


def plot_pareto(rows: list[dict[str, Any]], pareto: dict[str, Any], path: Path) -> str:
    """Every setting's CV means of the first two objectives, the front joined, the knee
    starred (arrows in the axis labels point to the better end)."""
    mx, my = pareto["metrics"][:2]
    dx, dy = pareto["directions"][:2]
    fig = Figure(figsize=(5.5, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    done = [r for r in rows if "cv" in r]
    ax.scatter([r["cv"][mx]["mean"] for r in done], [r["cv"][my]["mean"] for r in done],
               s=18, color="0.6", label="settings")
    front = sorted(pareto["front"], key=lambda f: f[mx])
    ax.plot([f[mx] for f in front], [f[my] for f in front], "o-", color="tab:blue",
            label="Pareto front")
    for f in front:
        text = f"p={float(f['rate']):.3g}" + ("" if len({r['kind'] for r in done}) < 2
                                             else f" {f['kind']}")
        ax.annotate(text, (f[mx], f[my]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    k = pareto["knee"]
    ax.plot([k[mx]], [k[my]], marker="*", markersize=16, color="tab:red", linestyle="none",
            label="knee")

    def arrow(d: str) -> str:
        return "↑ better" if d == "maximize" else "↓ better"

    ax.set_xlabel(f"CV {mx} ({'→' if dx == 'maximize' else '←'} better)")
    ax.set_ylabel(f"CV {my} ({arrow(dy)})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)
    return str(path)
