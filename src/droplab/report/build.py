"""``droplab report`` end to end: check ``--out``, read the runs, render, write.

Nothing is written until every check has passed and the page is rendered in memory; then
the plots go into ``<out>_files/`` and the page is written atomically (temporary file and
rename), so a failure never leaves a half-written page in place of an earlier one. An
``--out`` that exists and is not a page written by ``droplab report`` is refused, as is a
plot folder holding someone else's files: a report never overwrites anything else.
"""

from __future__ import annotations

import os
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from droplab.config import Config, option
from droplab.errors import InvalidValue
from droplab.report.collect import is_report_page, read_runs
from droplab.report.render import render_page
from droplab.report.tensorboard import export_tensorboard
from droplab.runs import DiskWriteError, atomic_write_bytes


@dataclass
class ReportConfig(Config):
    """Options of ``droplab report`` (the command line is generated from these fields)."""

    runs: list[str] = option(factory=list, positional=True, nargs="*", metavar="RUN",
                             help="run folders, or folders of run folders")
    out: str = option("report.html", metavar="FILE.html",
                      help="the page to write; its plots go to FILE_files/ beside it")
    title: str | None = option(None, help="page title (default: the run names)")
    tensorboard: str | None = option(None, metavar="DIR",
                                     help="also export the scalars as TensorBoard logs, "
                                     "one sub-folder per run")


def _check_creatable(path: Path, what: str) -> None:
    """Refuse (one line) a ``path`` that cannot be made: under a file, or not writable."""
    anc = path
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise DiskWriteError(f"cannot create {path}: {anc} is a file, not a folder; choose another {what}")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise DiskWriteError(f"cannot create {path}: {anc} is not writable; choose another {what}")


def output_paths(out: str | Path) -> tuple[Path, Path]:
    """The page and its plot folder for ``--out``, checked before anything is read or written."""
    page = Path(out)
    if page.is_dir():
        raise InvalidValue(f"--out {page} is a folder; give an HTML file name, e.g. {page / 'report.html'}")
    if page.suffix.lower() not in (".html", ".htm"):
        page = page.with_name(page.name + ".html")
    files = page.with_name(page.stem + "_files")
    _check_creatable(page.parent, "--out")
    if page.is_dir():
        raise InvalidValue(f"--out {page} is a folder; give an HTML file name, e.g. {page / 'report.html'}")
    ours = is_report_page(page)
    if (page.exists() or page.is_symlink()) and not ours:
        raise InvalidValue(f"--out {page} exists and is not a droplab report; choose another "
                           "file name (the file was left as it is)")
    if files.exists() or files.is_symlink():
        if not files.is_dir() or files.is_symlink():
            raise InvalidValue(f"{files} exists and is not a folder; the report writes its plots "
                               "there: choose another --out")
        if not ours and any(files.iterdir()):
            raise InvalidValue(f"{files} already holds files and {page} is not a droplab report "
                               "beside it; choose another --out (nothing was written)")
    return page, files


def _check_tensorboard(log_dir: str) -> None:
    path = Path(log_dir)
    if path.exists() and not path.is_dir():
        raise InvalidValue(f"--tensorboard {path} is a file; give a folder for the TensorBoard logs")
    _check_creatable(path, "--tensorboard folder")


def _write(page_path: Path, page: bytes, files_dir: Path, plots: list[tuple[str, bytes]]) -> list[Path]:
    """The plots, then the page. A failed write (disk full) removes the files this call
    created, so no half-made report is left; an earlier page stays as it was."""
    made = [d for d in (files_dir, *files_dir.parents) if not d.exists()]  # deepest first
    try:
        files_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DiskWriteError(f"cannot create {files_dir}: {exc.strerror or exc}; choose a writable --out") from None
    written: list[Path] = []
    new: list[Path] = []
    try:
        for name, png in plots:
            path = files_dir / name
            if not path.exists():
                new.append(path)
            atomic_write_bytes(path, png)
            written.append(path)
        atomic_write_bytes(page_path, page)
    except DiskWriteError:
        for path in new:
            path.unlink(missing_ok=True)
        for d in made:
            with suppress(OSError):
                d.rmdir()
        raise
    return written


def run(cfg: ReportConfig) -> dict[str, Any]:
    """Build the report; returns the summary printed by ``droplab report --json``.

    Keys: ``path``, ``runs``, ``run_dirs``, ``plots``, ``images_embedded``, ``files_dir``,
    ``html_bytes``, ``tensorboard`` and ``skipped`` (one ``{path, kind, reason}`` per
    problem met while reading; the page lists the same).
    """
    page_path, files_dir = output_paths(cfg.out)
    if cfg.tensorboard:
        _check_tensorboard(cfg.tensorboard)
    records, skipped = read_runs(cfg.runs)
    title = cfg.title or ("droplab report: " + ", ".join(r.label for r in records[:3])
                          + (f" and {len(records) - 3} more" if len(records) > 3 else ""))
    page = render_page(records, skipped, title)
    data = page.html.encode("utf-8")
    written = _write(page_path, data, files_dir, [(p.file, p.png) for p in page.plots])
    tb = [str(d) for d in export_tensorboard(records, cfg.tensorboard)] if cfg.tensorboard else []
    return {
        "task": "report",
        "path": str(page_path),
        "runs": len(records),
        "run_dirs": [str(r.path) for r in records],
        "plots": [str(p) for p in written],
        "images_embedded": page.images_embedded,
        "files_dir": str(files_dir),
        "html_bytes": len(data),
        "tensorboard": tb,
        "skipped": [s.as_dict() for s in skipped],
    }
