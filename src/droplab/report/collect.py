"""Find and read run folders for the report, without stopping at a broken file.

A report over many folders must not fail because one of them is damaged (a half-written
``summary.json``, a metrics line cut short by ``kill -9``, a truncated PNG, an empty folder
left by a crash). Everything here reads what it can and records each problem once as a
:class:`Skipped` entry — the path, what kind of problem, and why — which the page lists in
its "Skipped" section and the CLI prints once on stderr. Only a report where *nothing* is
readable is an error (:func:`read_runs` raises one line).

Files are read only when they are regular files (a FIFO or ``/dev/zero`` named
``config.json`` would hang or fill memory), JSON is capped in size and nesting depth, and
``.npz`` files are opened with ``allow_pickle=False`` after their uncompressed size is
checked, so a hostile run folder cannot run code or exhaust memory.
"""

from __future__ import annotations

import json
import stat
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from droplab.errors import DataNotFound, InvalidValue
from droplab.report.images import IMAGE_TYPES, Embedded, ImageSequence, select_images
from droplab.report.skipped import Skipped
from droplab.report.values import natural_key
from droplab.runs import CONFIG, RunDir

#: File holding the figures of ``droplab evaluate`` inside a run folder.
EVALUATION = "evaluation.json"
#: Largest JSON file read (config, summary, evaluation); a larger one is skipped.
MAX_JSON_BYTES = 64 * 2**20
#: Deepest nesting of JSON objects and arrays accepted (droplab writes at most ~5 levels).
MAX_JSON_DEPTH = 64
#: Largest total uncompressed size of the arrays in one ``.npz`` file.
MAX_NPZ_BYTES = 256 * 2**20
#: Sub-folder depth searched for images below a run folder.
IMAGE_DEPTH = 3
#: Text a page written by ``droplab report`` carries near its top (this release and the last).
REPORT_MARKERS = (b'<meta name="generator" content="droplab report">', b"by droplab report</p>")
#: evaluation.json / npz array names holding per-sample uncertainty values.
UNCERTAINTY_WORDS = ("entropy", "mutual_information", "variation", "uncertainty",
                     "confidence", "max_prob", "std")


@dataclass
class RunRecord:
    """Everything the report knows about one run folder."""

    path: Path
    label: str
    task: str
    config: dict[str, Any]
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]
    evaluation: dict[str, Any] | None = None
    #: every image file found (the page shows ``sequences`` and ``gallery``)
    images: list[Path] = field(default_factory=list)
    children: list[Path] = field(default_factory=list)
    #: per-image uncertainty arrays from ``*.npz`` files of the run folder
    uncertainty: dict[str, list[float]] = field(default_factory=dict)
    #: numbered image series (GAN samples per epoch, style steps), thinned, checked
    sequences: list[ImageSequence] = field(default_factory=list)
    #: the other images, checked, at most ``images.MAX_IMAGES``
    gallery: list[Embedded] = field(default_factory=list)
    #: how many single images the folder holds (``gallery`` may show fewer)
    n_singles: int = 0
    #: problems met while reading this folder
    skipped: list[Skipped] = field(default_factory=list)
    #: false when nothing in the folder could be read (the run is left out of the page)
    readable: bool = True


# -- files ------------------------------------------------------------------------------------
def _regular_file(path: Path, skipped: list[Skipped]) -> bool:
    """True for a readable regular file; a missing file is false and not a problem."""
    if not path.exists():
        if path.is_symlink():
            skipped.append(Skipped(str(path), "missing file", "is a link to a file that does not exist"))
        return False
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        skipped.append(Skipped(str(path), "unreadable file", f"cannot be read ({exc.strerror or exc})"))
        return False
    if not stat.S_ISREG(mode):
        skipped.append(Skipped(str(path), "unreadable file", "is not a regular file"))
        return False
    return True


