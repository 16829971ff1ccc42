"""``droplab report RUN… --out report.html``: one self-contained HTML page of run folders.

The options are :class:`droplab.report.ReportConfig`'s fields; this module only adds the
one thing a terminal needs beyond the summary: each skipped problem once on stderr.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from droplab.cli.options import Command, stderr
from droplab.report import ReportConfig, run

#: Most problems printed on stderr; the page's "Skipped" section lists every one.
MAX_SKIPPED_LINES = 20


def print_skipped(skipped: list[dict[str, str]]) -> None:
    """Each problem once on stderr (the first :data:`MAX_SKIPPED_LINES`)."""
    for s in skipped[:MAX_SKIPPED_LINES]:
        stderr(f"droplab report: skipped: {s['path']} {s['reason']}")
    if len(skipped) > MAX_SKIPPED_LINES:
        stderr(f"droplab report: skipped: … and {len(skipped) - MAX_SKIPPED_LINES} more "
               "(the page's Skipped section lists them all)")


def report(cfg: ReportConfig) -> dict[str, Any]:
    """:func:`droplab.report.run`, then the skipped problems on stderr."""
    summary = run(cfg)
    print_skipped(summary["skipped"])
    return summary


def _human(s: Mapping[str, Any]) -> str:
    text = (f"report: {s['path']} ({s['runs']} runs, {len(s['plots'])} plots in "
            f"{s['files_dir']}, {s['images_embedded']} images embedded"
            + (f", {len(s['skipped'])} problems skipped" if s["skipped"] else "") + ")")
    if s["tensorboard"]:
        text += "\ntensorboard: " + ", ".join(s["tensorboard"])
    return text


REPORT = Command(
    "report", ReportConfig, report, human=_human,
    help="one self-contained HTML page (plots, tables, images) from run folders",
    description="Read run folders (train, evaluate, sweep, finetune, gan, style) and write one "
    "HTML file with every image embedded, plus its plots as PNGs in <out>_files/. A folder "
    "of run folders stands for all of them. Whatever cannot be read is left out and listed "
    "once (in the page's Skipped section, on stderr and in --json); only a report where "
    "nothing is readable fails. An --out that exists and is not a droplab report is refused.",
)


def register(subparsers: Any) -> None:
    REPORT.register(subparsers)
