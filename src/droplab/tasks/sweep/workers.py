"""Workers: processes that take trials from the study until it is done.

Scaling out rests on Optuna's storage, not on a home-made queue: every worker — a local
process (``--workers N``, spawned) or a process on another machine (``--join``) — runs the
same loop against the shared study, one trial at a time, and re-reads the study between
trials (:func:`~droplab.tasks.sweep.progress.study_state`), so a trial lost with its worker
is retried by whoever is left.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import torch

from droplab.tasks.sweep.config import SweepConfig
from droplab.tasks.sweep.objective import FoldScorer, Objective, Surplus
from droplab.tasks.sweep.prepare import prepare
from droplab.tasks.sweep.progress import SURPLUS, reap_dead_trials, study_state
from droplab.tasks.sweep.storage import open_study


def worker_loop(cfg: SweepConfig, url: str, name: str, *, threads: int | None = None,
                wait_for_others: bool = True, prep: FoldScorer | None = None) -> int:
    """Run trials until the study is done; return how many this worker finished.

    When nothing is left to start but other workers still run trials, wait for them (and
    retry theirs if they die) unless ``wait_for_others`` is false.
    """
    if threads:
        torch.set_num_threads(threads)
    study = open_study(cfg, url, name, create=False)
    ran = 0
    poll = max(0.2, min(1.0, cfg.heartbeat_interval / 2))
    while True:
        reap_dead_trials(study)
        st = study_state(study, cfg)
        if st["done"]:
            break
        if st["waiting"] or st["need_new"]:
            if prep is None:
                prep = prepare(cfg)
            study.optimize(Objective(prep), n_trials=1, catch=(Surplus,), gc_after_trial=False)
            if study.trials[-1].user_attrs.get(SURPLUS):
                time.sleep(poll)  # another worker holds that grid point; let it progress
            else:
                ran += 1
            continue
        if st["running"] and wait_for_others:
            time.sleep(poll)
            continue
        break
    return ran


def _worker_entry(cfg: SweepConfig, url: str, name: str, threads: int) -> None:
    os.environ.setdefault("DROPLAB_PROGRESS", "0")
    worker_loop(cfg, url, name, threads=threads)


def threads_per_worker(cfg: SweepConfig) -> int:
    return cfg.threads or max(1, (os.cpu_count() or 1) // cfg.workers)


def run_workers(cfg: SweepConfig, url: str, name: str, prep: FoldScorer | None = None) -> None:
    """Run the study with ``cfg.workers`` local processes (spawned), or in this process."""
    threads = threads_per_worker(cfg)
    if cfg.workers == 1:
        worker_loop(cfg, url, name, prep=prep, threads=threads)
        return
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker_entry, args=(cfg, url, name, threads), daemon=False)
             for _ in range(cfg.workers)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    except BaseException:
        for p in procs:
            if p.is_alive():
                p.terminate()
        raise
    # a worker that died leaves its trial to be retried: finish the study here
    worker_loop(cfg, url, name, prep=prep, threads=threads)
