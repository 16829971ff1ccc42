"""optuna-dashboard opens a sweep's study: the command the summary prints, started on
loopback, answers its JSON API with the study's trials (dev extra; skipped without it)."""

from __future__ import annotations

import json
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from droplab.tasks import sweep

pytest.importorskip("optuna_dashboard", reason="optuna-dashboard is in the dev extra")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def test_the_printed_dashboard_command_serves_the_study_on_loopback(tmp_path: Path) -> None:
    cfg = sweep.SweepConfig.build(dataset="digits", limit=20, model="mlp", epochs=1,
                                  device="cpu", out=str(tmp_path / "sw"), rates="0,0.5",
                                  folds=2, threads=1, attack_samples=20)
    summary = sweep.run(cfg)
    argv = shlex.split(summary["dashboard"])
    assert argv[0] == "optuna-dashboard"
    port = _free_port()
    # the console script `optuna-dashboard`, run by this interpreter (the package has no
    # __main__), with the arguments the summary printed
    launcher = [sys.executable, "-c", "import sys; from optuna_dashboard._cli import main; "
                "sys.exit(main())"]
    proc = subprocess.Popen([*launcher, *argv[1:], "--host", "127.0.0.1", "--port", str(port),
                             "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        studies = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                studies = _get(f"{base}/api/studies")
                break
            except OSError:
                time.sleep(0.5)
        assert studies is not None, proc.stderr.read().decode() if proc.stderr else ""
        [s] = studies["study_summaries"]
        assert s["study_name"] == summary["study_name"] and s["directions"] == ["maximize"]
        detail = _get(f"{base}/api/studies/{s['study_id']}?after=0")
        trials = detail["trials"]
        assert sorted(float(next(p["param_external_value"] for p in t["params"]
                                 if p["name"] == "rate")) for t in trials) == [0.0, 0.5]
        assert all(t["state"] == "Complete" for t in trials)
        assert [t["number"] for t in detail["best_trials"]] == [summary["best"]["trial"]]
        # the fold scores it plots are the ones droplab recorded
        by_rate = {r["rate"]: r["per_fold"]["acc"] for r in summary["settings"]}
        for t in trials:
            rate = float(next(p["param_external_value"] for p in t["params"] if p["name"] == "rate"))
            assert [v["value"] for v in sorted(t["intermediate_values"], key=lambda v: v["step"])] \
                == pytest.approx(by_rate[rate])
    finally:
        proc.terminate()
        proc.wait(timeout=30)
