"""droplab.runs.lock: one writer per run folder, stale locks taken over, one-line refusals."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from droplab.runs import RunDir
from droplab.runs.lock import LOCK, RunLocked

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO / "src"))}


def _holder(folder: Path, *, resume: bool = False) -> subprocess.Popen[str]:
    """Another process that creates (or resumes) ``folder`` and waits to be killed."""
    script = (f"from droplab.runs import RunDir; import sys, time\n"
              f"r = RunDir.create({str(folder)!r}, task='train', resume={resume})\n"
              "r.write_config({'x': 1}, task='train'); r.log({'epoch': 1})\n"
              "print('ready', flush=True); time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env=_env())
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_second_writer_is_refused_in_one_line_then_a_dead_holder_is_taken_over(
        tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _holder(out)
    try:
        owner = json.loads((out / LOCK).read_text())
        assert owner["pid"] == proc.pid and owner["host"] == socket.gethostname()
        with pytest.raises(RunLocked) as info:
            RunDir.create(out, task="train", resume=True)
        msg = str(info.value)
        assert "\n" not in msg and f"process {proc.pid}" in msg and "in use" in msg
        before = (out / "metrics.jsonl").read_bytes()
    finally:
        proc.send_signal(signal.SIGKILL)  # no clean-up code runs: the lock file stays
        proc.wait(timeout=30)
    assert (out / LOCK).exists()
    run = RunDir.create(out, task="train", resume=True)  # stale: the kernel dropped the flock
    assert json.loads((out / LOCK).read_text())["pid"] == os.getpid()
    assert (out / "metrics.jsonl").read_bytes() == before
    run.close()
    assert not (out / LOCK).exists()


def test_stale_lock_file_with_a_dead_pid_is_taken_over(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    (out / LOCK).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    with RunDir.create(out, task="train") as run:
        assert json.loads((out / LOCK).read_text())["pid"] == os.getpid()
        assert run.path == out
    assert not (out / LOCK).exists()


def test_live_flock_holder_is_respected_even_in_this_process(tmp_path: Path) -> None:
    """Whoever holds the flock holds the folder, whatever the file says."""
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK).write_text(json.dumps({"pid": 999999, "host": "elsewhere",
                                        "started": "2026-01-01T00:00:00"}))
    fd = os.open(out / LOCK, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        with pytest.raises(RunLocked, match="process 999999 on elsewhere since 2026"):
            RunDir.create(out, task="train")
    finally:
        os.close(fd)
    RunDir.create(out, task="train").close()  # released: now it is free


def test_reentrant_within_a_process_and_released_by_the_last_holder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    a = RunDir.create(out, task="train")
    a.write_config({"x": 1}, task="train")
    b = RunDir.create(out, task="train", resume=True)  # e.g. the CLI reading config.json
    b.close()
    assert (out / LOCK).exists()  # a still holds it
    a.close()
    assert not (out / LOCK).exists()


def test_two_resumes_at_once_only_one_writes(tmp_path: Path) -> None:
    """The issue's case: two `--resume` of one folder; the second must not append."""
    out = tmp_path / "run"
    with RunDir.create(out, task="train") as run:
        run.write_config({"x": 1}, task="train")
    first = _holder(out, resume=True)
    try:
        second = subprocess.run(
            [sys.executable, "-c",
             f"from droplab.runs import RunDir\n"
             f"import sys\nfrom droplab.errors import UserError\n"
             f"try:\n    RunDir.create({str(out)!r}, task='train', resume=True)\n"
             f"except UserError as e:\n    print(e, file=sys.stderr); sys.exit(2)\n"],
            capture_output=True, text=True, timeout=60, env=_env())
        assert second.returncode == 2
        assert len(second.stderr.strip().splitlines()) == 1 and "in use" in second.stderr
        assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    finally:
        first.kill()
        first.wait(timeout=30)
