"""Where a study stands: counts by state, whether it is done, and recovery of lost trials.

A worker killed mid-trial (``kill -9``) leaves a RUNNING trial behind. On RDB storages its
heartbeat stops and Optuna's :func:`optuna.storages.fail_stale_trials` fails it; the
storage's :class:`~optuna.storages.RetryHeartbeatStaleTrialCallback` queues one WAITING
copy with the same parameters. Journal storages have no heartbeats, so a RUNNING trial
started on this host by a process that no longer exists is failed and handed to the same
callback here. Either way a rerun finishes the study with every setting counted once.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from droplab.tasks.sweep import optuna_internals as internals
from droplab.tasks.sweep.config import SweepConfig

#: user attribute marking a trial that lost the race for a grid point to another worker
SURPLUS = "surplus"
#: retries of a lost trial on journal storages (RDB storages use ``--max-retry``)
JOURNAL_MAX_RETRY = 3


def worker_tag() -> str:
    """``host:pid`` of this process, stored on every trial it runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def counted(t: FrozenTrial) -> bool:
    """A trial that settles its setting: complete, or pruned (judged worse)."""
    return t.state in (TrialState.COMPLETE, TrialState.PRUNED)


def reap_dead_trials(study: optuna.Study) -> int:
    """Fail RUNNING trials whose worker is gone and queue their retries; return how many."""
    if internals.is_journal(study):
        host = socket.gethostname()
        n = 0
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            h, _, pid = t.user_attrs.get("worker", "").rpartition(":")
            if h != host or not pid.isdigit() or _pid_alive(int(pid)):
                continue
            failed = internals.fail_trial(study, t)
            if failed is not None:
                RetryHeartbeatStaleTrialCallback(max_retry=JOURNAL_MAX_RETRY)(study, failed)
                n += 1
        return n
    before = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    optuna.storages.fail_stale_trials(study)
    _fail_trials_without_heartbeat(study)
    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))) - before


def _fail_trials_without_heartbeat(study: optuna.Study) -> None:
    """Fail RUNNING trials that never beat and started more than a grace period ago.

    Optuna only counts a trial as stale once it has a heartbeat row; a worker killed
    between creating its trial and the first beat would leave it RUNNING forever.
    """
    backend = internals.rdb_backend(study)
    if backend is None or backend.heartbeat_interval is None:
        return
    grace = backend.grace_period or 2 * backend.heartbeat_interval
    now = dt.datetime.now()
    running = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
               if t.datetime_start is not None and (now - t.datetime_start).total_seconds() > grace]
    if not running:
        return
    beating = internals.trial_ids_with_heartbeat(backend)
    callback = internals.stale_trial_callback(study)
    for t in running:
        if internals.trial_id(t) in beating:
            continue
        failed = internals.fail_trial(study, t)
        if failed is not None and callback is not None:
            callback(study, failed)


def requeue_interrupted(study: optuna.Study, cfg: SweepConfig) -> int:
    """On ``--resume``: queue one retry of each failed grid trial whose setting is still open.

    A sweep stopped by Ctrl-C (or an exception) leaves its trial FAIL, not RUNNING, so no
    heartbeat retries it; without this the grid sampler would find that point only by
    re-drawing exhausted points at random. Uses the same Optuna retry callback as stale
    trials (parameters and grid position copied, ``failed_trial`` recorded); a trial that
    was already retried, or lost a grid race (surplus), is not queued again.
    """
    if cfg.sampler != "grid":
        return 0
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    key = cfg.space.key
    taken = {key(t.params) for t in trials if counted(t) or t.state in (TrialState.RUNNING,
                                                                         TrialState.WAITING)}
    retry = RetryHeartbeatStaleTrialCallback(max_retry=cfg.max_retry)
    n = 0
    for t in trials:
        k = key(t.params)
        if (t.state != TrialState.FAIL or k is None or t.user_attrs.get(SURPLUS)
                or t.number in retried or k in taken):
            continue
        retry(study, t)
        taken.add(k)
        n += 1
    return n


def study_state(study: optuna.Study, cfg: SweepConfig) -> dict[str, Any]:
    """Counts of trials by state, whether new trials are needed and whether it is done."""
    trials = study.get_trials(deepcopy=False)
    n_wait = sum(t.state == TrialState.WAITING for t in trials)
    n_run = sum(t.state == TrialState.RUNNING for t in trials)
    if cfg.sampler == "grid":
        key = cfg.space.key
        wanted = {key(s) for s in cfg.space.settings()}
        covered = {key(t.params) for t in trials if counted(t)}
        done = wanted <= covered
        # a grid point not finished, running or queued needs a new trial (GridSampler gives
        # it an unvisited point; a race between workers is caught as surplus in Objective)
        taken = covered | {key(t.params) for t in trials
                           if t.state in (TrialState.RUNNING, TrialState.WAITING)}
        need_new = not wanted <= taken
    else:
        n_done = sum(counted(t) for t in trials)
        done = n_done >= cfg.target_trials
        need_new = n_done + n_run + n_wait < cfg.target_trials
    return {"done": bool(done), "waiting": n_wait, "running": n_run,
            "need_new": bool(need_new and not done), "trials": len(trials)}
