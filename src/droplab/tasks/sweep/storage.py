"""Study storage: URLs, run-folder-relative paths, samplers, pruners, opening a study.

A storage is a URL (Optuna's convention): ``sqlite:///FILE`` (one process; trial
heartbeats), ``journal:FILE`` (an Optuna journal file: safe for many local processes) or
``postgresql://USER:PASS@HOST/DB`` (workers on many machines). A file inside the run folder
is written to ``config.json`` relative to that folder (``sqlite:///study.db``,
``journal:study.journal``), so a copied or moved sweep folder resumes in place
(:func:`storage_record`, :func:`resolve_storage`).
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from sqlalchemy.engine import make_url

from droplab.errors import InvalidValue, UserError
from droplab.fileio import DiskWriteError
from droplab.runs import to_jsonable
from droplab.tasks.sweep.config import SweepConfig

#: user attribute of the study holding :meth:`SweepConfig.space_record`
SPACE_ATTR = "droplab_space"
SQLITE, JOURNAL = "sqlite:///", "journal:"


def redact(url: str) -> str:
    """The storage URL with any password hidden, for messages and summaries."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL (journal:FILE): nothing to hide
        return url


def driver_url(url: str) -> str:
    """Pick an installed PostgreSQL driver: SQLAlchemy 2.1 maps ``postgresql://`` to psycopg 3;
    fall back to psycopg2 (droplab's ``pg`` extra) when only that one is installed."""
    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def default_storage(out: Path, workers: int) -> str:
    """``sqlite:///OUT/study.db``, or a journal file when several local workers share it."""
    if workers > 1:
        return f"{JOURNAL}{(out / 'study.journal').resolve()}"
    return f"{SQLITE}{(out / 'study.db').resolve()}"


# ------------------------------------------------------------------------------------------
# run-folder-relative storage (issue 14: resume follows the folder you name)
# ------------------------------------------------------------------------------------------
def _split_file_url(url: str) -> tuple[str, str, str] | None:
    """``(prefix, path, query)`` of a file-backed storage URL, else ``None``."""
    if url.startswith(SQLITE):
        rest = url[len(SQLITE):]
        path, sep, query = rest.partition("?")
        return SQLITE, path, sep + query
    if url.startswith(JOURNAL):
        path = url[len(JOURNAL):]
        return JOURNAL, path[2:] if path.startswith("//") else path, ""
    return None


def default_storage_record(workers: int) -> str:
    """The default study file, as ``config.json`` stores it (relative to the run folder)."""
    return f"{JOURNAL}study.journal" if workers > 1 else f"{SQLITE}study.db"


def is_run_file(record: str) -> bool:
    """A stored storage URL naming a file inside the run folder (a relative path)."""
    parts = _split_file_url(record)
    return parts is not None and not Path(parts[1]).is_absolute()


def absolute_storage(url: str) -> str:
    """A storage URL typed by the user, with a relative file path made absolute (relative
    to the working directory, as SQLAlchemy reads it)."""
    parts = _split_file_url(url)
    if parts is None:
        return url
    prefix, path, query = parts
    return f"{prefix}{Path(path).resolve()}{query}"


def storage_record(url: str, run_path: Path) -> str:
    """The storage URL as ``config.json`` stores it: a file inside the run folder relative
    to it, anything else (a shared database, a file elsewhere) unchanged."""
    parts = _split_file_url(url)
    if parts is None:
        return url
    prefix, path, query = parts
    file = Path(path).resolve()
    try:
        rel = file.relative_to(run_path.resolve())
    except ValueError:
        return f"{prefix}{file}{query}"
    return f"{prefix}{rel.as_posix()}{query}"


def resolve_storage(record: str, run_path: Path, stored_out: str | None = None) -> str:
    """The storage URL to open for a run folder at ``run_path`` from its ``config.json``.

    A relative file path is relative to the run folder. ``config.json`` files of the
    previous release hold absolute paths; one inside the folder the run was created in
    (``stored_out``) is moved along with the folder too.
    """
    parts = _split_file_url(record)
    if parts is None:
        return record
    prefix, path, query = parts
    file = Path(path)
    if not file.is_absolute():
        return f"{prefix}{(run_path / file).resolve()}{query}"
    if stored_out:
        try:
            rel = file.relative_to(Path(stored_out).resolve())
        except ValueError:
            return record
        return f"{prefix}{(run_path / rel).resolve()}{query}"
    return record


