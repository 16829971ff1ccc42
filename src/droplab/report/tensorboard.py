"""``droplab report --tensorboard DIR``: the runs' scalars as TensorBoard event files.

One sub-folder per run (named after its label); each metrics series is written with
``step`` as the global step when the records carry one, else ``epoch``, else the record
index; the summary's numbers are written at step 0 under ``summary/`` and the config as
text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from droplab.errors import UserError
from droplab.report.collect import RunRecord
from droplab.report.values import X_KEYS, flatten, is_number, safe_name
from droplab.runs import DiskWriteError


def export_tensorboard(records: Sequence[RunRecord], log_dir: str | Path) -> list[Path]:
    """Write each run's metrics (and summary scalars at step 0) as TensorBoard scalars."""
    try:  # deferred: tensorboard is an optional dependency (the dev extra)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package; pip install tensorboard") from None
    root = Path(log_dir)
    dirs = []
    for rec in records:
        d = root / safe_name(rec.label, "run")
        try:
            writer = SummaryWriter(log_dir=str(d))
        except OSError as exc:
            raise DiskWriteError(f"cannot write TensorBoard logs to {d}: {exc.strerror or exc}") from None
        with writer:
            for i, r in enumerate(rec.metrics):
                step = next((int(r[k]) for k in ("step", "epoch") if is_number(r.get(k))), i)
                for k, v in r.items():
                    if k not in X_KEYS and is_number(v):
                        writer.add_scalar(k, float(v), step)
            for k, v in flatten(rec.summary).items():
                if is_number(v):
                    writer.add_scalar(f"summary/{k}", float(v), 0)
            writer.add_text("config", "```\n" + json.dumps(rec.config, indent=2, default=str) + "\n```", 0)
        dirs.append(d)
    return dirs
