"""What every training loop carries between steps and stores in its checkpoint.

- :func:`capture_rng` / :func:`restore_rng`: the one RNG capture (Python, NumPy, torch CPU
  and CUDA), in the checkpoint contract's types (NumPy's state as a tensor), so a resumed
  run draws the same dropout masks, augmentations and noise as an uninterrupted one.
- :class:`Progress`: epoch, batch within the epoch, optimiser step, training time and
  whether the run finished — the part of the run state that all loops share.
- :func:`check_finite` and :class:`TrainingDiverged`: the NaN guard. A NaN/inf (or, with a
  limit, an exploding) loss stops the run with one line saying which loss, where, and that
  the last good checkpoint is kept (no checkpoint is written after a bad value).
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch

from droplab.errors import UserError
from droplab.runs import RunDir


def capture_rng(device: torch.device | str | None = None) -> dict[str, Any]:
    """Every global RNG state: Python, NumPy, torch CPU and (when present) CUDA."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # type: ignore[misc]
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos),
                  int(has_gauss), float(gauss)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Set the global RNGs back to a :func:`capture_rng` state (also release 0.1's)."""
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
        np.random.set_state((kind, keys.astype(np.uint32), int(pos), int(has_gauss),
                             float(gauss)))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


@dataclass
class Progress:
    """How far a run got: ``epoch`` epochs completed, ``batch`` batches into the next one
    (a mid-epoch checkpoint), ``step`` optimiser steps, ``time_s`` training seconds
    before this process, ``finished`` once the last epoch or step is done."""

    epoch: int = 0
    batch: int = 0
    step: int = 0
    time_s: float = 0.0
    finished: bool = False

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for f in fields(self):
            if f.name in state and state[f.name] is not None:
                setattr(self, f.name, type(f.default)(state[f.name]))


class TrainingDiverged(UserError):
    """A loss became NaN/inf or exploded; the last good checkpoint is kept."""


def check_finite(name: str, value: float, *, step: int, run: RunDir | None,
                 epoch: int | None = None, limit: float | None = None,
                 advice: str = "lower --lr") -> None:
    """Raise :class:`TrainingDiverged` when ``value`` is NaN/inf or ``|value| > limit``.

    ``step`` (and, for epoch loops, the 1-based ``epoch``) say where; the message says
    which checkpoint of ``run`` is kept (the guard runs before anything is saved).
    """
    if math.isfinite(value) and (limit is None or abs(value) <= limit):
        return
    has_ckpt = run is not None and run.checkpoint_path.exists()
    if has_ckpt and epoch is not None and epoch > 1:
        kept = f"the last good checkpoint (epoch {epoch - 1}) is kept in {run.path}"  # type: ignore[union-attr]
    elif has_ckpt:
        kept = f"the last good checkpoint is kept in {run.path}"  # type: ignore[union-attr]
    else:
        kept = "no checkpoint had been written yet"
    where = f"epoch {epoch}, step {step}" if epoch is not None else f"step {step}"
    what = "is not finite" if not math.isfinite(value) else f"exceeds --max-loss {limit:g}"
    raise TrainingDiverged(f"training diverged at {where}: {name}={value:.4g} {what}; "
                           f"{kept}; {advice}")