def _depth(obj: Any) -> int:
    """Nesting depth of JSON containers (iterative, so hostile depth cannot overflow)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        node, d = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, d)
            if d > MAX_JSON_DEPTH:
                return d
            stack.extend((v, d + 1) for v in (node.values() if isinstance(node, dict) else node))
    return deepest


def _loads(data: bytes) -> tuple[Any, str | None]:
    """Parse JSON; returns ``(value, None)`` or ``(None, why it failed)``."""
    try:
        value = json.loads(data)
    except json.JSONDecodeError as exc:
        return None, f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    except (ValueError, RecursionError):
        return None, "nested too deeply"
    if _depth(value) > MAX_JSON_DEPTH:
        return None, f"nested deeper than {MAX_JSON_DEPTH} levels"
    return value, None


def read_json_object(path: Path, skipped: list[Skipped]) -> dict[str, Any] | None:
    """The JSON object in ``path``; ``None`` when it is missing or unreadable (then noted)."""
    if not _regular_file(path, skipped):
        return None
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            skipped.append(Skipped(str(path), "unreadable JSON",
                                   f"is {size / 2**20:.0f} MiB, over the {MAX_JSON_BYTES // 2**20} MiB cap"))
            return None
        data = path.read_bytes()
    except OSError as exc:
        skipped.append(Skipped(str(path), "unreadable file", f"cannot be read ({exc.strerror or exc})"))
        return None
    value, why = _loads(data)
    if why is not None:
        skipped.append(Skipped(str(path), "unreadable JSON", f"cannot be read as JSON ({why})"))
        return None
    if not isinstance(value, dict):
        skipped.append(Skipped(str(path), "unreadable JSON",
                               f"holds a JSON {type(value).__name__}, not an object"))
        return None
    return value


def read_metrics(path: Path, skipped: list[Skipped]) -> list[dict[str, Any]]:
    """The JSON objects of a ``metrics.jsonl``; other lines are counted in one entry."""
    if not _regular_file(path, skipped):
        return []
    rows: list[dict[str, Any]] = []
    bad, total, first_bad = 0, 0, 0
    try:
        with open(path, "rb") as fh:
            for number, raw in enumerate(fh, 1):
                line = raw.strip()
                if not line:
                    continue
                total += 1
                value, why = _loads(line)
                if why is None and isinstance(value, dict):
                    rows.append(value)
                else:
                    bad += 1
                    first_bad = first_bad or number
    except OSError as exc:
        skipped.append(Skipped(str(path), "unreadable file",
                               f"cannot be read ({exc.strerror or exc}); {len(rows)} lines kept"))
        return rows
    if bad:
        skipped.append(Skipped(str(path), "metrics lines",
                               f"has {bad} of {total} lines that are not JSON objects "
                               f"(first at line {first_bad}); they are left out"))
    return rows


def npz_uncertainty(root: Path, skipped: list[Skipped] | None = None) -> dict[str, list[float]]:
    """Per-image uncertainty arrays from the ``*.npz`` files of a run folder.

    1-D float arrays whose names mention entropy, mutual information, variation ratio,
    confidence, … are returned; a boolean/0-1 array ``correct`` of the same length splits
    each into ``<name>_correct`` and ``<name>_wrong`` (overlaid in the histograms). A file
    that cannot be read is noted in ``skipped`` (or raises :class:`DataNotFound` without it).
    """
    problems: list[Skipped] = []
    out: dict[str, list[float]] = {}
    for path in sorted(root.glob("*.npz")):
        arrays = _read_npz(path, problems)
        if arrays is None:
            continue
        correct = arrays.get("correct")
        for name, a in arrays.items():
            low = name.lower()
            if (a.ndim != 1 or a.size < 10 or not np.issubdtype(a.dtype, np.floating)
                    or not any(w in low for w in UNCERTAINTY_WORDS)):
                continue
            a = a[np.isfinite(a)] if correct is None else a
            if correct is not None and correct.shape == a.shape:
                ok = correct.astype(bool)
                out[f"{name}_correct"] = a[ok].tolist()
                out[f"{name}_wrong"] = a[~ok].tolist()
            else:
                out[name] = a.tolist()
    if skipped is None and problems:
        raise DataNotFound(problems[0].message)
    if skipped is not None:
        skipped.extend(problems)
    return out


def _read_npz(path: Path, skipped: list[Skipped]) -> dict[str, np.ndarray] | None:
    if not _regular_file(path, skipped):
        return None
    try:
        with zipfile.ZipFile(path) as zf:
            size = sum(i.file_size for i in zf.infolist())
        if size > MAX_NPZ_BYTES:
            skipped.append(Skipped(str(path), "unreadable file",
                                   f"unpacks to {size / 2**20:.0f} MiB, over the "
                                   f"{MAX_NPZ_BYTES // 2**20} MiB cap"))
            return None
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        skipped.append(Skipped(str(path), "unreadable file", f"cannot be read as .npz ({why})"))
        return None


# -- folders ----------------------------------------------------------------------------------
def is_run(path: Path) -> bool:
    """A folder holding a ``config.json`` (readable or not) is a run folder."""
    return path.is_dir() and (path / CONFIG).is_file()


def is_report_page(path: Path) -> bool:
    """True when ``path`` is an HTML page written by ``droplab report``."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            return False
        with open(path, "rb") as fh:
            head = fh.read(64 * 1024)
    except OSError:
        return False
    return any(m in head for m in REPORT_MARKERS)


