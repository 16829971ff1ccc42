"""``run(SweepConfig)``: start, resume or join a sweep and write its run folder.

The folder holds ``config.json`` (storage relative to the folder when the study file lives
in it), the study file (``study.db`` or ``study.journal``), ``metrics.jsonl`` (one line per
trial), ``summary.json`` and the figures of :mod:`droplab.tasks.sweep.plots`. After the
search the pick is refitted on the whole training split and scored once on the test split;
``oracle=True`` also scores every setting on test to measure how good the CV pick was.
"""

from __future__ import annotations

import json
import time
from typing import Any

import optuna
from optuna.trial import TrialState

from droplab.errors import InvalidValue, ResumeError, UserError
from droplab.runs import RunDir, atomic_open, to_jsonable
from droplab.tasks.sweep.config import SweepConfig
from droplab.tasks.sweep.objective import Prepared, refit_and_test
from droplab.tasks.sweep.plots import plot_sweep
from droplab.tasks.sweep.progress import reap_dead_trials, requeue_interrupted, study_state
from droplab.tasks.sweep.results import settings_table, trial_records
from droplab.tasks.sweep.space import setting_key
from droplab.tasks.sweep.storage import (
    default_storage,
    make_storage,
    open_study,
    redact,
    resolve_storage,
    storage_record,
    study_exists,
)
from droplab.tasks.sweep.workers import run_workers, threads_per_worker, worker_loop

TASK = "sweep"


def run(cfg: SweepConfig, resume: bool = False) -> dict[str, Any]:
    """Run (or resume, or join) a sweep; write and return ``summary.json``'s content."""
    cfg.validate()
    t_start = time.perf_counter()
    if cfg.join:
        return _join(cfg)
    run_dir = RunDir.create(cfg.base.run.out, TASK, resume=resume)
    cfg.base.run.out = str(run_dir.path)
    if resume:
        stored = run_dir.read_config()
        if stored.get("task") != TASK:
            raise ResumeError(f"{run_dir.path} is not a sweep folder; pass the --out of a sweep")
        record = stored.get("storage")
        if record and cfg.storage in (None, record):
            # the storage of the folder being resumed, wherever that folder is now
            cfg.storage = resolve_storage(record, run_dir.path, (stored.get("base") or {}).get("out"))
        cfg.study_name = cfg.study_name or stored.get("study_name")
    url = cfg.storage or default_storage(run_dir.path, cfg.workers)
    if cfg.workers > 1 and url.startswith("sqlite"):
        raise InvalidValue("--workers N needs storage safe for many processes: omit --storage "
                           "(a journal file in --out is used) or pass a postgresql:// URL")
    name = cfg.study_name or f"sweep-{run_dir.path.name}"
    cfg.storage, cfg.study_name = url, name
    prep = Prepared(cfg)  # fails fast on bad data or folds, before a study exists
    if not resume:
        if study_exists(make_storage(url, cfg), name):
            raise UserError(f"study {name!r} already exists in {redact(url)}; pass --join to add "
                            "workers, --resume to continue it, or a new --study-name")
        run_dir.write_config({**to_jsonable(cfg), "storage": storage_record(url, run_dir.path)},
                             task=TASK)
    study = open_study(cfg, url, name, create=not resume)
    if resume:
        reap_dead_trials(study)
        requeue_interrupted(study, cfg)
        st = study_state(study, cfg)
        if st["done"] and run_dir.read_summary() is not None:
            raise ResumeError(f"study {name!r} is already finished ({st['trials']} trials); "
                              "nothing to resume — start a new sweep with another --out")
    run_workers(cfg, url, name, prep)
    search_s = time.perf_counter() - t_start
    return _finish(cfg, run_dir, study, prep, search_s, t_start)


def _join(cfg: SweepConfig) -> dict[str, Any]:
    assert cfg.storage and cfg.study_name
    t0 = time.perf_counter()
    ran = worker_loop(cfg, cfg.storage, cfg.study_name, wait_for_others=False,
                      threads=threads_per_worker(cfg))
    study = open_study(cfg, cfg.storage, cfg.study_name, create=False)
    st = study_state(study, cfg)
    return {"task": TASK, "joined": True, "study_name": cfg.study_name,
            "storage": redact(cfg.storage), "trials_run_here": ran, "study_done": st["done"],
            "time_s": time.perf_counter() - t0}


def _finish(cfg: SweepConfig, run_dir: RunDir, study: optuna.Study, prep: Prepared,
            search_s: float, t_start: float) -> dict[str, Any]:
    st = study_state(study, cfg)
    rows = settings_table(study, cfg)
    with atomic_open(run_dir.metrics_path, "w") as fh:
        for rec in trial_records(study):
            fh.write(json.dumps(to_jsonable(rec), allow_nan=True) + "\n")
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise UserError("no trial of the sweep completed (all pruned or failed); widen the "
                        "search space or use --pruner none")
    best = study.best_trial
    pick = {"rate": best.params["rate"], "kind": best.params["kind"],
            "where": best.params["where"], "trial": best.number, "cv_score": best.value}
    test = refit_and_test(prep, best.params)
    summary: dict[str, Any] = {
        "task": TASK, "study_name": study.study_name, "storage": redact(cfg.storage or ""),
        "objective": cfg.objective, "direction": cfg.direction, "folds": cfg.folds,
        "sampler": cfg.sampler, "pruner": cfg.pruner, "attack": cfg.attack, "eps": cfg.eps,
        "settings": rows, "pick": pick, "test": test,
        "test_acc": test["test_acc"], "test_nll": test["test_nll"], "test_ece": test["test_ece"],
        "test_robust_acc": test["test_robust_acc"],
        "n_trials": st["trials"],
        "n_complete": sum(r["state"] == "complete" for r in rows),
        "n_pruned": sum(r["state"] == "pruned" for r in rows),
        "n_failed": len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,))),
        "complete": bool(st["done"]), "search_time_s": search_s,
    }
    if cfg.oracle:
        oracle = []
        for s in cfg.space.settings():
            figs = test if setting_key(s) == setting_key(best.params) else refit_and_test(prep, s)
            oracle.append({**s, **figs})
        best_o = max(oracle, key=lambda r: r["test_acc"])
        summary["oracle"] = {"settings": oracle, "best": best_o,
                             "pick_minus_best_test_acc": test["test_acc"] - best_o["test_acc"]}
    summary["plots"] = plot_sweep(rows, cfg, run_dir.path)
    summary["time_s"] = time.perf_counter() - t_start
    summary["run_dir"] = str(run_dir.path)
    run_dir.write_summary(summary)
    return summary
