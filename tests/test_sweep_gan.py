"""``droplab sweep --task gan``: the discriminator's dropout chosen by held-out scores, seeds
as folds — end to end on the 2-D ring and on tiny digits, bad input, interrupt and resume."""

from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

import pytest
import torch

from droplab.tasks import sweep
from droplab.tasks.sweep import gan_objective
from droplab.tasks.sweep.gan_objective import GanPrepared
from droplab.tasks.sweep.objective import fold_seed
from hostile_world import snapshot
from sweep_helpers import run_sweep

#: 2-D ring, 8 modes: 2,048 training points, 64 a batch → 32 generator steps an epoch
RING = ["--task", "gan", "--dataset", "ring", "--limit", "256", "--batch-size", "64",
        "--threads", "1", "--device", "cpu"]




def test_a_ring_sweep_scores_every_seed_on_held_out_points_and_picks_the_lowest_fid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ring"
    rc, stdout, err = run_sweep([*RING, "--epochs", "2", "--rates", "0,0.5", "--folds", "2",
                              "--eval-samples", "300", "--json", "--out", str(out)], capsys)
    assert rc == 0, err
    summary = json.loads(stdout)  # exactly one JSON object on stdout
    assert summary["sweep_task"] == "gan" and summary["objective"] == "fid"
    assert summary["direction"] == "minimize" and summary["complete"]
    means = {}
    for r in summary["settings"]:
        assert r["state"] == "complete" and r["folds_done"] == 2 and r["where"] == "hidden"
        fids = r["per_fold"]["fid"]
        assert len(fids) == 2 and all(f > 0 and math.isfinite(f) for f in fids)
        assert fids[0] != fids[1]  # two seeds, two GANs
        assert r["cv"]["fid"]["mean"] == pytest.approx(statistics.fmean(fids))
        assert r["cv"]["fid"]["std"] == pytest.approx(statistics.stdev(fids))
        for k in ("modes", "kl", "high_quality", "density", "coverage"):
            assert set(r["cv"][k]) == {"mean", "std"}, k
        assert "kid" not in r["cv"] and "acc" not in r["cv"]  # points: no image features
        means[r["rate"]] = r["cv"]["fid"]["mean"]
    best = min(means, key=means.__getitem__)
    assert summary["pick"]["rate"] == best and summary["pick"]["rule"] == "best"
    assert summary["one_se"]["metric"] == "fid"
    # every fold's record: modes hit of 8, KL in [0, ln 8]; one mode or none is KL = ln 8
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for rec in records:
        for f in rec["folds"]:
            assert f["modes"] in range(9) and 0 <= f["kl"] <= math.log(8) + 1e-12
            assert 0 <= f["high_quality"] <= 1 and f["g_steps"] == 2 * 32
            if f["modes"] <= 1:
                assert f["kl"] == pytest.approx(math.log(8))
    # the pick refitted with a fresh seed, scored on the other held-out half
    assert summary["test_fid"] > 0 and summary["test"]["g_steps"] == 2 * 32
    assert 0 <= summary["test_kl"] <= math.log(8) + 1e-12
    assert "test_acc" not in summary
    for name in ("study.db", "summary.json", "config.json", "metrics.jsonl", "cv_vs_rate.png"):
        assert (out / name).is_file(), name
    for name in ("gap_vs_rate.png", "robust_vs_rate.png", "classifier"):
        assert not (out / name).exists(), name  # no classifier metrics, no classifier
    stored = json.loads((out / "config.json").read_text())
    assert stored["task"] == "sweep" and stored["sweep_task"] == "gan"
    assert stored["space"]["wheres"] == ["hidden"]

    # a fold's score is a function of (setting, seed): recomputed from config.json alone
    cfg = sweep.SweepConfig.from_dict(stored)
    row = next(r for r in summary["settings"] if r["rate"] == best)
    again = GanPrepared(cfg).score_fold({"rate": best, "kind": "dropout", "where": "hidden"}, 1)
    assert again["fid"] == row["per_fold"]["fid"][1]


def test_the_held_out_halves_are_disjoint_and_the_same_for_every_fold(tmp_path: Path) -> None:
    cfg = sweep.SweepConfig.build(task="gan", dataset="ring", limit=16, batch_size=16,
                                  rates="0,0.5", folds=2, eval_samples=300, device="cpu",
                                  out=str(tmp_path / "x"))
    prep = GanPrepared(cfg)
    a, b = prep.real_cv, prep.real_test
    assert a.shape == b.shape == (300, 2)
    pool = prep.data.toy.test  # type: ignore[union-attr]
    assert pool.shape[0] == 8 * 500  # ring: 500 held-out points per mode
    rows = {tuple(p.tolist()) for p in pool}
    sa, sb = {tuple(p.tolist()) for p in a}, {tuple(p.tolist()) for p in b}
    assert sa <= rows and sb <= rows and not sa & sb
    assert torch.equal(GanPrepared(cfg).real_cv, a)  # every worker sees the same points
    seeds = {fold_seed(cfg.seed, i) for i in (-1, 0, 1)}
    assert len(seeds) == 3  # the refit's seed is none of the folds'


