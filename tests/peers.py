"""Optional peer libraries the uncertainty tests compare against (skip when absent).

torch-uncertainty (``pip install torch-uncertainty lightning``, in the ``dev`` extra) is
imported once per test session; its top-level package needs Lightning.
"""

from __future__ import annotations

import functools
from types import ModuleType

import pytest


@functools.cache
def _import_tu() -> tuple[ModuleType, ModuleType] | str:
    try:
        import torch_uncertainty.metrics.classification as metrics
        import torch_uncertainty.post_processing as post
    except Exception as exc:  # absent, or a broken optional install
        return f"{type(exc).__name__}: {exc}"
    return metrics, post


def torch_uncertainty() -> tuple[ModuleType, ModuleType]:
    """``(torch_uncertainty.metrics.classification, torch_uncertainty.post_processing)``."""
    found = _import_tu()
    if isinstance(found, str):
        pytest.skip(f"torch-uncertainty not importable ({found[:80]})")
    return found
