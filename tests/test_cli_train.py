"""``droplab train`` / ``droplab evaluate`` end to end on digits, in-process and as a
subprocess: files, figures, errors, a killed run resumed, a full disk."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from droplab.cli import main
from droplab.runs import load_checkpoint

TIMING = ("time_s", "images_per_s")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "DROPLAB_PROGRESS": "0"}


def train_args(out: Path, *extra: str, epochs: int = 2) -> list[str]:
    return ["train", "--dataset", "digits", "--model", "mlp", "--widths", "128", "--dropout", "0.5",
            "--epochs", str(epochs), "--device", "cpu", "--out", str(out), "--json", *extra]


def records(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING} for x in lines]


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("cli") / "run"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main(train_args(out, "--tensorboard", "--channels-last", "--classes", "0-4"))
    torch.set_num_threads(n)
    assert rc == 0
    return out, last_json(buf.getvalue())


def test_train_writes_run_folder(trained: tuple[Path, dict]) -> None:
    out, s = trained
    for f in ("config.json", "metrics.jsonl", "checkpoint.pt", "summary.json", "learning_curves.png"):
        assert (out / f).is_file(), f
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["task"] == "train" and cfg["data"]["classes"] == ["0", "1", "2", "3", "4"]
    assert cfg["train"]["channels_last"] is True and cfg["model"]["dropout"] == 0.5
    assert [r["epoch"] for r in records(out)] == [1, 2]
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert s == json.loads((out / "summary.json").read_text())
    # 5 classes: chance 0.2; two epochs of the MLP reach > 0.8
    assert s["num_classes"] == 5 and 0.8 < s["test_acc"] <= 1.0
    assert 0.0 <= s["test_ece"] <= 1.0 and s["test_loss"] > 0 and s["num_params"] > 0


def test_resume_of_finished_run_changes_nothing(trained: tuple[Path, dict],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out, s = trained
    before = {f: (out / f).read_bytes() for f in ("metrics.jsonl", "checkpoint.pt", "summary.json")}
    assert main(["train", "--out", str(out), "--resume", "--json"]) == 0
    assert last_json(capsys.readouterr().out) == s
    assert {f: (out / f).read_bytes() for f in before} == before


def test_evaluate_with_mc_writes_figures(trained: tuple[Path, dict],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out, s = trained
    assert main(["evaluate", str(out), "--mc", "4", "--device", "cpu", "--json"]) == 0
    ev = last_json(capsys.readouterr().out)
    assert ev["acc"] == pytest.approx(s["test_acc"]) and ev["nll"] == pytest.approx(s["test_loss"])
    assert ev["mc_samples"] == 4 and 0.8 < ev["mc_acc"] <= 1.0
    assert 0 <= ev["mc_mutual_information"] <= ev["mc_entropy"]
    for f in ("reliability.png", "confusion.png"):
        assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "evaluation.json").read_text()) == ev
    import numpy as np

    with np.load(out / "uncertainty.npz") as arrays:  # per test image, for the report
        n = s["test_images"]
        assert {k: arrays[k].shape for k in arrays} == {
            "mc_entropy": (n,), "mc_mutual_information": (n,), "correct": (n,)}
        assert (arrays["mc_mutual_information"] <= arrays["mc_entropy"] + 1e-6).all()
        assert arrays["correct"].mean() == pytest.approx(ev["mc_acc"])
    assert main(["evaluate", str(out), "--device", "cpu"]) == 0  # human output
    text = capsys.readouterr().out
    assert text.startswith("accuracy ") and "MC dropout" not in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "svhn"], "unknown dataset 'svhn'"),
        (["--model", "transformer"], "unknown model 'transformer'"),
        (["--dropout-kind", "zoneout"], "unknown dropout kind 'zoneout'"),
        (["--optimizer", "rmsprop"], "unknown optimizer 'rmsprop'"),
        (["--dropout-schedule", "zigzag"], "dropout schedule"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         args: list[str], message: str) -> None:
    assert main(train_args(tmp_path / "r", *args, epochs=1)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("droplab train: error: ") and message in err and "\n" not in err


def test_bad_rate_and_resume_errors(tmp_path: Path, trained: tuple[Path, dict],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(train_args(tmp_path / "r", "--dropout", "1.5")) == 2
    assert "outside [0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # refused before any folder was made
    assert main(["train", "--resume"]) == 2
    assert "--resume needs --out" in capsys.readouterr().err
    out, _ = trained
    assert main(["train", "--out", str(out), "--resume", "--model", "lenet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--model (stored 'mlp', given 'lenet')" in err
    assert main(["train", "--out", str(out), "--resume", "--classes", "0-9"]) == 2
    assert "classes" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_disk_full_keeps_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    real_save = torch.save
    calls = {"n": 0}

    def save(obj, fh, *a, **k):  # epoch 2's checkpoint hits a full disk half-way
        calls["n"] += 1
        if calls["n"] == 2:
            fh.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, fh, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    out = tmp_path / "r"
    assert main(train_args(out, epochs=3)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("droplab train: error: could not write") and "\n" not in err
    assert "No space left on device" in err and "intact" in err
    ck = load_checkpoint(out / "checkpoint.pt")
    assert ck["epoch"] == 1 and not ck["finished"]


def test_killed_run_resumes_to_the_same_numbers(tmp_path: Path) -> None:
    """SIGKILL a `python -m droplab train` once its 2nd epoch's checkpoint is written (the
    3rd metrics line follows it); `--resume` (given only the folder) finishes with exactly
    the metrics of an uninterrupted run with the same seed."""
    extra = ("--widths", "64", "--batch-size", "8", "--lr", "0.01", "--seed", "5")  # last --widths wins
    ref = tmp_path / "ref"
    assert main(train_args(ref, *extra, epochs=4)) == 0

    cut = tmp_path / "cut"
    cmd = [sys.executable, "-m", "droplab", *train_args(cut, *extra, epochs=4)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            metrics = cut / "metrics.jsonl"
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
    finally:
        proc.kill()
        _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-1000:]
    assert not (cut / "summary.json").exists()
    assert 2 <= load_checkpoint(cut / "checkpoint.pt")["epoch"] < 4

    res = subprocess.run([sys.executable, "-m", "droplab", "train", "--out", str(cut),
                          "--resume", "--json"], env=ENV, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    resumed = last_json(res.stdout)
    reference = json.loads((ref / "summary.json").read_text())
    assert records(cut) == records(ref)
    for key in ("test_acc", "test_loss", "test_ece", "test_brier", "best_val_acc", "epochs"):
        assert resumed[key] == reference[key], key
