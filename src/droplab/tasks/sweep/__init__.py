"""Choosing the dropout rate: stratified k-fold cross-validation driven by an Optuna study.

A sweep is an Optuna study (Akiba et al. 2019, "Optuna: A Next-generation Hyperparameter
Optimization Framework") over a search space of dropout rates × kinds × placements
(× schedules), with one or several objectives. Each
trial cross-validates one setting on the training split; after the search the pick is
refitted on the whole training split and scored once on test. With ``--task gan`` the
rates are a GAN's discriminator dropout and the folds are seeds, each GAN scored by FID,
KID, modes or KL against held-out real images (:mod:`.gan_objective`).

Modules, each with one job:

- :mod:`.space`     the search space (rates per placement × kinds × placements × schedules)
- :mod:`.config`    :class:`SweepConfig` (options declared once; the train sections nested)
- :mod:`.gan_config` the ``droplab gan`` sections a GAN sweep nests, one fold's GAN config
- :mod:`.storage`   storage URLs (run-folder-relative files), samplers, pruners, opening a study
- :mod:`.optuna_internals`  the only module touching Optuna's private API
- :mod:`.progress`  study state, and recovery of trials whose worker died (heartbeats)
- :mod:`.objective` k-fold CV of one setting (the Optuna objective)
- :mod:`.gan_objective` a GAN sweep's folds: seeds, scored on held-out real images
- :mod:`.prepare`   what a worker loads before its first trial, per task
- :mod:`.workers`   the worker loop, local worker processes
- :mod:`.results`   per-setting table and per-trial records
- :mod:`.stats`     Pareto front and knee, one-standard-error rule, paired tests over folds
- :mod:`.pick`      the pick and its statistics for ``summary.json``
- :mod:`.plots`     figures
- :mod:`.run`       ``run(cfg, resume)``: start / resume / join, ``summary.json``
"""

from __future__ import annotations

from droplab.tasks.sweep.config import (
    METRIC_KEYS,
    OBJECTIVE_METRIC,
    OBJECTIVES,
    PICKS,
    PRUNERS,
    SAMPLERS,
    SweepConfig,
)
from droplab.tasks.sweep.objective import Objective, Prepared, train_and_score
from droplab.tasks.sweep.pick import choose
from droplab.tasks.sweep.progress import SURPLUS, reap_dead_trials, study_state
from droplab.tasks.sweep.run import TASK, run
from droplab.tasks.sweep.space import WHERES, SearchSpace, parse_names, parse_rates, simplicity
from droplab.tasks.sweep.storage import (
    SPACE_ATTR,
    default_storage,
    driver_url,
    make_storage,
    open_study,
    redact,
    resolve_storage,
    storage_record,
)
from droplab.tasks.sweep.workers import run_workers, worker_loop

__all__ = [
    "METRIC_KEYS", "OBJECTIVES", "OBJECTIVE_METRIC", "PICKS", "PRUNERS", "SAMPLERS",
    "SPACE_ATTR", "SURPLUS", "TASK", "WHERES", "Objective", "Prepared", "SearchSpace",
    "SweepConfig", "choose", "default_storage", "driver_url", "make_storage", "open_study",
    "parse_names", "parse_rates", "reap_dead_trials", "redact", "resolve_storage", "run",
    "run_workers", "simplicity", "storage_record", "study_state", "train_and_score",
    "worker_loop",
]