def is_report_files(path: Path) -> bool:
    """True for ``X_files/``, the plot folder beside a report ``X.html``."""
    if not path.name.endswith("_files"):
        return False
    stem = path.name[: -len("_files")]
    return any(is_report_page(path.with_name(stem + ext)) for ext in (".html", ".htm"))


def _listing(folder: Path, skipped: list[Skipped]) -> list[Path] | None:
    try:
        return sorted(folder.iterdir())
    except OSError as exc:
        skipped.append(Skipped(str(folder), "unreadable folder",
                               f"cannot be listed ({exc.strerror or exc})"))
        return None


def _ignored(path: Path) -> bool:
    """Hidden entries and a report's own plot folder are never run data."""
    return path.name.startswith(".") or is_report_files(path)


def _not_a_run(folder: Path, entries: list[Path], *, named: bool) -> Skipped:
    if not [e for e in entries if not _ignored(e)]:
        return Skipped(str(folder), "empty folder", "is an empty folder (no run was written there)")
    if named:
        return Skipped(str(folder), "not a run folder",
                       f"is not a droplab run folder (no {CONFIG}) and holds none; pass "
                       "folders written by droplab train/sweep/gan/style/finetune")
    return Skipped(str(folder), "not a run folder", f"is not a droplab run folder (no {CONFIG})")


def expand_run_paths(paths: Iterable[str | Path], skipped: list[Skipped] | None = None) -> list[Path]:
    """Run folders named by ``paths``; a folder of run folders stands for all of them.

    A path that is neither, and each non-run sub-folder of a folder of runs, is a problem:
    noted in ``skipped`` when given, else raised as one-line :class:`DataNotFound` (the
    first one). No path at all is :class:`InvalidValue`.
    """
    raw_paths = list(paths)
    if not raw_paths:
        raise InvalidValue("no run folders given; usage: droplab report RUN [RUN ...] --out report.html")
    problems: list[Skipped] = []
    out: list[Path] = []
    for raw in raw_paths:
        p = Path(raw)
        if is_run(p):
            out.append(p)
        elif not p.exists():
            problems.append(Skipped(str(p), "missing folder",
                                    "does not exist; pass folders written by droplab"))
        elif not p.is_dir():
            problems.append(Skipped(str(p), "not a run folder", "is a file, not a run folder"))
        elif (entries := _listing(p, problems)) is not None:
            kids = [c for c in entries if is_run(c)]
            if not kids:
                problems.append(_not_a_run(p, entries, named=True))
            out.extend(kids)
            for c in entries:  # sibling folders that are not runs: say so
                if c.is_dir() and c not in kids and not _ignored(c):
                    sub = _listing(c, problems)
                    if sub is not None:
                        problems.append(_not_a_run(c, sub, named=False))
    if skipped is None and problems:
        raise DataNotFound(problems[0].message)
    if skipped is not None:
        skipped.extend(problems)
    seen: set[Path] = set()
    unique = []
    for p in out:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def find_images(root: Path, skipped: list[Skipped]) -> list[Path]:
    """Images in ``root`` and its sub-folders (not in nested runs or report folders), by name."""
    found: list[Path] = []
    stack = [root]
    while stack:
        d = stack.pop()
        entries = _listing(d, skipped)
        for e in entries or ():
            if e.name.startswith("."):
                continue
            if e.is_dir():
                if not is_run(e) and not is_report_files(e) and len(e.relative_to(root).parts) < IMAGE_DEPTH:
                    stack.append(e)
            elif e.suffix.lower() in IMAGE_TYPES:
                found.append(e)
    return sorted(found, key=lambda q: natural_key(str(q.relative_to(root))))


