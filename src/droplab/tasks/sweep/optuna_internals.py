"""The one place droplab reaches into Optuna's private API (Optuna 4.x–5.x).

Crash recovery needs three things Optuna's public API does not give a caller holding a
:class:`optuna.Study`: the study's storage object, a trial's storage id, and which RUNNING
trials have ever sent a heartbeat (Optuna only fails a trial as stale once it has a
heartbeat row). Everything else in :mod:`droplab.tasks.sweep` uses public names
(``fail_stale_trials``, ``RetryHeartbeatStaleTrialCallback``, samplers, pruners), so an
Optuna upgrade that moves these internals breaks only this file, and its tests
(``tests/test_tune.py``) say so.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages._rdb.models import TrialHeartbeatModel
from optuna.trial import FrozenTrial, TrialState


def storage_of(study: optuna.Study) -> BaseStorage:
    """The storage a study reads and writes (possibly Optuna's caching wrapper)."""
    return study._storage


def is_journal(study: optuna.Study) -> bool:
    return isinstance(storage_of(study), JournalStorage)


def rdb_backend(study: optuna.Study) -> RDBStorage | None:
    """The :class:`RDBStorage` under Optuna's cache, or ``None`` for other storages."""
    storage = storage_of(study)
    backend = getattr(storage, "_backend", storage)
    return backend if isinstance(backend, RDBStorage) else None


def trial_ids_with_heartbeat(backend: RDBStorage) -> set[int]:
    """Storage ids of the trials that have recorded at least one heartbeat."""
    session = backend.scoped_session()
    try:
        return {h.trial_id for h in session.query(TrialHeartbeatModel).all()}
    finally:
        session.close()


def trial_id(trial: FrozenTrial) -> int:
    """The trial's id in its storage (unlike ``number``, unique across studies)."""
    return trial._trial_id


def fail_trial(study: optuna.Study, trial: FrozenTrial) -> FrozenTrial | None:
    """Mark a RUNNING trial FAIL; return its new frozen state, or ``None`` if another
    process finished or failed it first."""
    storage = storage_of(study)
    tid = trial_id(trial)
    try:
        if not storage.set_trial_state_values(tid, state=TrialState.FAIL):
            return None
    except optuna.exceptions.UpdateFinishedTrialError:
        return None
    return storage.get_trial(tid)


def stale_trial_callback(study: optuna.Study) -> Any:
    """The RDB storage's heartbeat-stale callback (``None`` when it has none)."""
    backend = rdb_backend(study)
    return None if backend is None else backend.heartbeat_stale_trial_callback
