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
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from droplab.engine.resume import open_run
from droplab.errors import InvalidValue, ResumeError, UserError
from droplab.runs import RunDir, atomic_open, default_run_dir, to_jsonable
from droplab.tasks.sweep.config import OBJECTIVE_METRIC, SweepConfig
from droplab.tasks.sweep.objective import FoldScorer
from droplab.tasks.sweep.pick import choose
from droplab.tasks.sweep.plots import plot_sweep
from droplab.tasks.sweep.prepare import prepare
from droplab.tasks.sweep.progress import reap_dead_trials, requeue_interrupted, study_state
from droplab.tasks.sweep.results import settings_table, trial_records
from droplab.tasks.sweep.storage import (
    absolute_storage,
    dashboard_command,
    default_storage_record,
    is_run_file,
    make_storage,
    open_study,
    redact,
    resolve_storage,
    storage_record,
    study_exists,
)
from droplab.tasks.sweep.workers import run_workers, threads_per_worker, worker_loop

TASK = "sweep"


def _new_run_storage(cfg: SweepConfig) -> None:
    """Fix the folder, storage and study name of a new sweep before anything is written."""
    if not cfg.run.out:
        cfg.run.out = str(default_run_dir(TASK))
    out = Path(cfg.run.out)
    cfg.storage = (storage_record(absolute_storage(cfg.storage), out) if cfg.storage
                   else default_storage_record(cfg.workers))
    cfg.study_name = cfg.study_name or f"sweep-{out.name}"


def _check_workers(cfg: SweepConfig, url: str) -> None:
    if cfg.workers > 1 and url.startswith("sqlite"):
        raise InvalidValue("--workers N needs storage safe for many processes: omit --storage "
                           "(a journal file in --out is used) or pass a postgresql:// URL")


def _resumable(cfg: SweepConfig) -> tuple[str, str]:
    """Check the folder being resumed before anything in it changes: a sweep whose study
    file (wherever the folder now is) holds an unfinished study of the same search space.
    Returns the storage URL and the study name."""
    folder = RunDir.create(cfg.run.out, TASK, resume=True)
    data = folder.read_config()
    if data.get("task") != TASK:
        raise ResumeError(f"{folder.path} holds a {data.get('task')!r} run, not a sweep; pass "
                          "the --out of a sweep")
    stored = SweepConfig.from_dict(data)
    url = resolve_storage(stored.storage or default_storage_record(1), folder.path,
                          stored.run.out)
    _check_workers(cfg, url)
    name = stored.study_name or f"sweep-{folder.path.name}"
    st = study_state(open_study(stored, url, name, create=False), stored)
    if st["done"] and folder.read_summary() is not None:
        raise ResumeError(f"study {name!r} is already finished ({st['trials']} trials); "
                          "nothing to resume — start a new sweep with another --out")
    return url, name


def run(cfg: SweepConfig, resume: bool = False) -> dict[str, Any]:
    """Run (or resume, or join) a sweep; write and return ``summary.json``'s content.

    Options, data and folds are checked before the run folder is created. ``resume``
    continues the study of the folder ``cfg.run.out`` names, wherever that folder is now
    (its study file travels with it); only runtime options may differ from its config.json,
    and a refused resume changes no file.
    """
    t_start, c_start = time.perf_counter(), time.process_time()
    if cfg.join:
        return _join(cfg)
    if resume:
        url, name = _resumable(cfg)
        prep = prepare(cfg)
        run_dir = open_run(cfg, TASK, resume=True)  # the one resume rule: same options
        cfg.run.out = str(run_dir.path)
        study = open_study(cfg, url, name, create=False)
        reap_dead_trials(study)
        requeue_interrupted(study, cfg)
    else:
        _new_run_storage(cfg)
        assert cfg.storage is not None and cfg.run.out is not None and cfg.study_name
        url, name = resolve_storage(cfg.storage, Path(cfg.run.out)), cfg.study_name
        _check_workers(cfg, url)
        prep = prepare(cfg)  # fails fast on bad data or folds, before a folder exists
        if not is_run_file(cfg.storage) and study_exists(make_storage(url, cfg), name):
            raise UserError(f"study {name!r} already exists in {redact(url)}; pass --join to "
                            "add workers, --resume to continue it, or a new --study-name")
        run_dir = open_run(cfg, TASK, resume=False)
        before = {p.name for p in run_dir.path.iterdir()}
        try:
            study = open_study(cfg, url, name, create=True)
        except UserError:  # (a full disk): no half-made study file blocks the next start
            for p in run_dir.path.iterdir():
                if p.name not in before and p.is_file():
                    p.unlink(missing_ok=True)
            raise
    prep.ready()  # e.g. a GAN sweep's feature classifier, in the run folder
    run_workers(cfg, url, name, prep)
    search_s, search_cpu_s = time.perf_counter() - t_start, time.process_time() - c_start
    return _finish(cfg, run_dir, study, url, prep, search_s, t_start, search_cpu_s)


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


