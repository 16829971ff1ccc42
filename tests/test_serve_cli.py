"""The ``droplab serve`` command: option and run-folder errors in one line, and the real
command in a subprocess serving until Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from PIL import Image

from droplab.cli import main
from droplab.config import leaves
from droplab.serve.config import ServeConfig
from serve_helpers import REPO, make_runs, png_bytes


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_runs(tmp_path_factory, style=False)


def test_cli_rejects_invalid_runs(runs, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    gan = tmp_path / "gan"
    gan.mkdir()
    (gan / "config.json").write_text(json.dumps({"task": "gan"}))
    nockpt = tmp_path / "nockpt"
    nockpt.mkdir()
    (nockpt / "config.json").write_text(json.dumps({"task": "train"}))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    cases = [(tmp_path / "missing", "does not exist"), (tmp_path, "not a droplab run"),
             (gan, "'gan' run"), (nockpt, "checkpoint"), (broken, "not valid JSON")]
    for path, words in cases:
        assert main(["serve", str(runs["digits"]), str(path), "--port", "0"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("droplab serve: error:") and "\n" not in err, err
        assert words in err, err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(["serve", str(runs["digits"]), "--port", str(port)]) == 2
        assert "cannot listen" in capsys.readouterr().err
    for flag, value in [("--queue", "-1"), ("--max-uploads", "0"), ("--header-timeout", "0"),
                        ("--idle-timeout", "nan"), ("--body-timeout", "-5"),
                        ("--timeout", "inf")]:
        assert main(["serve", str(runs["digits"]), flag, value, "--port", "0"]) == 2, flag
        err = capsys.readouterr().err.strip()
        assert flag in err and "\n" not in err and err.startswith("droplab serve: error:"), err
    assert main(["serve", str(runs["digits"]), "--max-bytes", "ten"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--max-bytes" in err and "\n" not in err, err


def test_cli_serves_until_interrupted(runs) -> None:
    """The real command in a subprocess: page, health, classify; Ctrl-C → summary."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DROPLAB_PROGRESS": "0",
           "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "droplab", "serve", str(runs["digits"]), "--port", "0",
         "--max-bytes", "1MB", "--log-level", "warning", "--threads", "1", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stderr.readline()  # printed once the socket listens
        assert line.startswith("droplab serve: http://127.0.0.1:"), line
        url = line.split()[2].rstrip("/")
        with httpx.Client(base_url=url, timeout=60) as client:
            assert "<script>" in client.get("/").text
            assert client.get("/healthz").json()["limits"]["max_bytes"] == 1_000_000
            r = client.post("/v1/classify",
                            files={"file": ("x.png", png_bytes(Image.new("L", (8, 8), 9)))})
            assert r.status_code == 200 and r.json()["label"] in [str(i) for i in range(10)]
            assert client.post("/v1/classify").status_code == 400
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["task"] == "serve" and summary["responses"] == {"200": 3, "400": 1}




def test_help_is_generated_from_the_config_and_needs_no_web_framework() -> None:
    """Every ServeConfig option is a flag in ``droplab serve --help`` with its default, and
    building the parser imports neither FastAPI nor uvicorn (the optional ``serve`` extra)."""
    code = ("import sys, contextlib, io\nfrom droplab.cli import main\n"
            "buf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):\n"
            "    main(['serve', '--help'])\n"
            "print(buf.getvalue())\n"
            "print('HEAVY', sorted(m for m in ('fastapi', 'uvicorn', 'starlette') "
            "if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120, check=True).stdout
    assert out.strip().endswith("HEAVY []"), out[-300:]
    for leaf in leaves(ServeConfig, cli_only=True):
        if not leaf.option.positional:
            assert leaf.flag in out, leaf.flag
    assert "(default 32)" in out and "(default 10)" in out  # --max-uploads, timeouts