def test_a_digits_sweep_scores_by_kid_with_its_own_classifier(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "digits"
    rc, stdout, err = run_sweep(["--task", "gan", "--dataset", "digits", "--limit", "20",
                              "--epochs", "1", "--rates", "0,0.5", "--folds", "2",
                              "--objective", "kid", "--eval-samples", "100",
                              "--classifier-epochs", "2", "--threads", "1", "--device", "cpu",
                              "--json", "--out", str(out)], capsys)
    assert rc == 0, err
    summary = json.loads(stdout)
    assert summary["objective"] == "kid" and summary["direction"] == "minimize"
    assert json.loads((out / "classifier" / "summary.json").read_text())["task"] == "train"
    for r in summary["settings"]:
        assert len(r["per_fold"]["kid"]) == 2
        for k in ("fid", "kid", "modes", "kl", "density", "coverage", "precision", "recall"):
            assert math.isfinite(r["cv"][k]["mean"]), k
        assert 0 <= r["cv"]["modes"]["mean"] <= 10
        assert 0 <= r["cv"]["kl"]["mean"] <= math.log(10) + 1e-9
    best = min(summary["settings"], key=lambda r: r["cv"]["kid"]["mean"])
    assert summary["pick"]["rate"] == best["rate"]
    assert math.isfinite(summary["test_kid"]) and 0 <= summary["test_modes"] <= 10
    rc, _, err = run_sweep(["--out", str(out), "--resume"], capsys)
    assert rc == 2 and "already finished" in err and len(err.strip().splitlines()) == 1


def test_an_interrupted_gan_sweep_resumes_to_the_figures_of_an_uninterrupted_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import optuna
    from optuna.trial import TrialState

    opts = {"task": "gan", "dataset": "ring", "limit": 64, "batch_size": 64, "epochs": 2,
            "rates": "0,0.3,0.6", "folds": 2, "eval_samples": 100, "objective": "kl",
            "device": "cpu", "threads": 1}
    whole = sweep.run(sweep.SweepConfig.build(**opts, out=str(tmp_path / "whole")))

    cut = tmp_path / "cut"
    real, calls = GanPrepared.train_and_score, []

    def interrupted_at_third_fit(self: GanPrepared, *args: object) -> dict[str, float]:
        calls.append(1)
        if len(calls) == 3:  # trial 0 has both seeds; trial 1 is stopped in its first
            raise KeyboardInterrupt
        return real(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(gan_objective.GanPrepared, "train_and_score", interrupted_at_third_fit)
    with pytest.raises(KeyboardInterrupt):
        sweep.run(sweep.SweepConfig.build(**opts, out=str(cut)))
    monkeypatch.setattr(gan_objective.GanPrepared, "train_and_score", real)
    assert not (cut / "summary.json").exists()
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(cut, moved)  # the study file travels with the folder (this process
    # still holds the interrupted folder's lock, as a killed sweep's would be stale)
    before = snapshot(moved)
    rc, _, err = run_sweep(["--out", str(moved), "--resume", "--epochs", "3"], capsys)
    assert rc == 2 and "--epochs" in err and snapshot(moved) == before  # refused: unchanged
    rc, stdout, err = run_sweep(["--out", str(moved), "--resume", "--device", "cpu", "--json"],
                             capsys)
    assert rc == 0, err
    resumed = json.loads(stdout)
    assert resumed["complete"] and resumed["run_dir"] == str(moved)
    assert ({r["rate"]: r["per_fold"]["kl"] for r in resumed["settings"]}
            == {r["rate"]: r["per_fold"]["kl"] for r in whole["settings"]})
    def setting(pick: dict[str, object]) -> dict[str, object]:
        return {k: v for k, v in pick.items() if k != "trial"}  # (a retry has a new number)

    assert setting(resumed["pick"]) == setting(whole["pick"])
    assert resumed["test_fid"] == whole["test_fid"]
    study = optuna.load_study(study_name=resumed["study_name"],
                              storage=f"sqlite:///{moved / 'study.db'}")
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["rate"] for t in done) == [0.0, 0.3, 0.6]  # each setting once
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(failed) == 1
    retry = [t for t in done if t.system_attrs.get("failed_trial") == failed[0].number]
    assert len(retry) == 1 and retry[0].params == failed[0].params


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--objective", "acc"], "--objective acc is a classify objective and does not apply "
         "to --task gan; use one of fid, kid, modes, kl"),
        (["--objectives", "fid,ece"], "--objectives ece is a classify objective"),
        (["--objective", "kid"], "2-D dataset: use fid, modes or kl"),
        (["--wheres", "head"], "--wheres head is not a placement of --task gan"),
        (["--conv-rates", "0,0.2"], "--conv-rates searches a classifier's dropout"),
        (["--schedules", "constant"], "--schedules searches a classifier's dropout"),
        (["--diffaugment", "color"], "drop --diffaugment"),
        (["--batch-size", "4096"], "fewer than --batch-size 4096"),
        (["--eval-samples", "5"], "--eval-samples must be at least 10"),
        (["--gan-model", "vae"], "unknown GAN model 'vae'"),
    ],
)
def test_bad_gan_sweeps_are_one_line_before_any_folder(
    argv: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, stdout, err = run_sweep([*RING, "--limit", "16", "--batch-size", "16", "--rates", "0,0.5",
                              "--folds", "2", "--epochs", "1", "--out", str(tmp_path / "x"),
                              *argv], capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and stdout == "" and len(lines) == 1, err
    assert needle in lines[0]
    assert not (tmp_path / "x").exists()


def test_a_gan_objective_is_refused_for_a_classifyrun_sweep(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = run_sweep(["--dataset", "digits", "--limit", "20", "--rates", "0,0.5", "--folds",
                         "2", "--objective", "fid", "--out", str(tmp_path / "x")], capsys)
    assert rc == 2 and err.strip() == (
        "droplab sweep: error: --objective fid is a gan objective and does not apply to "
        "--task classify; use one of acc, nll, ece, robust")
    assert not (tmp_path / "x").exists()
