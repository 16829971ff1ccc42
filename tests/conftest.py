"""Shared fixtures: seeded torch, the optional ``../shared`` test data, temp run folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def shared_root() -> Path | None:
    """``$DROPLAB_SHARED`` or the ``shared/`` folder beside the checkout, if present."""
    env = os.environ.get("DROPLAB_SHARED")
    candidates = [Path(env)] if env else []
    candidates += [REPO.parent / "shared", REPO / "shared"]
    for c in candidates:
        if (c / "datasets").is_dir() or (c / "images").is_dir():
            return c
    return None


@pytest.fixture
def shared_dir() -> Path:
    root = shared_root()
    if root is None:
        pytest.skip("needs ../shared test data (set DROPLAB_SHARED)")
    return root


# Tests use tiny models: one intra-op thread is faster than two for them and, on a busy
# machine, avoids OpenMP oversubscription (measured 10-100x slowdowns with 2 threads).
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by subprocess-based tests


@pytest.fixture(autouse=True)
def _quiet_and_seeded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DROPLAB_PROGRESS", "0")
    torch.manual_seed(0)