def load_run_record(path: str | Path) -> RunRecord:
    """Read one run folder; a folder without ``config.json`` is a one-line :class:`DataNotFound`.

    Damaged files inside it do not raise: they are listed in the record's ``skipped``.
    """
    run = RunDir.open(path)
    skipped: list[Skipped] = []
    config = read_json_object(run.config_path, skipped)
    if not run.summary_path.exists() and not run.summary_path.is_symlink():
        skipped.append(Skipped(str(run.summary_path), "missing file",
                               "is missing (the run has not finished, or was interrupted)"))
    summary = read_json_object(run.summary_path, skipped)
    evaluation = read_json_object(run.path / EVALUATION, skipped)
    metrics = read_metrics(run.metrics_path, skipped)
    entries = _listing(run.path, skipped) or []
    children = [c for c in entries if is_run(c)]
    images = find_images(run.path, skipped)
    uncertainty = npz_uncertainty(run.path, skipped)
    sequences, gallery, n_singles = select_images(images, run.path, skipped)
    cfg, summ = config or {}, summary or {}
    task = str(cfg.get("task") or summ.get("task") or "run")
    readable = (config is not None or summary is not None or evaluation is not None
                or bool(metrics or uncertainty or sequences or gallery))
    return RunRecord(
        path=run.path, label=run.path.name, task=task, config=cfg, summary=summ,
        metrics=metrics, evaluation=evaluation, images=images, children=children,
        uncertainty=uncertainty, sequences=sequences, gallery=gallery, n_singles=n_singles,
        skipped=skipped, readable=readable,
    )


def unique_labels(records: Sequence[RunRecord]) -> None:
    """Make labels unique by prefixing parent folders where names collide."""
    for depth in range(1, 6):
        labels = [r.label for r in records]
        dupes = {lab for lab in labels if labels.count(lab) > 1}
        if not dupes:
            return
        for r in records:
            if r.label in dupes:
                parts = r.path.resolve().parts
                r.label = "/".join(parts[-(depth + 1):])
    for i, r in enumerate(records):  # same folder given twice under different names
        r.label = f"{r.label}#{i + 1}"


def read_runs(paths: Iterable[str | Path]) -> tuple[list[RunRecord], list[Skipped]]:
    """Every readable run named by ``paths`` and every problem met, each listed once.

    Raises one-line :class:`InvalidValue` for no paths and :class:`DataNotFound` when
    nothing at all is readable (naming the first problem).
    """
    skipped: list[Skipped] = []
    records: list[RunRecord] = []
    for p in expand_run_paths(paths, skipped):
        rec = load_run_record(p)
        skipped.extend(rec.skipped)
        if rec.readable:
            records.append(rec)
        else:
            skipped.append(Skipped(str(rec.path), "run left out",
                                   "holds nothing readable; it is left out of the report"))
    skipped = list(dict.fromkeys(skipped))  # each problem once, in the order met
    if not records:
        first = skipped[0].message if skipped else "no run folder holds anything readable"
        more = f" (and {len(skipped) - 1} more problems)" if len(skipped) > 1 else ""
        raise DataNotFound(f"nothing to report: {first}{more}")
    unique_labels(records)
    return records, skipped
