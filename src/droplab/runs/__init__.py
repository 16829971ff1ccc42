"""Run folders you can trust: layout, atomic writes, safe checkpoints, restoring models.

- :mod:`droplab.runs.folder`: :class:`RunDir` (config, metrics log, checkpoint, summary);
- :mod:`droplab.runs.checkpoint`: the checkpoint contract, safe loading;
- :mod:`droplab.runs.restore`: :func:`~droplab.runs.restore.load_run`, the trained model of
  any run kind (train, finetune, gan, style-train) from its folder.

The atomic writes live in :mod:`droplab.fileio` (base layer) and are re-exported here.
:mod:`~droplab.runs.restore` is imported on demand (``from droplab.runs.restore import
load_run``) because it pulls in the model zoo.
"""

from droplab.fileio import (
    DiskWriteError,
    UnreadableFile,
    UnsafeFile,
    atomic_open,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    to_jsonable,
)
from droplab.runs.checkpoint import load_checkpoint, save_checkpoint
from droplab.runs.folder import CHECKPOINT, CONFIG, METRICS, SUMMARY, RunDir, default_run_dir

__all__ = [
    "CHECKPOINT",
    "CONFIG",
    "METRICS",
    "SUMMARY",
    "DiskWriteError",
    "RunDir",
    "UnreadableFile",
    "UnsafeFile",
    "atomic_open",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_json",
    "default_run_dir",
    "load_checkpoint",
    "save_checkpoint",
    "to_jsonable",
]
