"""Run folders.

A run folder (``runs/<task>-<timestamp>`` unless ``--out DIR`` is given) holds:

- ``config.json``   everything needed to repeat the run,
- ``metrics.jsonl`` one JSON object per epoch or step,
- ``checkpoint.pt`` the latest state, written atomically (temp file, fsync, rename),
- ``summary.json``  the final figures,
- images and plots the task makes.

Every file here is written through a temporary file and :func:`os.replace`
(:mod:`droplab.fileio`), so a crash or a full disk never leaves a half-written file in
place of a good one; checkpoints are read without running code
(:mod:`droplab.runs.checkpoint`).
"""

from __future__ import annotations

import atexit
import datetime as _dt
import json
import os
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import torch

from droplab.errors import DataNotFound, UserError
from droplab.fileio import DiskWriteError, atomic_open, atomic_write_json, to_jsonable
from droplab.runs.checkpoint import RESUME_ADVICE, load_checkpoint, save_checkpoint
from droplab.runs.lock import LOCK, RunLock

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"


def default_run_dir(task: str, root: str | Path = "runs") -> Path:
    """``runs/<task>-<YYYYmmdd-HHMMSS>`` (a numeric suffix avoids collisions)."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{task}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


_RUN_FILES = frozenset({CONFIG, METRICS, CHECKPOINT, SUMMARY})


def _scratch(name: str) -> bool:
    """The lock and temporary files of atomic writes: never results."""
    return name == LOCK or (name.startswith(".") and name.endswith(".tmp"))


def check_folder_path(path: Path) -> None:
    """One-line error when ``path`` cannot be a folder: it is a file, or lies under one."""
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} is a file, not a folder; pass a folder for the run")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"--out {path} cannot be created: {parent} is a file; pass "
                                "a folder path")
            if not os.access(parent, os.W_OK | os.X_OK) and not path.exists():
                raise UserError(f"--out {path} cannot be created: {parent} is not writable; "
                                "choose a folder you can write to")
            return


class RunFileError(UserError, ValueError):
    """A ``config.json``/``summary.json`` that is not a readable JSON object."""


#: largest JSON file of a run folder read (config and summary are a few KB)
MAX_JSON_BYTES = 64 * 2**20


def read_json_file(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path`` (``None`` when there is no such file), read so that a
    hostile file cannot hang or crash the reader: only regular files (a FIFO would block,
    ``/dev/zero`` never ends), at most :data:`MAX_JSON_BYTES`, nesting errors caught."""
    if not path.exists() and not path.is_symlink():
        return None
    advice = "restore it from a copy of the run"
    if not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file"
        raise RunFileError(f"{path} is {kind}; {advice}")
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_JSON_BYTES + 1)
    except OSError as exc:
        raise RunFileError(f"{path} cannot be read ({exc.strerror}); {advice}") from None
    if len(data) > MAX_JSON_BYTES:
        raise RunFileError(f"{path} is larger than {MAX_JSON_BYTES >> 20} MB, not a droplab "
                           f"file; {advice}")
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise RunFileError(f"{path} is not valid JSON; {advice}") from None
    except RecursionError:
        raise RunFileError(f"{path} is nested too deeply to be a droplab file; {advice}") from None
    if not isinstance(obj, dict):
        raise RunFileError(f"{path} holds no JSON object; {advice}")
    return obj


#: new runs started by this process: (run, folder made here, names it held before)
_NEW_RUNS: list[tuple[RunDir, bool, frozenset[str]]] = []


def _listing(path: Path) -> frozenset[str]:
    return frozenset(p.name for p in path.iterdir() if not _scratch(p.name))


def _remove_rejected_starts() -> None:
    """At exit: a new run that produced nothing but its config.json loses it (and its
    folder, if this process made it and it is now empty): no dead-end folder is left."""
    for run, created, before in _NEW_RUNS:
        with suppress(OSError):
            now = _listing(run.path)
            if run._lock is None or (now - before) - {CONFIG} or now & (_RUN_FILES - {CONFIG}):
                continue
            run.config_path.unlink(missing_ok=True)
            run.close()
            if created and not any(run.path.iterdir()):
                run.path.rmdir()
    _NEW_RUNS.clear()


