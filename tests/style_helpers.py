"""Shared pieces of the style-transfer tests (tests/test_style*.py): an offline torch hub,
the CLI run with ``--json`` and one summary object parsed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from droplab.cli import main


def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No weight downloads in tests, and an empty torch hub cache."""
    monkeypatch.setenv("DROPLAB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, dict, str]:
    """``droplab ARGS --json --device cpu``: exit code, the summary (``{}`` on failure),
    stderr."""
    code = main([*args, "--json", "--device", "cpu"])
    out, err = capsys.readouterr()
    summary = json.loads(out.strip().splitlines()[-1]) if code == 0 else {}
    return code, summary, err
