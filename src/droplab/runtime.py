"""Devices, seeding and progress bars shared by every task."""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Iterable
from typing import Any, TypeVar

import numpy as np
import torch

from droplab.errors import InvalidValue, unknown_name

T = TypeVar("T")
DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """Turn ``auto|cpu|cuda[:N]|mps`` into a :class:`torch.device`.

    ``auto`` picks CUDA when present, then MPS, then the CPU. Asking for an accelerator
    that is not there is a :class:`~droplab.errors.UserError`.
    """
    if isinstance(spec, torch.device):
        return spec
    kind = spec.split(":", 1)[0]
    if kind not in DEVICES:
        raise unknown_name("device", spec, DEVICES)
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise InvalidValue("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    if kind == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise InvalidValue("--device mps was asked for but MPS is not available; use --device cpu or auto")
    return torch.device(spec)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator seeded with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen


def progress_enabled() -> bool:
    """Progress bars go to stderr when it is a terminal, unless ``DROPLAB_PROGRESS=0``.

    ``DROPLAB_PROGRESS=1`` forces them on (e.g. in a log file).
    """
    env = os.environ.get("DROPLAB_PROGRESS")
    if env is not None:
        return env not in ("0", "false", "no", "")
    return sys.stderr.isatty()


def progress(iterable: Iterable[T], **kwargs: Any) -> Iterable[T]:
    """A tqdm progress bar on stderr, disabled when :func:`progress_enabled` is false."""
    from tqdm.auto import tqdm

    kwargs.setdefault("disable", not progress_enabled())
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    return tqdm(iterable, file=sys.stderr, **kwargs)
