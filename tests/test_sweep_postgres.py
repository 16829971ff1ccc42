"""Many workers on one PostgreSQL study: a throwaway server on a loopback port.

The server runs from its own temporary data directory; as root, initdb/pg_ctl run as the
``nobody`` user (PostgreSQL refuses to run as root). Skips only when the server binaries
are absent (``.ci/run`` installs the Debian ``postgresql`` package, so never in CI).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def _pg_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    cands = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(cands[-1]).parent if cands else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def postgres_url() -> Iterator[str]:
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    root = Path(tempfile.mkdtemp(prefix="droplab-pg-"))
    root.chmod(0o755)
    data, sock = root / "data", root / "sock"
    data.mkdir()
    sock.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:  # postgres refuses root: run the server as nobody
        import pwd

        nobody = pwd.getpwnam("nobody")
        for d in (data, sock):
            os.chown(d, nobody.pw_uid, nobody.pw_gid)
        as_user = ["runuser", "-u", "nobody", "--"]
    port = _free_port()
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust",
                    "-U", "postgres", "--no-sync", "-E", "UTF8"],
                   check=True, capture_output=True)
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(sock / "log"),
                    "-w", "-o", opts, "start"], check=True, capture_output=True)
    try:
        import psycopg2

        con = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        con.autocommit = True
        con.cursor().execute("CREATE DATABASE sweep")
        con.close()
        yield f"postgresql://postgres@127.0.0.1:{port}/sweep"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                        "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


ARGS = ["--dataset", "digits", "--limit", "30", "--model", "mlp", "--threads", "1",
        "--device", "cpu", "--attack-samples", "40", "--rates", "0:0.5:6", "--folds", "2",
        "--epochs", "2", "--heartbeat-interval", "2", "--study-name", "pgsweep"]


def test_two_local_workers_and_a_joining_worker_share_one_postgres_study(
    postgres_url: str, tmp_path: Path
) -> None:
    import optuna
    from optuna.trial import TrialState

    from droplab.tasks.sweep import driver_url

    env = {**os.environ, "DROPLAB_PROGRESS": "0"}
    base = [sys.executable, "-m", "droplab", "sweep", *ARGS, "--storage", postgres_url]
    leader = subprocess.Popen([*base, "--workers", "2", "--out", str(tmp_path / "lead"),
                               "--json"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait for the leader to create the study
        if "pgsweep" in {s.study_name for s in optuna.get_all_study_summaries(driver_url(postgres_url))}:
            break
        time.sleep(0.5)
    joiner = subprocess.run([*base, "--join", "--out", str(tmp_path / "join"), "--json"],
                            env=env, capture_output=True, text=True, timeout=300)
    out, err = leader.communicate(timeout=300)
    assert leader.returncode == 0, err
    assert joiner.returncode == 0, joiner.stderr
    summary = json.loads(out)
    joined = json.loads(joiner.stdout)
    # a joiner leaves once no trial is left to start; the leader's workers may still be
    # finishing theirs then, so its study_done is a snapshot and the leader's summary decides
    assert joined["joined"] and isinstance(joined["study_done"], bool)
    assert summary["complete"] and summary["n_complete"] + summary["n_pruned"] == 6
    assert summary["storage"].startswith("postgresql://")

    study = optuna.load_study(study_name="pgsweep", storage=driver_url(postgres_url))
    done = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert sorted(t.params["rate"] for t in done) == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]  # once each
    workers = {t.user_attrs["worker"] for t in done}
    assert len(workers) >= 2  # the work really was shared between processes

    # a command whose search space differs from the stored one cannot join
    bad = subprocess.run([sys.executable, "-m", "droplab", "sweep", *ARGS, "--rates", "0,0.9",
                          "--storage", postgres_url, "--join", "--out", str(tmp_path / "bad")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert "different search space" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