def _oracle(cfg: SweepConfig, prep: FoldScorer, rows: list[dict[str, Any]],
            pick: dict[str, Any], test: dict[str, float]) -> dict[str, Any]:
    """Every setting refitted and scored on test: how good was the CV pick? (classify: by
    test accuracy; GAN: by the first objective's test metric)"""
    names = cfg.space.names
    settings = (cfg.space.settings() if cfg.sampler == "grid"
                else [{n: r[n] for n in names} for r in rows])
    oracle = []
    for s in settings:
        figs = test if cfg.space.key(s) == cfg.space.key(pick) else prep.refit_and_test(s)
        oracle.append({**s, **figs})
    metric = "acc" if cfg.sweep_task == "classify" else OBJECTIVE_METRIC[cfg.objective_list[0]]
    key, sign = f"test_{metric}", (1 if cfg.sweep_task == "classify"
                                   or cfg.direction == "maximize" else -1)
    best = max(oracle, key=lambda r: sign * r[key])
    return {"settings": oracle, "best": best,
            f"pick_minus_best_{key}": test[key] - best[key]}


def _finish(cfg: SweepConfig, run_dir: RunDir, study: optuna.Study, url: str, prep: FoldScorer,
            search_s: float, t_start: float, search_cpu_s: float) -> dict[str, Any]:
    st = study_state(study, cfg)
    rows = settings_table(study, cfg)
    with atomic_open(run_dir.metrics_path, "w") as fh:
        for rec in trial_records(study):
            fh.write(json.dumps(to_jsonable(rec), allow_nan=True) + "\n")
    chosen = choose(rows, cfg)
    pick = chosen["pick"]
    test = prep.refit_and_test({n: pick[n] for n in cfg.space.names})
    summary: dict[str, Any] = {
        "task": TASK, "sweep_task": cfg.sweep_task, "study_name": study.study_name,
        "storage": redact(url),
        "objective": cfg.objective_list[0], "objectives": cfg.objective_list,
        "direction": cfg.direction, "directions": cfg.directions, "folds": cfg.folds,
        "sampler": cfg.sampler, "pruner": cfg.pruner, "attack": cfg.attack, "eps": cfg.eps,
        "settings": rows, **chosen, "test": test,
        **{k: v for k, v in test.items() if k.startswith("test_")},
        "n_trials": st["trials"],
        "n_complete": sum(r["state"] == "complete" for r in rows),
        "n_pruned": sum(r["state"] == "pruned" for r in rows),
        "n_failed": len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,))),
        "complete": bool(st["done"]), "search_time_s": search_s,
        # this process's CPU time (worker processes of --workers N not counted)
        "search_cpu_s": search_cpu_s,
        "dashboard": dashboard_command(url),
    }
    if cfg.oracle:
        summary["oracle"] = _oracle(cfg, prep, rows, pick, test)
    summary["plots"] = plot_sweep(rows, cfg, run_dir.path, chosen)
    summary["time_s"] = time.perf_counter() - t_start
    summary["run_dir"] = str(run_dir.path)
    run_dir.write_summary(summary)
    return summary
