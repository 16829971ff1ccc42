"""``droplab active`` end to end on the bundled digits: the run folder, one record per
round, acquisitions that leave the pool, resume after a kill giving the uninterrupted
result, and every bad input as one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from droplab.cli import main
from droplab.errors import InvalidValue
from droplab.runs import RunDir
from droplab.tasks import active
from droplab.tasks.active import ActiveConfig, initial_split, labels_to_error

QUICK = dict(dataset="digits", limit=40, model="lenet", initial=10, step=5, rounds=2,
             train_steps=15, mc=4, val_size=20, device="cpu")


def _cfg(out: Path, **kw: Any) -> ActiveConfig:
    return ActiveConfig.build(**{**QUICK, **kw, "out": str(out)})


def test_initial_split_is_balanced_and_disjoint() -> None:
    labels = torch.arange(10).repeat_interleave(30)
    s = initial_split(labels, 25, 40, seed=3)
    counts = torch.bincount(labels[torch.tensor(s.labelled)], minlength=10)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 25
    assert len(s.val) == 40 and len(s.labelled) + len(s.val) + len(s.pool) == 300
    assert not (set(s.labelled) & set(s.val)) and not (set(s.labelled) & set(s.pool))
    assert initial_split(labels, 25, 40, seed=3) == s  # seeded
    with pytest.raises(InvalidValue, match="fewer than the 10 classes"):
        initial_split(labels, 5, 0, seed=0)
    with pytest.raises(InvalidValue, match="pool is empty"):
        initial_split(labels, 20, 280, seed=0)


def test_cli_run_writes_one_record_per_round(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "droplab", "active", "--dataset", "digits", "--limit", "40",
         "--model", "lenet", "--acquisition", "bald", "--initial", "10", "--step", "5",
         "--rounds", "2", "--train-steps", "15", "--mc", "4", "--val-size", "20",
         "--device", "cpu", "--out", str(out), "--json"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)  # exactly one JSON object
    assert summary["labels"] == [10, 15, 20] and len(summary["test_acc"]) == 3
    assert all(0.0 <= a <= 1.0 for a in summary["test_acc"])
    run = RunDir(out)
    records = run.read_metrics()
    assert [r["round"] for r in records] == [0, 1, 2]
    assert "acquired" not in records[-1]  # the last model is evaluated, nothing acquired
    picked = records[0]["acquired"] + records[1]["acquired"]
    assert len(set(picked)) == 10
    state = run.load_checkpoint()
    assert state["labelled"][10:] == picked  # in acquisition order
    assert not set(picked) & set(state["pool"]) and not set(picked) & set(state["val"])
    assert set(state["labelled"][:10]).isdisjoint(picked)
    assert records[0]["scored"] == 400 - 10 - 20 and records[0]["cached"] is True
    assert json.loads((out / "summary.json").read_text())["final_labels"] == 20
    assert (out / "config.json").exists()
    # droplab report plots accuracy against labels for it
    page = tmp_path / "report.html"
    assert main(["report", str(out), "--out", str(page)]) == 0
    html = page.read_text()
    assert "Accuracy vs labels" in html
    assert (tmp_path / "report_files" / "accuracy_vs_labels.png").stat().st_size > 1000


def test_report_curves_are_mean_and_std_over_seeds(tmp_path: Path) -> None:
    from droplab.report.active import curves, plot_accuracy_vs_labels
    from droplab.report.collect import RunRecord

    def rec(acq: str, accs: list[float]) -> RunRecord:
        return RunRecord(tmp_path, acq, "active", {}, {"acquisition": acq, "labels": [20, 30],
                                                       "test_acc": accs}, [])

    recs = [rec("bald", [0.5, 0.7]), rec("bald", [0.6, 0.9]), rec("random", [0.5, 0.6])]
    got = curves(recs)
    assert got == {"bald": {20: [0.5, 0.6], 30: [0.7, 0.9]}, "random": {20: [0.5], 30: [0.6]}}
    png = plot_accuracy_vs_labels(recs)
    assert png is not None and png[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_accuracy_vs_labels([]) is None


def test_resume_after_a_kill_gives_the_uninterrupted_result(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = active.run(_cfg(tmp_path / "whole", acquisition="batch-bald", warm_start=True))
    real = active._acquire
    calls = {"n": 0}

    def dies_in_round_1(*args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed while scoring round 1
        return real(*args)

    monkeypatch.setattr(active, "_acquire", dies_in_round_1)
    cfg = _cfg(tmp_path / "killed", acquisition="batch-bald", warm_start=True)
    with pytest.raises(KeyboardInterrupt):
        active.run(cfg)
    assert len(RunDir(tmp_path / "killed").read_metrics()) == 1
    monkeypatch.setattr(active, "_acquire", real)
    resumed = active.run(_cfg(tmp_path / "killed", acquisition="batch-bald", warm_start=True),
                         resume=True)
    for key in ("labels", "test_acc", "test_nll", "test_ece"):
        assert resumed[key] == whole[key]
    got = [r.get("acquired") for r in RunDir(tmp_path / "killed").read_metrics()]
    want = [r.get("acquired") for r in RunDir(tmp_path / "whole").read_metrics()]
    assert got == want
    # a finished run resumes to its summary and changes nothing
    before = (tmp_path / "killed" / "metrics.jsonl").read_bytes()
    again = active.run(_cfg(tmp_path / "killed", acquisition="batch-bald", warm_start=True),
                       resume=True)
    assert again == resumed and (tmp_path / "killed" / "metrics.jsonl").read_bytes() == before


def test_random_acquisition_needs_no_dropout(tmp_path: Path) -> None:
    s = active.run(_cfg(tmp_path / "r", acquisition="random", dropout=0.0, rounds=1,
                        pool_subset=50))
    assert s["labels"] == [10, 15]
    rec = RunDir(tmp_path / "r").read_metrics()[0]
    assert rec["scored"] == 50 and "score_s" not in rec


def test_labels_to_error() -> None:
    recs = [{"labels": 20, "test_acc": 0.7}, {"labels": 30, "test_acc": 0.91},
            {"labels": 40, "test_acc": 0.96}]
    assert labels_to_error(recs, (0.1, 0.05, 0.01)) == {"0.1": 30, "0.05": 40, "0.01": None}


@pytest.mark.parametrize("argv, message", [
    (["--dropout", "0"], "--dropout is 0"),
    (["--rounds", "40", "--step", "10"], "pool has"),
    (["--step", "500", "--rounds", "1"], "pool has"),
    (["--pool-subset", "3"], "smaller than --step"),
    (["--acquisition", "bold"], "unknown acquisition function 'bold'"),
    (["--initial", "5"], "fewer than the 10 classes"),
    (["--val-size", "400"], "pool is empty"),
])
def test_bad_inputs_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 argv: list[str], message: str) -> None:
    base = ["active", "--dataset", "digits", "--limit", "40", "--train-steps", "2", "--mc", "2",
            "--out", str(tmp_path / "bad")]
    assert main([*base, *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