class RunDir:
    """A run folder: config, metrics log, checkpoint and summary.

    >>> run = RunDir.create("runs/demo", task="train")      # doctest: +SKIP
    >>> run.write_config(cfg); run.log({"epoch": 1, "loss": 0.3})  # doctest: +SKIP
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock: RunLock | None = None

    # -- creation -----------------------------------------------------------------------
    @classmethod
    def create(cls, out: str | Path | None, task: str, *, resume: bool = False,
               resumable: bool = True) -> RunDir:
        """Make (or, with ``resume``, reopen) a run folder and hold its lock.

        - The path is checked first: a file, a folder under a file or one that cannot be
          made is a one-line error, before anything is written.
        - A new run refuses a folder that holds another run (its config, metrics,
          checkpoint or summary plus anything it produced), so nothing is overwritten; the
          advice depends on ``resumable`` (``--resume`` exists for the command or not).
        - A folder holding only what a rejected start left (``config.json``, a stale lock)
          is taken over, and such leftovers of this process's own rejected start are
          removed when the process exits.
        - ``resume`` requires a folder with a ``config.json``.
        - One writer at a time: the folder's ``.lock`` (:mod:`droplab.runs.lock`) is held
          until the process exits (or :meth:`close`); a second writer gets a one-line
          :class:`~droplab.runs.lock.RunLocked`.
        """
        path = Path(out) if out else default_run_dir(task)
        check_folder_path(path)
        run = cls(path)
        if resume:
            if not path.is_dir():
                raise DataNotFound(f"cannot resume: {path} does not exist; pass the --out "
                                   "folder of an earlier run")
            run._lock = RunLock.acquire(path)
            if not run.config_path.exists():
                raise DataNotFound(
                    f"cannot resume: {path} holds no run (no {CONFIG}); start it without "
                    "--resume or pass the folder of an earlier run"
                )
            return run
        created = not path.exists()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the run folder {path} ({exc.strerror}); choose a "
                            "folder you can write to") from None
        run._lock = RunLock.acquire(path)
        if run.holds_run():
            run.close()
            advice = ("pass --resume to continue it or a new --out folder" if resumable
                      else "choose a new --out folder")
            raise UserError(f"{path} already holds a run; {advice} (nothing was changed)")
        _NEW_RUNS.append((run, created, _listing(path)))
        return run

    def holds_run(self) -> bool:
        """True when the folder holds a run's results, i.e. more than a rejected start
        leaves (``config.json``, the lock, temporary files)."""
        if not self.path.is_dir():
            return False
        names = _listing(self.path)
        return bool(names & _RUN_FILES) and bool(names - {CONFIG})

    def close(self) -> None:
        """Release the folder's lock now (it is released at exit otherwise)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """Open an existing run folder (for evaluate/report/serve)."""
        run = cls(path)
        if not run.path.is_dir():
            raise DataNotFound(f"run folder {run.path} does not exist")
        if not run.config_path.exists():
            raise DataNotFound(f"{run.path} is not a droplab run folder (no {CONFIG})")
        return run

    # -- paths --------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- paths stored in config.json ------------------------------------------------------
    def record_path(self, path: str | Path) -> str:
        """``path`` as ``config.json`` should store it: relative to the run folder when it
        lies inside it (so a copied or moved folder still finds it), absolute otherwise."""
        file = Path(path).resolve()
        try:
            return file.relative_to(self.path.resolve()).as_posix()
        except ValueError:
            return str(file)

    def resolve_path(self, stored: str | Path, stored_out: str | Path | None = None) -> Path:
        """The file a stored path means for the folder as it is now.

        Relative paths are relative to the run folder. An absolute path inside
        ``stored_out`` (where the run was created; folders of the previous release stored
        absolute paths) is moved along with the folder; other absolute paths stay.
        """
        file = Path(stored)
        if not file.is_absolute():
            return (self.path / file).resolve()
        if stored_out is not None:
            try:
                return (self.path / file.relative_to(Path(stored_out).resolve())).resolve()
            except ValueError:
                pass
        return file

    # -- config and summary ---------------------------------------------------------------
    def write_config(self, config: Any, task: str | None = None) -> None:
        data = to_jsonable(config)
        if task is not None:
            data = {"task": task, **data}
        atomic_write_json(self.config_path, data)

    def read_config(self) -> dict[str, Any]:
        """The stored config; a one-line :class:`RunFileError` when it is not a readable
        JSON object (garbage, cut short, a folder, a FIFO or device, too large)."""
        config = read_json_file(self.config_path)
        if config is None:
            raise DataNotFound(f"{self.path} is not a droplab run folder (no {CONFIG})")
        return config

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self.summary_path, summary)

    def read_summary(self) -> dict[str, Any] | None:
        """The final figures, ``None`` before the run finished; :class:`RunFileError` when
        the file is there but not a readable JSON object."""
        return read_json_file(self.summary_path)

    # -- metrics --------------------------------------------------------------------------
    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON line to ``metrics.jsonl`` (flushed and fsynced)."""
        line = (json.dumps(to_jsonable(record), allow_nan=True) + "\n").encode()
        try:
            fd = os.open(self.metrics_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise DiskWriteError(f"could not append to {self.metrics_path}: "
                                 f"{exc.strerror or exc}; the lines before are intact") from None
        try:
            size = os.fstat(fd).st_size
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except OSError as exc:
                with suppress(OSError):  # never leave half a line behind
                    os.ftruncate(fd, size)
                raise DiskWriteError(f"could not append to {self.metrics_path}: "
                                     f"{exc.strerror or exc}; the lines before are intact"
                                     ) from None
        finally:
            os.close(fd)

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        out = []
        for line in self.metrics_path.read_text().splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a crash
                continue
        return out

    def truncate_metrics(self, keep: Callable[[dict[str, Any]], bool]) -> None:
        """Keep only the records for which ``keep`` is true (used on resume)."""
        records = [r for r in self.read_metrics() if keep(r)]
        with atomic_open(self.metrics_path, "w") as fh:
            for r in records:
                fh.write(json.dumps(r, allow_nan=True) + "\n")

    # -- checkpoints ----------------------------------------------------------------------
    def save_checkpoint(self, state: dict[str, Any], name: str = CHECKPOINT) -> None:
        """Write ``state`` (tensors and plain Python only) atomically."""
        save_checkpoint(state, self.path / name)

    def load_checkpoint(
        self,
        name: str = CHECKPOINT,
        map_location: str | torch.device = "cpu",
        *,
        advice: str = RESUME_ADVICE,
    ) -> dict[str, Any] | None:
        """The checkpoint, read safely; ``None`` when there is none yet.

        ``advice`` ends the one-line error for a broken file (the default suits a
        resume; readers of a model pass :data:`~droplab.runs.checkpoint.MODEL_ADVICE`).
        """
        path = self.path / name
        if not path.exists():
            return None
        return load_checkpoint(path, map_location, advice=advice)


atexit.register(_remove_rejected_starts)