# ------------------------------------------------------------------------------------------
# opening storages and studies
# ------------------------------------------------------------------------------------------
def dashboard_command(url: str) -> str:
    """The ``optuna-dashboard`` command line that opens the study's storage (password hidden)."""
    parts = _split_file_url(url)
    if parts is not None and parts[0] == JOURNAL:
        return f"optuna-dashboard --storage-class JournalFileStorage {parts[1]}"
    return f"optuna-dashboard {redact(url)}"


def quiet_optuna() -> None:
    """Optuna's INFO lines and experimental warnings would drown the sweep's own output."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")


def make_storage(url: str, cfg: SweepConfig) -> Any:
    """An Optuna storage for ``url`` with heartbeats and retry of stale trials.

    Unreachable or malformed URLs raise a one-line :class:`UserError` naming the URL.
    """
    quiet_optuna()
    if url.startswith(JOURNAL):
        parts = _split_file_url(url)
        assert parts is not None
        path = parts[1]
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(path))
        except OSError as exc:
            raise UserError(f"cannot open study journal {path}: {exc.strerror or exc}") from exc
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    if scheme not in ("sqlite", "postgresql", "mysql"):
        raise InvalidValue(
            f"unsupported --storage {redact(url)!r}; use sqlite:///FILE, journal:FILE or "
            "postgresql://USER:PASS@HOST:PORT/DB"
        )
    engine_kwargs: dict[str, Any] = {}
    if scheme == "postgresql":
        engine_kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 5}}
    grace = cfg.grace_period if cfg.grace_period is not None else 2 * cfg.heartbeat_interval
    try:
        return optuna.storages.RDBStorage(
            driver_url(url),
            engine_kwargs=engine_kwargs,
            heartbeat_interval=cfg.heartbeat_interval,
            grace_period=grace,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=cfg.max_retry),
        )
    except Exception as exc:  # sqlalchemy OperationalError, ArgumentError, missing driver …
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        first = reason[0] if reason else exc.__class__.__name__
        if "disk is full" in first or "No space left" in first:
            raise DiskWriteError(f"cannot write study storage {redact(url)}: no space left on "
                                 "the device; free some space or choose another --out or "
                                 "--storage") from None
        raise UserError(
            f"cannot reach study storage {redact(url)} ({first}); start the database or fix "
            "--storage"
        ) from None


def make_sampler(cfg: SweepConfig) -> optuna.samplers.BaseSampler:
    """Seeded: the grid in a fixed shuffled order, TPE (Bergstra et al. 2011; multivariate,
    and multi-objective with several objectives), random search, or NSGA-II (Deb et al.
    2002)."""
    seed = cfg.seed
    if cfg.sampler == "grid":
        return optuna.samplers.GridSampler(cfg.space.grid(), seed=seed)
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if cfg.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed,
                                             population_size=max(4, min(50, cfg.target_trials // 2)))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(5, cfg.target_trials),
                                      multivariate=True)


def make_pruner(cfg: SweepConfig) -> optuna.pruners.BasePruner:
    """Median stopping (Golovin et al. 2017) or Hyperband (Li et al. 2018); a step is one
    epoch of one fold (see :mod:`droplab.tasks.sweep.objective`)."""
    steps = int(cfg.folds) * int(cfg.train.epochs)
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=steps,
                                              reduction_factor=3)
    return optuna.pruners.NopPruner()


def study_exists(storage: Any, name: str) -> bool:
    return name in {s.study_name for s in optuna.get_all_study_summaries(storage)}


def open_study(cfg: SweepConfig, url: str, name: str, *, create: bool) -> optuna.Study:
    """Create (``create``) or load the study, checking the stored search space."""
    storage = make_storage(url, cfg)
    record = to_jsonable(cfg.space_record())
    exists = study_exists(storage, name)
    if create and not exists:
        study = optuna.create_study(study_name=name, storage=storage,
                                    sampler=make_sampler(cfg), pruner=make_pruner(cfg),
                                    directions=cfg.directions)
        study.set_user_attr(SPACE_ATTR, record)
        study.set_metric_names(cfg.objective_list)  # optuna-dashboard labels its axes with them
        return study
    if not exists:
        raise UserError(f"no study {name!r} in {redact(url)}; start it first with droplab sweep "
                        "--storage … --study-name … (without --join)")
    study = optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(cfg),
                              pruner=make_pruner(cfg))
    stored = study.user_attrs.get(SPACE_ATTR)
    if stored != record:
        diff = sorted(k for k in set(record) | set(stored or {})
                      if (stored or {}).get(k) != record.get(k))
        raise UserError(
            f"study {name!r} in {redact(url)} was started with a different search space or "
            f"setup ({', '.join(diff) or 'not a droplab sweep'}); use the same options or a new "
            "--study-name"
        )
    return study

