"""``droplab report RUN… --out report.html``: one self-contained HTML page of run folders."""

from __future__ import annotations

import argparse

from droplab.cli.common import emit, stderr
from droplab.report import ReportConfig, run

#: Most problems printed on stderr; the page's "Skipped" section lists every one.
MAX_SKIPPED_LINES = 20


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="one self-contained HTML page (plots, tables, images) from run folders",
        description=(
            "Read run folders (train, evaluate, sweep, finetune, gan, style) and write one "
            "HTML file with every image embedded, plus its plots as PNGs in <out>_files/. "
            "A folder of run folders stands for all of them. Whatever cannot be read is "
            "left out and listed (page, stderr, --json)."
        ),
    )
    p.add_argument("runs", nargs="*", metavar="RUN", help="run folders (or folders of runs)")
    p.add_argument("--out", default="report.html", help="HTML file to write (default report.html)")
    p.add_argument("--title", default=None, help="page title (default: the run names)")
    p.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="also export the scalars as TensorBoard logs, one sub-folder per run")
    p.add_argument("--json", action="store_true", help="print the final summary as one JSON object")
    p.set_defaults(func=handle)


def print_skipped(skipped: list[dict[str, str]]) -> None:
    """Each problem once on stderr (the first :data:`MAX_SKIPPED_LINES`)."""
    for s in skipped[:MAX_SKIPPED_LINES]:
        stderr(f"droplab report: skipped: {s['path']} {s['reason']}")
    if len(skipped) > MAX_SKIPPED_LINES:
        stderr(f"droplab report: skipped: … and {len(skipped) - MAX_SKIPPED_LINES} more "
               "(the page's Skipped section lists them all)")


def handle(args: argparse.Namespace) -> int:
    cfg = ReportConfig(runs=list(args.runs), out=args.out, tensorboard=args.tensorboard,
                       title=args.title)
    summary = run(cfg)
    print_skipped(summary["skipped"])
    human = (f"report: {summary['path']} ({summary['runs']} runs, {len(summary['plots'])} plots "
             f"in {summary['files_dir']}, {summary['images_embedded']} images embedded"
             + (f", {len(summary['skipped'])} problems skipped" if summary["skipped"] else "") + ")")
    if summary["tensorboard"]:
        human += f"\ntensorboard: {args.tensorboard}"
    emit(summary, args, human)
    return 0
