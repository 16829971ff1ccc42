"""The page: sections built from run records, drawn by the Jinja2 template ``page.html.j2``.

Python decides *what* the page holds (which sections, tables, plots and images, in which
order); the templates in ``templates/`` decide how it looks. Autoescaping is on, so every
label, path, config value and caption from a run folder reaches the page as text, never
as markup. The navigation bar and the body come from the same list of :class:`Section`
objects, so a section cannot be missing from the nav or listed twice.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from droplab.report.active import plot_accuracy_vs_labels
from droplab.report.collect import RunRecord
from droplab.report.figures import (
    plot_learning_curves,
    plot_metric_vs_rate,
    plot_sweep,
    plot_uncertainty_histograms,
)
from droplab.report.images import MAX_IMAGES, Embedded, ImageSequence, data_uri
from droplab.report.skipped import Skipped
from droplab.report.tables import Table, diff_table, rate_results_table, sweep_table
from droplab.report.values import flatten, fmt, safe_name, scalarize
from droplab.report.views import rate_groups, rate_table, sweep_settings, uncertainty_arrays

#: Evaluation lists longer than this are per-sample data (histograms), not table values.
_MAX_LIST_SHOWN = 20

_ENV = Environment(
    loader=PackageLoader("droplab.report", "templates"),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
    undefined=StrictUndefined,
)


@dataclass
class Plot:
    """A figure drawn for this report: embedded in the page and written as ``file``."""

    file: str
    png: bytes
    caption: str

    @property
    def uri(self) -> str:
        return data_uri(self.png)


class Plots:
    """The plots of one page, each under a unique file name."""

    def __init__(self) -> None:
        self.items: list[Plot] = []

    def add(self, name: str, png: bytes | None, caption: str) -> Plot | None:
        if png is None:
            return None
        base = safe_name(name)
        used = {p.file for p in self.items}
        file, n = f"{base}.png", 2
        while file in used:
            file, n = f"{base}_{n}.png", n + 1
        plot = Plot(file, png, caption)
        self.items.append(plot)
        return plot


@dataclass
class RunView:
    """One run's own section (or card, when it has nothing but images)."""

    anchor: str
    label: str
    task: str
    path: str
    sweep_plot: Plot | None = None
    sweep_table: Table | None = None
    evaluation: list[tuple[str, str]] = field(default_factory=list)
    uncertainty: Plot | None = None
    children: list[str] = field(default_factory=list)
    sequences: list[ImageSequence] = field(default_factory=list)
    gallery: list[Embedded] = field(default_factory=list)
    gallery_more: str = ""

    @property
    def compact(self) -> bool:
        """Nothing but single images: shown as a card among the others."""
        return not (self.sweep_table or self.evaluation or self.uncertainty or self.children
                    or self.sequences)

    @property
    def empty(self) -> bool:
        return self.compact and not self.gallery

    @property
    def n_images(self) -> int:
        return len(self.gallery) + sum(len(s.frames) for s in self.sequences)


@dataclass
class TaskTables:
    """The summary and configuration tables of the runs of one task."""

    task: str
    n: int
    summary: Table
    config: Table


@dataclass
class RatesView:
    plot: Plot | None
    table: Table


@dataclass
class Section:
    """A section of the page: its anchor, its title in the nav, what it shows."""

    id: str
    title: str
    kind: str  # runs | rates | run | curves | images | skipped
    data: Any


@dataclass
class Rendered:
    """The page's HTML, the plots it embeds (to write beside it) and the run images shown."""

    html: str
    plots: list[Plot]
    images_embedded: int


def _anchor(i: int, label: str) -> str:
    return f"run-{i}-" + re.sub(r"[^A-Za-z0-9_-]+", "-", label).strip("-")


