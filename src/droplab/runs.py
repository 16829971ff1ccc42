"""Run folders and atomic writes.

A run folder (``runs/<task>-<timestamp>`` unless ``--out DIR`` is given) holds:

- ``config.json``   everything needed to repeat the run,
- ``metrics.jsonl`` one JSON object per epoch or step,
- ``checkpoint.pt`` the latest state, written atomically (temp file, fsync, rename),
- ``summary.json``  the final figures,
- images and plots the task makes.

Every file here is written through a temporary file and :func:`os.replace`, so a crash or
a full disk never leaves a half-written file in place of a good one.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

import torch

from droplab.errors import DataNotFound, UserError

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"


class DiskWriteError(UserError, OSError):
    """Writing a result failed (disk full, no permission); the previous file is intact."""


def to_jsonable(obj: Any) -> Any:
    """Convert dataclasses, paths, tensors, NumPy scalars and tuples to JSON values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.tolist()) if obj.numel() != 1 else to_jsonable(obj.item())
    if hasattr(obj, "item") and callable(obj.item):  # NumPy scalars
        return to_jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else (math.inf if obj > 0 else -math.inf)
    return obj


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success fsync it and rename over ``path``.

    On any error the temporary file is removed and ``path`` is left untouched; an
    ``OSError`` (e.g. disk full) becomes a one-line :class:`DiskWriteError`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _unlink_quietly(tmp)
        raise DiskWriteError(
            f"could not write {path}: {exc.strerror or exc}; the previous file (if any) is intact"
        ) from exc
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _unlink_quietly(path: str | Path) -> None:
    with suppress(OSError):
        os.unlink(path)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_open(path, "w") as fh:
        json.dump(to_jsonable(obj), fh, indent=2, allow_nan=True)
        fh.write("\n")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write raw bytes (e.g. an encoded PNG), atomically."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through a temporary file and rename."""
    with atomic_open(path, "wb") as fh:
        torch.save(obj, fh)


def default_run_dir(task: str, root: str | Path = "runs") -> Path:
    """``runs/<task>-<YYYYmmdd-HHMMSS>`` (a numeric suffix avoids collisions)."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{task}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


class RunDir:
    """A run folder: config, metrics log, checkpoint and summary.

    >>> run = RunDir.create("runs/demo", task="train")      # doctest: +SKIP
    >>> run.write_config(cfg); run.log({"epoch": 1, "loss": 0.3})  # doctest: +SKIP
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # -- creation -----------------------------------------------------------------------
    @classmethod
    def create(cls, out: str | Path | None, task: str, *, resume: bool = False) -> RunDir:
        """Make (or, with ``resume``, reopen) a run folder.

        A new run refuses a folder that already holds a run, so nothing is overwritten;
        ``resume`` requires a folder with a ``config.json``.
        """
        path = Path(out) if out else default_run_dir(task)
        run = cls(path)
        if resume:
            if not run.config_path.exists():
                raise DataNotFound(
                    f"cannot resume: {path} has no {CONFIG}; pass the folder of an earlier run"
                )
            return run
        if run.config_path.exists():
            raise UserError(
                f"{path} already holds a run; pass --resume to continue it or a new --out folder"
            )
        path.mkdir(parents=True, exist_ok=True)
        return run

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

    # -- config and summary ---------------------------------------------------------------
    def write_config(self, config: Any, task: str | None = None) -> None:
        data = to_jsonable(config)
        if task is not None:
            data = {"task": task, **data}
        atomic_write_json(self.config_path, data)

    def read_config(self) -> dict[str, Any]:
        return json.loads(self.config_path.read_text())

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self.summary_path, summary)

    def read_summary(self) -> dict[str, Any] | None:
        if not self.summary_path.exists():
            return None
        return json.loads(self.summary_path.read_text())

    # -- metrics --------------------------------------------------------------------------
    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON line to ``metrics.jsonl`` (flushed and fsynced)."""
        line = json.dumps(to_jsonable(record), allow_nan=True) + "\n"
        with open(self.metrics_path, "a") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

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
        atomic_torch_save(state, self.path / name)

    def load_checkpoint(
        self, name: str = CHECKPOINT, map_location: str | torch.device = "cpu"
    ) -> dict[str, Any] | None:
        path = self.path / name
        if not path.exists():
            return None
        try:
            return torch.load(path, map_location=map_location, weights_only=False)
        except Exception as exc:  # truncated or foreign file
            raise UserError(f"checkpoint {path} cannot be read ({exc.__class__.__name__}); "
                            "delete it to start over") from exc
