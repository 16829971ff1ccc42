"""``droplab sweep`` end to end on tiny digits: summary, files, errors, kill -9 and --resume."""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scipy.stats import ttest_rel

from hostile_world import snapshot
from sweep_helpers import run_sweep

TINY = ["--dataset", "digits", "--limit", "30", "--model", "mlp", "--threads", "1",
        "--device", "cpu", "--attack-samples", "40"]



def test_sweep_prints_per_rate_cv_scores_and_a_pick_and_leaves_db_and_plots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sw"
    rc, stdout, _ = run_sweep([*TINY, "--rates", "0,0.25,0.5", "--folds", "3", "--epochs", "2",
                            "--json", "--out", str(out)], capsys)
    assert rc == 0
    summary = json.loads(stdout)
    rates = [r["rate"] for r in summary["settings"]]
    assert sorted(rates) == [0.0, 0.25, 0.5]
    for r in summary["settings"]:
        assert r["state"] == "complete" and r["folds_done"] == 3
        for k in ("acc", "nll", "ece", "robust_acc", "train_acc", "gap"):
            assert set(r["cv"][k]) == {"mean", "std"}
        # CV accuracy of a 10-class model trained 2 epochs is far above chance (0.1)
        assert r["cv"]["acc"]["mean"] > 0.3
    best = max(summary["settings"], key=lambda r: r["cv"]["acc"]["mean"])
    assert summary["pick"]["rate"] == best["rate"] and summary["pick"]["rule"] == "best"
    assert summary["best"]["rate"] == best["rate"]
    assert 0 <= summary["test_acc"] <= 1
    assert summary["search_cpu_s"] > 0 and 0 < summary["search_time_s"] <= summary["time_s"]
    # the one-standard-error rule, recomputed from the per-fold accuracies it reports
    folds = {r["rate"]: r["per_fold"]["acc"] for r in summary["settings"]}
    assert all(len(v) == 3 for v in folds.values())
    m = {k: statistics.fmean(v) for k, v in folds.items()}
    se = statistics.stdev(folds[best["rate"]]) / math.sqrt(3)
    within = [k for k in folds if m[k] >= m[best["rate"]] - se]
    assert summary["one_se"]["rate"] == min(within)
    assert summary["one_se"]["best_se"] == pytest.approx(se)
    # the paired test: the pick against the runner-up, fold by fold (scipy's ttest_rel)
    test = summary["paired_test"]
    runner = max((k for k in folds if k != best["rate"]), key=lambda k: m[k])
    assert test["pick"]["rate"] == best["rate"] and test["runner_up"]["rate"] == runner
    diffs = [a - b for a, b in zip(folds[best["rate"]], folds[runner])]
    assert test["mean_diff"] == pytest.approx(statistics.fmean(diffs))
    if statistics.pstdev(diffs) > 0:
        ref = ttest_rel(folds[best["rate"]], folds[runner])
        assert test["p"] == pytest.approx(float(ref.pvalue))
    assert 0 <= test["p"] <= test["p_corrected"] <= 1
    assert summary["dashboard"] == f"optuna-dashboard sqlite:///{out.resolve() / 'study.db'}"
    for name in ("study.db", "summary.json", "config.json", "metrics.jsonl",
                 "cv_vs_rate.png", "gap_vs_rate.png", "robust_vs_rate.png"):
        assert (out / name).is_file(), name
    assert (out / "cv_vs_rate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    # resuming a finished study is a one-line error
    rc, _, err = run_sweep(["--out", str(out), "--resume"], capsys)
    assert rc == 2 and "already finished" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--rates", ""], "--rates is empty"),
        (["--rates", "0,0.5,0.5"], "lists a value twice"),
        (["--rates", "0,1.2"], "outside [0, 1)"),
        (["--rates", "0:0.5:2:3"], "start:stop:count"),
        (["--rates", "0:0.5"], "needs a sampler that draws from it"),
        (["--rates", "log:0:0.5", "--sampler", "tpe", "--trials", "2"], "LOW > 0"),
        (["--rates", "0.5:0.1", "--sampler", "tpe", "--trials", "2"], "empty or reversed"),
        (["--rates", "0:0.5", "--sampler", "tpe"], "give --trials N"),
        (["--trials", "5"], "omit --trials"),
        (["--objectives", "acc,ece", "--pruner", "median"], "pruning needs a single objective"),
        (["--pick", "knee"], "needs several --objectives"),
        (["--schedules", "constant,wobble"], "unknown dropout schedule"),
        (["--conv-rates", "0,0.2"], "inconsistent"),
        (["--kinds", "bogus"], "unknown dropout kind 'bogus'"),
        (["--wheres", "conv"], "inconsistent"),
        (["--folds", "40"], "40 folds need at least 40 images in every class"),
        (["--storage", "postgresql://u:secret@127.0.0.1:9/nodb"],
         "cannot reach study storage postgresql://u:***@127.0.0.1:9/nodb"),
        (["--objective", "f1"], "unknown objective"),
        (["--join"], "--join needs"),
    ],
)
def test_bad_input_is_one_line_error(
    argv: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = run_sweep([*TINY, "--limit", "20", "--rates", "0,0.5", "--folds", "2",
                         "--epochs", "1", "--out", str(tmp_path / "x"), *argv], capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("droplab sweep: error:"), err
    assert needle in lines[0]
    assert "secret" not in lines[0]
    assert not (tmp_path / "x").exists()  # checked before the run folder is created


def test_kill_9_mid_trial_then_resume_finishes_every_setting_once(tmp_path: Path) -> None:
    import optuna
    from optuna.trial import TrialState

    out = tmp_path / "killed"
    rates = ["0", "0.3", "0.6"]
    cmd = [sys.executable, "-m", "droplab", "sweep", *TINY, "--rates", ",".join(rates),
           "--folds", "2", "--epochs", "2", "--heartbeat-interval", "1", "--grace-period", "2",
           "--out", str(out), "--json"]
    env = {**os.environ, "DROPLAB_PROGRESS": "0"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    db = out / "study.db"
    killed = False
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
        if not db.exists():
            continue
        try:
            with sqlite3.connect(db, timeout=0.2) as con:
                mid = con.execute(
                    "SELECT COUNT(*) FROM trials t JOIN trial_intermediate_values v "
                    "ON t.trial_id = v.trial_id WHERE t.state = 'RUNNING'").fetchone()[0]
        except sqlite3.Error:
            continue
        if mid:  # a trial has reported fold 0 and is training fold 1
            proc.send_signal(signal.SIGKILL)  # mid-trial: a RUNNING trial is left behind
            killed = True
            break
    proc.communicate(timeout=30)
    assert killed, "the sweep finished before it could be killed mid-trial"
    assert proc.returncode == -signal.SIGKILL

    res = subprocess.run([sys.executable, "-m", "droplab", "sweep", "--out", str(out),
                          "--resume", "--threads", "1", "--device", "cpu", "--json"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["complete"] and summary["n_complete"] + summary["n_pruned"] == len(rates)

    study = optuna.load_study(study_name=summary["study_name"], storage=f"sqlite:///{db}")
    done = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert sorted(t.params["rate"] for t in done) == sorted(float(r) for r in rates)  # no dupes
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(failed) == 1  # the killed trial, failed by its stale heartbeat …
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == failed[0].number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE  # … and retried once
    assert retries[0].params == failed[0].params



def test_a_copied_half_finished_sweep_resumes_in_the_copy_and_leaves_the_original_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    import optuna
    from optuna.trial import TrialState

    from droplab.tasks import sweep
    from droplab.tasks.sweep import objective

    orig, copy = tmp_path / "orig", tmp_path / "elsewhere" / "copy"
    cfg = sweep.SweepConfig.build(dataset="digits", limit=30, model="mlp", epochs=1,
                                  device="cpu", out=str(orig), rates="0,0.3,0.6", folds=2,
                                  threads=1, attack_samples=20)
    real, calls = objective.train_and_score, []

    def interrupted_at_third_fold(*args: object, **kw: object) -> dict[str, float]:
        calls.append(1)
        if len(calls) == 3:  # trial 0 has both folds; trial 1 is stopped in its first fold
            raise KeyboardInterrupt
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(objective, "train_and_score", interrupted_at_third_fold)
    with pytest.raises(KeyboardInterrupt):
        sweep.run(cfg)
    monkeypatch.setattr(objective, "train_and_score", real)
    capsys.readouterr()
    stored = json.loads((orig / "config.json").read_text())
    assert stored["storage"] == "sqlite:///study.db"  # relative to the run folder
    before = snapshot(orig)
    assert "summary.json" not in before

    shutil.copytree(orig, copy)
    rc, stdout, err = run_sweep(["--out", str(copy), "--resume", "--threads", "1", "--device", "cpu",
                              "--json"], capsys)
    assert rc == 0, err
    summary = json.loads(stdout)
    assert summary["run_dir"] == str(copy) and summary["complete"]
    assert summary["storage"] == f"sqlite:///{copy.resolve() / 'study.db'}"
    assert snapshot(orig) == before  # the original folder is byte-for-byte untouched
    assert (copy / "summary.json").is_file() and (copy / "cv_vs_rate.png").is_file()

    study = optuna.load_study(study_name=summary["study_name"],
                              storage=f"sqlite:///{copy / 'study.db'}")
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["rate"] for t in done) == [0.0, 0.3, 0.6]  # each setting once
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].params["rate"] == 0.3  # the interrupted trial …
    retry = [t for t in done if t.system_attrs.get("failed_trial") == failed[0].number]
    assert len(retry) == 1 and retry[0].params == failed[0].params  # … retried exactly once


@pytest.mark.slow
def test_the_issue_20_command_prints_the_pareto_set_the_1se_pick_and_the_paired_test(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``droplab sweep --dataset digits --rates 0:0.6 --sampler tpe --trials 12 --objectives
    acc,ece --folds 3 --epochs 2 --json`` (issue 20's "done when"), as written."""
    out = tmp_path / "done"
    rc, stdout, err = run_sweep(["--dataset", "digits", "--rates", "0:0.6", "--sampler", "tpe",
                              "--trials", "12", "--objectives", "acc,ece", "--folds", "3",
                              "--epochs", "2", "--json", "--out", str(out), "--threads", "1",
                              "--device", "cpu"], capsys)
    assert rc == 0, err
    s = json.loads(stdout)
    assert s["objectives"] == ["acc", "ece"] and s["directions"] == ["maximize", "minimize"]
    rows = [r for r in s["settings"] if r["state"] == "complete"]
    assert len(rows) == 12 and all(0.0 <= r["rate"] <= 0.6 for r in rows)
    assert len({r["rate"] for r in rows}) > 1  # TPE drew from the continuous range
    pts = {r["trial"]: (r["cv"]["acc"]["mean"], r["cv"]["ece"]["mean"]) for r in rows}

    def dominated(p: tuple[float, float]) -> bool:
        return any(q[0] >= p[0] and q[1] <= p[1] and q != p for q in pts.values())

    front = {f["trial"] for f in s["pareto"]["front"]}
    assert front == {t for t, p in pts.items() if not dominated(p)}  # brute force
    assert s["pareto"]["knee"]["trial"] in front
    assert s["pick"]["rule"] == "knee" and s["pick"]["trial"] == s["pareto"]["knee"]["trial"]
    assert s["one_se"]["n_within"] >= 1 and s["one_se"]["metric"] == "acc"
    t = s["paired_test"]
    assert t["n"] == 3 and 0 <= t["p"] <= 1 and 0 <= t["p_corrected"] <= 1
    assert (out / "pareto_front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(out / "pareto_front.png") in s["plots"]


def test_a_half_finished_sweep_of_release_0_1_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import optuna

    old = tmp_path / "old"
    old.mkdir()
    (old / "config.json").write_text(json.dumps({
        "task": "sweep", "base": {"dataset": "digits", "limit": 20, "model": "mlp", "epochs": 1,
                                  "out": str(old), "seed": 0},
        "space": {"rates": [0.0, 0.5], "kinds": ["dropout"], "wheres": ["head"]}, "folds": 2,
        "objective": "acc", "storage": f"sqlite:///{old / 'study.db'}", "study_name": "sweep-old"}))
    study = optuna.create_study(study_name="sweep-old", storage=f"sqlite:///{old / 'study.db'}")
    study.set_user_attr("droplab_space", {"space": {"rate": [0.0, 0.5]}, "folds": 2})
    before = snapshot(old)
    capsys.readouterr()  # Optuna's own INFO line about the study made above
    rc, _, err = run_sweep(["--out", str(old), "--resume", "--device", "cpu"], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "different search space or setup" in err
    assert snapshot(old) == before
