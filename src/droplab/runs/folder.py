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

import datetime as _dt
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from droplab.errors import DataNotFound, UserError
from droplab.fileio import atomic_open, atomic_write_json, to_jsonable
from droplab.runs.checkpoint import RESUME_ADVICE, load_checkpoint, save_checkpoint

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
