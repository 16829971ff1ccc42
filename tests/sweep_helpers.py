"""Shared piece of the ``droplab sweep`` CLI tests (tests/test_cli_sweep.py,
tests/test_sweep_gan.py)."""

from __future__ import annotations

import pytest

from droplab.cli import main


def run_sweep(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``droplab sweep ARGV`` in this process: exit status, stdout, stderr."""
    rc = main(["sweep", *argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err
