"""droplab.tasks.sweep: the study — storage, joining, stale-trial recovery, progress, TPE +
pruning by epoch."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from droplab.errors import UserError
from droplab.tasks import sweep as tune


def _cfg(tmp_path: Path, rates: list[float] | str, **kw: object) -> tune.SweepConfig:
    options: dict[str, object] = dict(dataset="digits", limit=20, model="mlp", epochs=1,
                                      device="cpu", out=str(tmp_path / "out"), folds=2,
                                      threads=1, attack_samples=20)
    return tune.SweepConfig.build(**{**options, "rates": rates, **kw})


def test_joining_with_a_different_space_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    a = _cfg(tmp_path, [0.0, 0.5])
    study = tune.open_study(a, url, "s", create=True)
    assert study.user_attrs[tune.SPACE_ATTR]["space"]["rate"] == [0.0, 0.5]
    tune.open_study(_cfg(tmp_path, [0.0, 0.5]), url, "s", create=False)  # same space: fine
    with pytest.raises(UserError, match=r"different search space .*\(space\)"):
        tune.open_study(_cfg(tmp_path, [0.0, 0.25]), url, "s", create=False)
    with pytest.raises(UserError, match=r"different search space .*folds"):
        tune.open_study(_cfg(tmp_path, [0.0, 0.5], folds=3), url, "s",
                        create=False)
    with pytest.raises(UserError, match="no study 'nope'"):
        tune.open_study(a, url, "nope", create=False)


def test_journal_trials_of_dead_local_workers_are_failed_and_queued_once(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, [0.0, 0.5], workers=2)
    url = tune.default_storage(tmp_path, workers=2)
    assert url.startswith("journal:")
    study = tune.open_study(cfg, url, "j", create=True)
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid is gone
    host = socket.gethostname()
    dist = {"rate": CategoricalDistribution([0.0, 0.5])}  # a trial still choosing the rest
    for rate, pid in ((0.0, dead.pid), (0.5, os.getpid())):
        study.add_trial(optuna.create_trial(state=TrialState.RUNNING, params={"rate": rate},
                                            distributions=dist,
                                            user_attrs={"worker": f"{host}:{pid}"}))
    assert tune.reap_dead_trials(study) == 1
    states = {(t.params["rate"], t.state) for t in study.trials}
    assert states == {(0.0, TrialState.FAIL), (0.5, TrialState.RUNNING), (0.0, TrialState.WAITING)}
    retry = next(t for t in study.trials if t.state == TrialState.WAITING)
    assert retry.system_attrs["failed_trial"] == 0
    assert tune.reap_dead_trials(study) == 0  # a second pass does not queue it again


def test_study_state_counts_grid_points_not_trials(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, [0.0, 0.5])
    study = tune.open_study(cfg, f"sqlite:///{tmp_path / 's.db'}", "g", create=True)
    dists = {"rate": CategoricalDistribution([0.0, 0.5]), "kind": CategoricalDistribution(["dropout"]),
             "where": CategoricalDistribution(["head"])}
    p0 = {"rate": 0.0, "kind": "dropout", "where": "head"}
    study.add_trial(optuna.create_trial(state=TrialState.COMPLETE, value=0.9, params=p0,
                                        distributions=dists))
    study.add_trial(optuna.create_trial(state=TrialState.COMPLETE, value=0.9, params=p0,
                                        distributions=dists))
    st = tune.study_state(study, cfg)
    assert not st["done"] and st["need_new"]  # two trials, but rate 0.5 is still missing
    study.add_trial(optuna.create_trial(state=TrialState.PRUNED, params={**p0, "rate": 0.5},
                                        distributions=dists, intermediate_values={0: 0.1}))
    assert tune.study_state(study, cfg)["done"]


def test_tpe_with_median_pruning_reports_every_epoch_of_every_fold_as_a_step(tmp_path: Path) -> None:
    epochs, folds = 2, 2
    cfg = _cfg(tmp_path, "0:0.9:4", sampler="tpe", n_trials=3, pruner="median", epochs=epochs)
    summary = tune.run(cfg)
    assert summary["complete"]
    url = f"sqlite:///{tmp_path / 'out' / 'study.db'}"
    study = optuna.load_study(study_name=summary["study_name"], storage=url)
    counted = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(counted) >= 3
    for t in counted:
        if "reused_from" in t.user_attrs:
            continue
        done = t.user_attrs["folds"]
        steps = sorted(t.intermediate_values)
        # steps are consecutive from 0 (fold i, epoch e is step i·E + e); the last epoch of
        # fold i holds exactly that fold's recorded accuracy
        assert steps == list(range(len(steps)))
        for i, f in enumerate(done):
            assert t.intermediate_values[i * epochs + epochs - 1] == f["acc"]
        if t.state == TrialState.COMPLETE:
            assert len(done) == folds and len(steps) == folds * epochs
            assert t.value == pytest.approx(sum(f["acc"] for f in done) / folds)
        else:  # pruned: it stopped at its last reported step, before finishing every fold
            assert len(steps) < folds * epochs or len(done) < folds
    assert summary["pick"]["rate"] in cfg.space.rate_values


def test_storage_files_inside_the_run_folder_are_stored_relative_to_it(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    db = f"sqlite:///{run.resolve() / 'study.db'}"
    assert tune.storage_record(db, run) == "sqlite:///study.db"
    assert tune.storage_record(f"journal:{run / 'j' / 'study.journal'}", run) == "journal:j/study.journal"
    outside = f"sqlite:///{tmp_path.resolve() / 'shared.db'}?timeout=30"
    assert tune.storage_record(outside, run) == outside  # a shared file stays where it is
    pg = "postgresql://u:pw@db.example:5432/sweeps"
    assert tune.storage_record(pg, run) == pg
    moved = tmp_path / "moved"
    assert tune.resolve_storage("sqlite:///study.db", moved) == f"sqlite:///{moved.resolve() / 'study.db'}"
    assert tune.resolve_storage("journal:j/study.journal", moved) == \
        f"journal:{moved.resolve() / 'j' / 'study.journal'}"
    assert tune.resolve_storage(outside, moved) == outside and tune.resolve_storage(pg, moved) == pg
    # config.json of the previous release: an absolute path inside the folder it was created in
    assert tune.resolve_storage(db, moved, stored_out=str(run)) == f"sqlite:///{moved.resolve() / 'study.db'}"
    assert tune.resolve_storage(outside, moved, stored_out=str(run)) == outside


def test_a_trial_still_choosing_its_parameters_does_not_break_other_workers(tmp_path: Path) -> None:
    # Optuna stores parameters one suggest_* call at a time: another worker's RUNNING trial
    # may hold "rate" but not yet "kind"/"where" (this raised KeyError under load)
    cfg = _cfg(tmp_path, [0.0, 0.5])
    study = tune.open_study(cfg, f"sqlite:///{tmp_path / 'p.db'}", "p", create=True)
    study.add_trial(optuna.create_trial(state=TrialState.RUNNING, params={"rate": 0.5},
                                        distributions={"rate": CategoricalDistribution([0.0, 0.5])}))
    st = tune.study_state(study, cfg)
    assert st["running"] == 1 and st["need_new"] and not st["done"]
    assert cfg.space.key({"rate": 0.5}) is None
