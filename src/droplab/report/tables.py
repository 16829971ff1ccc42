"""The report's tables as plain data (:class:`Table`); the template turns them into HTML.

- :func:`diff_table`: one row per run, one column per key, the columns whose values differ
  between runs marked ``diff`` and shown first (summary and configuration tables);
- :func:`sweep_table`: a sweep's settings, each ``…mean``/``…std`` pair in one
  ``mean ± std`` cell, the sweep's pick (or else the best mean) marked ``best``;
- :func:`rate_results_table`: the rows of :func:`~droplab.report.views.rate_table`.

Cells hold text, never markup: the template escapes every one of them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from droplab.report.values import flatten, fmt, is_number, lower_is_better, metric_title, scalarize
from droplab.report.views import is_std_key, mean_keys, std_key

#: Config/summary keys holding paths: among the differing columns they come last.
_PATHISH = re.compile(r"(^|\.)(out|run_dir|path|data_root)$")
#: Cell text longer than this is cut, the full text kept as the cell's tooltip.
CELL_WIDTH = 40


@dataclass
class Cell:
    """One table cell: its text, CSS class and tooltip (``title``)."""

    text: str
    cls: str = ""
    title: str = ""


@dataclass
class Row:
    """A table row; ``label`` (when set) is its header cell (``<th scope="row">``)."""

    cells: list[Cell]
    label: str | None = None
    cls: str = ""


@dataclass
class Table:
    """A captioned table; ``empty`` (when set) is shown instead of it."""

    caption: str
    head: list[Cell] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    note: str = ""
    cls: str = "plain"
    empty: str = ""


def _cell(v: Any, cls: str = "") -> Cell:
    full = fmt(v, 10_000)
    return Cell(fmt(v, CELL_WIDTH), cls, full if len(full) > CELL_WIDTH else "")


def diff_table(rows: Sequence[dict[str, Any]], labels: Sequence[str], caption: str,
               first_col: str = "run") -> Table:
    """One row per run and one column per key; differing columns first.

    Columns whose values are not all equal (a missing key counts as a value) get the CSS
    class ``diff``; among them, path-like columns (``out``, ``run_dir``, …) come last.
    """
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    missing = object()

    def norm(v: Any) -> str:
        return "\x00missing" if v is missing else json.dumps(v, sort_keys=True, default=str)

    differs = {k for k in keys if len({norm(r.get(k, missing)) for r in rows}) > 1}
    keys.sort(key=lambda k: (k not in differs, bool(_PATHISH.search(k)) and k in differs))
    if not keys:
        return Table(caption, empty=f"{caption}: nothing recorded.")
    n = len(differs)
    note = (f"— {n} of {len(keys)} columns differ between runs (highlighted, shown first)"
            if len(rows) > 1 else f"— {len(keys)} values")
    head = [Cell(first_col)] + [Cell(k, "diff" if k in differs else "") for k in keys]
    body = [Row([_cell(r.get(k), "diff" if k in differs else "") for k in keys], label=lab)
            for lab, r in zip(labels, rows)]
    return Table(caption, head, body, note=note, cls="runs")


def sweep_table(settings: Sequence[dict[str, Any]], caption: str = "settings",
                pick: dict[str, Any] | None = None) -> Table | None:
    """Settings as rows; each ``…mean``/``…std`` pair in one ``mean ± std`` cell.

    The sweep's own pick (the setting whose fields match every field ``pick`` shares with
    it) gets the CSS class ``best``; without one, the row with the best first metric.
    ``None`` when there are no settings.
    """
    if not settings:
        return None
    flats = [flatten(r) for r in settings]
    means: list[str] = []
    plain: list[str] = []
    for f in flats:
        mk = mean_keys(f)
        for k, v in f.items():
            if k in mk:
                means += [k] if k not in means else []
            elif not (is_std_key(k) and is_number(v)) and k not in plain:
                plain.append(k)
    best_row = -1
    if isinstance(pick, dict):
        for i, f in enumerate(flats):
            shared = [k for k in pick if k in f and not isinstance(pick[k], dict | list)]
            if shared and all(f[k] == pick[k] for k in shared):
                best_row = i
                break
    what = "the sweep's pick"
    if means and best_row < 0:
        vals = [f.get(means[0]) if is_number(f.get(means[0])) else None for f in flats]
        ok = [i for i, v in enumerate(vals) if v is not None]
        if ok:
            better = min if lower_is_better(means[0]) else max
            best_row = better(ok, key=lambda i: vals[i])
            what = f"best {metric_title(means[0])}"
    head = [Cell(k) for k in plain] + [Cell(metric_title(m)) for m in means]
    body = []
    for i, f in enumerate(flats):
        cells = [Cell(fmt(scalarize(f.get(k)), CELL_WIDTH)) for k in plain]
        for m in means:
            sk = std_key(m, f)
            cells.append(Cell(fmt(f.get(m)) + (f" ± {f[sk]:.2g}" if sk else "")))
        body.append(Row(cells, cls="best" if i == best_row else ""))
    note = f"— {what} highlighted" if best_row >= 0 else ""
    return Table(caption, head, body, note=note)


def rate_results_table(rows: Sequence[dict[str, Any]]) -> Table:
    """The rate table (series, p, n, then one ``mean ± std`` cell per metric)."""
    metrics: list[str] = []
    for r in rows:
        metrics += [k[:-5] for k in r if k.endswith("_mean") and k[:-5] not in metrics]
    head = [Cell("series"), Cell("p"), Cell("n")] + [Cell(m) for m in metrics]
    body = []
    for r in rows:
        cells = [Cell(str(r["series"])), Cell(fmt(r["p"])), Cell(str(r["n"]))]
        cells += [Cell(f"{fmt(r[m + '_mean'])} ± {r[m + '_std']:.2g}" if m + "_mean" in r else "—")
                  for m in metrics]
        body.append(Row(cells))
    return Table("mean ± std over the runs at each rate", head, body)