def run_view(rec: RunRecord, plots: Plots, anchor: str) -> RunView:
    """What a run shows beyond the runs tables: sweep results, evaluation, images."""
    view = RunView(anchor, rec.label, rec.task, str(rec.path))
    settings = sweep_settings(rec.summary)
    if settings:
        view.sweep_plot = plots.add(f"sweep_{rec.label}", plot_sweep(settings),
                                    f"{rec.label}: cross-validated mean ± std per setting")
        pick = rec.summary.get("pick") or rec.summary.get("best")
        view.sweep_table = sweep_table(settings, "settings (cross-validation over folds)",
                                       pick if isinstance(pick, dict) else None)
    if rec.evaluation:
        view.evaluation = [(k, fmt(scalarize(v), 100)) for k, v in flatten(rec.evaluation).items()
                           if not (isinstance(v, list) and len(v) > _MAX_LIST_SHOWN)]
    arrays = {**uncertainty_arrays(rec.evaluation), **rec.uncertainty}
    if arrays:
        view.uncertainty = plots.add(f"uncertainty_{rec.label}", plot_uncertainty_histograms(arrays),
                                     f"{rec.label}: per-image uncertainty histograms")
    view.children = [c.name for c in rec.children]
    view.sequences = [s for s in rec.sequences if s.frames]
    view.gallery = rec.gallery
    if rec.n_singles > MAX_IMAGES:
        view.gallery_more = f" (first {len(rec.gallery)} of {rec.n_singles})"
    return view


def _runs_tables(records: Sequence[RunRecord], tasks: list[str]) -> list[TaskTables]:
    out = []
    for task in tasks:
        members = [r for r in records if r.task == task]
        cfg_rows = [{k: scalarize(v) for k, v in flatten(r.config).items() if k != "task"}
                    for r in members]
        sum_rows = []
        for r in members:
            row = {k: scalarize(v) for k, v in flatten(r.summary).items() if k != "task"}
            if r.evaluation:
                row.update({f"eval.{k}": scalarize(v) for k, v in flatten(r.evaluation).items()
                            if not isinstance(v, list)})
            sum_rows.append(row)
        labels = [r.label for r in members]
        out.append(TaskTables(task, len(members), diff_table(sum_rows, labels, "Summary"),
                              diff_table(cfg_rows, labels, "Configuration")))
    return out


def build_sections(records: Sequence[RunRecord], skipped: Sequence[Skipped],
                   plots: Plots) -> tuple[list[Section], int]:
    """The page's sections in order, and how many run images they embed."""
    tasks = list(dict.fromkeys(r.task for r in records))
    sections = [Section("runs", "Runs", "runs", _runs_tables(records, tasks))]

    groups = rate_groups(records)
    rate_plot = plots.add("metrics_vs_rate", plot_metric_vs_rate(groups),
                          "summary metrics vs dropout rate (mean ± std)")
    if rate_plot is not None:
        rows = rate_table({s: g for s, g in groups.items() if len(g) >= 2})
        sections.append(Section("rates", "Metrics vs dropout rate", "rates",
                                RatesView(rate_plot, rate_results_table(rows))))

    views = [run_view(r, plots, _anchor(i, r.label)) for i, r in enumerate(records)]
    sections += [Section(v.anchor, v.label, "run", v) for v in views if not v.compact]

    curves = []
    for task in tasks:
        recs = [r for r in records if r.task == task]
        png = plot_learning_curves(recs, f"{task}: {len(recs)} run{'s' if len(recs) > 1 else ''}")
        curves.append(plots.add(f"curves_{task}", png, f"learning curves ({task})"))
    if any(curves):
        sections.append(Section("curves", "Learning curves", "curves", [c for c in curves if c]))

    active_plot = plots.add("accuracy_vs_labels", plot_accuracy_vs_labels(records),
                            "active learning: test accuracy vs labels (mean ± std over seeds)")
    if active_plot is not None:
        sections.append(Section("active", "Accuracy vs labels", "curves", [active_plot]))

    cards = [v for v in views if v.compact and not v.empty]
    if cards:
        sections.append(Section("images", "Images of the runs", "images", cards))
    if skipped:
        sections.append(Section("skipped", "Skipped", "skipped", list(skipped)))
    return sections, sum(v.n_images for v in views)


def render_page(records: Sequence[RunRecord], skipped: Sequence[Skipped], title: str) -> Rendered:
    """The whole page (HTML text) and the plots it embeds."""
    plots = Plots()
    sections, n_img = build_sections(records, skipped, plots)
    tasks = list(dict.fromkeys(r.task for r in records))
    n = len(records)
    html = _ENV.get_template("page.html.j2").render(
        title=title,
        subtitle=(f"{n} run{'s' if n != 1 else ''} ({', '.join(tasks)}) · generated "
                  f"{_dt.datetime.now():%Y-%m-%d %H:%M}"),
        n_skipped=len(skipped),
        sections=sections,
    )
    return Rendered(html, plots.items, n_img)


def render_table(table: Table) -> str:
    """One table as the page draws it (for tests and for embedding elsewhere)."""
    return str(_ENV.get_template("macros.html.j2").module.table(table))  # type: ignore[attr-defined]
