"""Choosing the dropout rate: stratified k-fold cross-validation driven by an Optuna study.

A sweep is an Optuna study (Akiba et al. 2019, "Optuna: A Next-generation Hyperparameter
Optimization Framework") over a search space of dropout rates × kinds × placements. Each
trial trains one setting on the training split only, with stratified k-fold CV
(:func:`droplab.data.kfold_splits`); fold ``i``'s score is reported as step ``i`` so a
median (Hyperband, Li et al. 2018) pruner can stop a poor setting after its first folds.
Every trial records all metrics (accuracy, NLL, ECE, robust accuracy under FGSM/PGD, the
train–validation gap) whatever the objective. After the search the pick is refitted on
the whole training split and scored once on the test split; ``oracle=True`` also scores
every setting on test to measure how good the CV pick was.

Storage is a URL. ``sqlite:///<out>/study.db`` (default) serves one process and has trial
heartbeats; ``workers > 1`` defaults to an Optuna journal file (``journal:<out>/study.journal``),
safe for many local processes; ``postgresql://…`` lets workers on many machines join the same
study (``join=True``). A worker killed mid-trial (``kill -9``) leaves a RUNNING trial whose
heartbeat stops (RDB storages) or whose process is gone (journal, same host); it is failed
and re-queued once by :class:`optuna.storages.RetryHeartbeatStaleTrialCallback` (the
successor of ``RetryFailedTrialCallback``), so a rerun with ``resume=True`` finishes the
study with every setting complete or pruned exactly once.

Trials are seeded by ``(seed, fold)`` only, never by trial number: all settings share the
same folds, initial weights and batch order (common random numbers, which makes the
comparison between rates less noisy) and a retried trial reproduces the lost one.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing as mp
import os
import socket
import statistics
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from droplab.errors import InvalidValue, ResumeError, UserError, check_rate, unknown_name
from droplab.runs import RunDir, atomic_open, to_jsonable

OBJECTIVES: dict[str, str] = {"acc": "maximize", "nll": "minimize", "ece": "minimize",
                              "robust": "maximize"}
#: objective name → key of the per-fold metrics dict
OBJECTIVE_METRIC = {"acc": "acc", "nll": "nll", "ece": "ece", "robust": "robust_acc"}
SAMPLERS = ("grid", "tpe")
PRUNERS = ("none", "median", "hyperband")
WHERES = ("head", "conv", "all")
METRIC_KEYS = ("acc", "nll", "ece", "robust_acc", "train_acc", "gap")
SPACE_ATTR = "droplab_space"
SURPLUS = "surplus"


# ------------------------------------------------------------------------------------------
# search space
# ------------------------------------------------------------------------------------------
def parse_rates(text: str) -> list[float]:
    """``"0,0.25,0.5"`` (a list) or ``"0:0.5:6"`` (``start:stop:count``, both ends included).

    Every rate is validated as a drop probability in [0, 1).
    """
    text = str(text).strip()
    if not text:
        raise InvalidValue("--rates is empty; give a list like 0,0.25,0.5 or a range like 0:0.5:6")
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise InvalidValue(f"--rates range {text!r} must be start:stop:count, e.g. 0:0.5:6")
        try:
            start, stop, count = float(parts[0]), float(parts[1]), int(parts[2])
        except ValueError:
            raise InvalidValue(f"--rates range {text!r} must be start:stop:count, e.g. 0:0.5:6") from None
        if count < 1:
            raise InvalidValue(f"--rates range {text!r} has count {count}; use at least 1")
        if count == 1:
            rates = [start]
        else:
            rates = [round(start + (stop - start) * i / (count - 1), 10) for i in range(count)]
    else:
        rates = []
        for part in text.split(","):
            if not part.strip():
                raise InvalidValue(f"--rates {text!r} has an empty item; write e.g. 0,0.25,0.5")
            try:
                rates.append(float(part))
            except ValueError:
                raise InvalidValue(f"--rates item {part.strip()!r} is not a number") from None
    return [check_rate(r, "rate") for r in rates]


def parse_names(text: str | Sequence[str]) -> list[str]:
    """``"dropout,gaussian"`` → ``["dropout", "gaussian"]``."""
    items = text.split(",") if isinstance(text, str) else list(text)
    return [s.strip() for s in items if s.strip()]


@dataclass
class SearchSpace:
    """Rates × dropout kinds × placements; every combination is one setting."""

    rates: list[float]
    kinds: list[str] = field(default_factory=lambda: ["dropout"])
    wheres: list[str] = field(default_factory=lambda: ["head"])

    def validate(self, model: str | None = None) -> None:
        """One-line errors for an empty, duplicated or inconsistent space."""
        from droplab.layers import KINDS

        for name, values in (("--rates", self.rates), ("--kinds", self.kinds),
                             ("--wheres", self.wheres)):
            if not values:
                raise InvalidValue(f"the search space is empty: {name} has no values")
            if len(set(values)) != len(values):
                raise InvalidValue(f"{name} lists a value twice ({values}); list each once")
        self.rates = [check_rate(r, "rate") for r in self.rates]
        for k in self.kinds:
            if k not in KINDS:
                raise unknown_name("dropout kind", k, KINDS)
        for w in self.wheres:
            if w not in WHERES:
                raise unknown_name("dropout placement (--wheres)", w, WHERES)
        if model == "mlp" and any(w != "head" for w in self.wheres):
            raise InvalidValue(
                "the search space is inconsistent: model 'mlp' has no conv layers, so "
                "--wheres can only be 'head'"
            )

    def settings(self) -> list[dict[str, Any]]:
        return [{"rate": r, "kind": k, "where": w}
                for k in self.kinds for w in self.wheres for r in self.rates]

    def grid(self) -> dict[str, list[Any]]:
        return {"rate": list(self.rates), "kind": list(self.kinds), "where": list(self.wheres)}


def setting_key(params: dict[str, Any]) -> tuple[float, str, str]:
    return (round(float(params["rate"]), 10), str(params["kind"]), str(params["where"]))


# ------------------------------------------------------------------------------------------
# config
# ------------------------------------------------------------------------------------------
@dataclass
class SweepConfig:
    """A dropout sweep over one ``droplab train`` configuration (``base``).

    ``base`` is a :class:`droplab.tasks.classify.ClassifyConfig`; its dropout rate, kind and
    placement are overridden by each setting, its ``seed``/``device``/``out`` are the
    sweep's. ``n_trials`` defaults to the grid size. ``grace_period`` defaults to twice the
    heartbeat interval. ``threads`` is torch's intra-op threads per worker (default: CPU
    cores ÷ workers); on a CPU shared with other jobs 1 thread can be many times faster.
    """

    base: Any
    space: SearchSpace
    folds: int = 5
    objective: str = "acc"
    attack: str = "fgsm"
    eps: float = 0.1
    attack_steps: int = 10
    attack_alpha: float | None = None
    attack_samples: int = 500
    sampler: str = "grid"
    n_trials: int | None = None
    pruner: str = "none"
    storage: str | None = None
    study_name: str | None = None
    workers: int = 1
    heartbeat_interval: int = 10
    grace_period: int | None = None
    max_retry: int = 3
    oracle: bool = False
    join: bool = False
    train_eval_samples: int = 2000
    threads: int | None = None

    def validate(self) -> None:
        from droplab.evaluate.robustness import check_attack

        self.space.validate(getattr(self.base, "model", None))
        if self.objective not in OBJECTIVES:
            raise unknown_name("objective", self.objective, OBJECTIVES)
        if self.sampler not in SAMPLERS:
            raise unknown_name("sampler", self.sampler, SAMPLERS)
        if self.pruner not in PRUNERS:
            raise unknown_name("pruner", self.pruner, PRUNERS)
        check_attack(self.attack, self.eps, self.attack_steps, self.attack_alpha)
        if int(self.folds) != self.folds or self.folds < 2:
            raise InvalidValue(f"--folds must be an integer >= 2, got {self.folds}")
        if self.workers < 1:
            raise InvalidValue(f"--workers must be at least 1, got {self.workers}")
        if self.n_trials is not None and self.n_trials < 1:
            raise InvalidValue(f"--trials must be at least 1, got {self.n_trials}")
        if self.heartbeat_interval < 1:
            raise InvalidValue(f"--heartbeat-interval must be >= 1 s, got {self.heartbeat_interval}")
        if self.grace_period is not None and self.grace_period <= self.heartbeat_interval:
            raise InvalidValue("--grace-period must exceed --heartbeat-interval "
                               f"({self.grace_period} <= {self.heartbeat_interval})")
        if self.threads is not None and self.threads < 1:
            raise InvalidValue(f"--threads must be at least 1, got {self.threads}")
        if self.attack_samples < 1:
            raise InvalidValue(f"--attack-samples must be at least 1, got {self.attack_samples}")
        if self.join and not (self.storage and self.study_name):
            raise InvalidValue("--join needs the shared --storage URL and the --study-name to join")

    @property
    def direction(self) -> str:
        return OBJECTIVES[self.objective]

    @property
    def target_trials(self) -> int:
        return self.n_trials if self.n_trials is not None else len(self.space.settings())

    def space_record(self) -> dict[str, Any]:
        """What must agree between the study and every worker joining it."""
        base = to_jsonable(self.base)
        for k in ("out", "device", "dropout", "dropout_kind", "dropout_where"):
            base.pop(k, None)
        return {"space": self.space.grid(), "folds": int(self.folds), "objective": self.objective,
                "sampler": self.sampler, "n_trials": self.target_trials,
                "attack": [self.attack, float(self.eps), int(self.attack_steps),
                           self.attack_alpha], "base": base}


def config_from_dict(d: dict[str, Any]) -> SweepConfig:
    """Rebuild a :class:`SweepConfig` from its ``config.json`` (for ``--resume``)."""
    from droplab.tasks.classify import ClassifyConfig

    d = dict(d)
    d.pop("task", None)
    base = ClassifyConfig.from_dict(d.pop("base"))
    space = SearchSpace(**d.pop("space"))
    names = {f.name for f in dataclasses.fields(SweepConfig)}
    return SweepConfig(base=base, space=space, **{k: v for k, v in d.items() if k in names})


# ------------------------------------------------------------------------------------------
# storage
# ------------------------------------------------------------------------------------------
def redact(url: str) -> str:
    """The storage URL with any password hidden, for messages and summaries."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def driver_url(url: str) -> str:
    """Pick an installed PostgreSQL driver: SQLAlchemy 2.1 maps ``postgresql://`` to psycopg 3;
    fall back to psycopg2 (droplab's ``pg`` extra) when only that one is installed."""
    import importlib.util

    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def default_storage(out: Path, workers: int) -> str:
    if workers > 1:
        return f"journal:{(out / 'study.journal').resolve()}"
    return f"sqlite:///{(out / 'study.db').resolve()}"


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", category=FutureWarning, module="optuna")


def make_storage(url: str, cfg: SweepConfig) -> Any:
    """An Optuna storage for ``url`` with heartbeats and retry of stale trials.

    Unreachable or malformed URLs raise a one-line :class:`UserError` naming the URL.
    """
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    _quiet_optuna()
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = url[len("journal:"):]
        path = path[2:] if path.startswith("//") else path
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
        raise UserError(
            f"cannot reach study storage {redact(url)} ({first}); start the database or fix "
            "--storage"
        ) from None


def _make_sampler(cfg: SweepConfig) -> Any:
    import optuna

    seed = int(cfg.base.seed)
    if cfg.sampler == "grid":
        return optuna.samplers.GridSampler(cfg.space.grid(), seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(5, cfg.target_trials))


def _make_pruner(cfg: SweepConfig) -> Any:
    import optuna

    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=int(cfg.folds),
                                              reduction_factor=3)
    return optuna.pruners.NopPruner()


def open_study(cfg: SweepConfig, url: str, name: str, *, create: bool) -> Any:
    """Create (``create``) or load the study, checking the stored search space."""
    import optuna

    storage = make_storage(url, cfg)
    record = to_jsonable(cfg.space_record())
    exists = name in {s.study_name for s in optuna.get_all_study_summaries(storage)}
    if create and not exists:
        study = optuna.create_study(study_name=name, storage=storage,
                                    sampler=_make_sampler(cfg), pruner=_make_pruner(cfg),
                                    direction=cfg.direction)
        study.set_user_attr(SPACE_ATTR, record)
        return study
    if not exists:
        raise UserError(f"no study {name!r} in {redact(url)}; start it first with droplab sweep "
                        "--storage … --study-name … (without --join)")
    study = optuna.load_study(study_name=name, storage=storage, sampler=_make_sampler(cfg),
                              pruner=_make_pruner(cfg))
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


# ------------------------------------------------------------------------------------------
# progress of a study
# ------------------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _worker_tag() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def reap_dead_trials(study: Any) -> int:
    """Fail RUNNING trials whose worker is gone and queue their retries; return how many.

    RDB storages use Optuna's heartbeats (:func:`optuna.storages.fail_stale_trials`).
    Journal storages have none, so a trial started on this host whose process no longer
    exists is failed and handed to the same retry callback.
    """
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    storage = study._storage
    if isinstance(storage, optuna.storages.JournalStorage):
        host = socket.gethostname()
        n = 0
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            tag = t.user_attrs.get("worker", "")
            h, _, pid = tag.rpartition(":")
            if h != host or not pid.isdigit() or _pid_alive(int(pid)):
                continue
            try:
                storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
            RetryHeartbeatStaleTrialCallback(max_retry=3)(study, storage.get_trial(t._trial_id))
            n += 1
        return n
    before = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    optuna.storages.fail_stale_trials(study)
    _fail_trials_without_heartbeat(study)
    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,))) - before


def _fail_trials_without_heartbeat(study: Any) -> None:
    """Fail RUNNING trials that never beat and started more than a grace period ago.

    Optuna only counts a trial as stale once it has a heartbeat row; a worker killed
    between creating its trial and the first beat would leave it RUNNING forever.
    """
    import datetime as dt

    import optuna
    from optuna.storages._rdb.models import TrialHeartbeatModel
    from optuna.trial import TrialState

    storage = study._storage
    backend = getattr(storage, "_backend", storage)
    if not isinstance(backend, optuna.storages.RDBStorage) or backend.heartbeat_interval is None:
        return
    grace = backend.grace_period or 2 * backend.heartbeat_interval
    now = dt.datetime.now()
    running = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
               if t.datetime_start is not None and (now - t.datetime_start).total_seconds() > grace]
    if not running:
        return
    session = backend.scoped_session()
    try:
        beating = {h.trial_id for h in session.query(TrialHeartbeatModel).all()}
    finally:
        session.close()
    callback = backend.heartbeat_stale_trial_callback
    for t in running:
        if t._trial_id in beating:
            continue
        try:
            if not storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        if callback is not None:
            callback(study, storage.get_trial(t._trial_id))


def _counted(t: Any) -> bool:
    from optuna.trial import TrialState

    return t.state in (TrialState.COMPLETE, TrialState.PRUNED)


def study_state(study: Any, cfg: SweepConfig) -> dict[str, int | bool]:
    """Counts of trials by state, whether new trials are needed and whether it is done."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    n_wait = sum(t.state == TrialState.WAITING for t in trials)
    n_run = sum(t.state == TrialState.RUNNING for t in trials)
    if cfg.sampler == "grid":
        wanted = {setting_key(s) for s in cfg.space.settings()}
        covered = {setting_key(t.params) for t in trials if _counted(t) and t.params}
        done = wanted <= covered
        # a grid point not finished, running or queued needs a new trial (GridSampler gives
        # it an unvisited point; a race between workers is caught as surplus in Objective)
        taken = covered | {setting_key(t.params) for t in trials if t.params and
                           t.state in (TrialState.RUNNING, TrialState.WAITING)}
        need_new = not wanted <= taken
    else:
        n_done = sum(_counted(t) for t in trials)
        done = n_done >= cfg.target_trials
        need_new = n_done + n_run + n_wait < cfg.target_trials
    return {"done": bool(done), "waiting": n_wait, "running": n_run,
            "need_new": bool(need_new and not done), "trials": len(trials)}


# ------------------------------------------------------------------------------------------
# the objective
# ------------------------------------------------------------------------------------------
class _Surplus(Exception):
    """A trial that would repeat a grid point another worker already took."""


def setting_config(base: Any, params: dict[str, Any]) -> Any:
    """The base :class:`~droplab.tasks.classify.ClassifyConfig` with one setting applied."""
    return dataclasses.replace(base, dropout=float(params["rate"]), dropout_kind=params["kind"],
                               dropout_where=params["where"])


class Prepared:
    """The dataset, folds and device one worker needs, loaded once."""

    def __init__(self, cfg: SweepConfig) -> None:
        from droplab import data as D
        from droplab.runtime import resolve_device

        b = cfg.base
        self.cfg = cfg
        self.device = resolve_device(getattr(b, "device", "auto"))
        self.bundle = load_bundle(b)
        self.folds = D.kfold_splits(self.bundle.train.labels, int(cfg.folds), seed=int(b.seed))


def load_bundle(base: Any) -> Any:
    from droplab import data as D

    return D.load_dataset(base.dataset, base.data_root, base.classes, image_size=base.image_size,
                          seed=int(base.seed), download=base.download, limit=base.limit)


def train_and_score(
    prep: Prepared,
    params: dict[str, Any],
    train_idx: torch.Tensor | None,
    eval_data: Any,
    eval_idx: torch.Tensor | None,
    seed: int,
) -> dict[str, float]:
    """Train one setting on ``train_idx`` of the training split, score it on ``eval_data``.

    Returns acc, nll, ece, robust_acc, train_acc (eval mode, on up to
    ``train_eval_samples`` training images), gap = train_acc − acc, time_s.
    """
    from droplab.data import Loader
    from droplab.evaluate.robustness import robust_accuracy
    from droplab.models import build_model
    from droplab.runtime import seed_everything
    from droplab.train import evaluate, fit, predict_proba
    from droplab.uncertainty import expected_calibration_error, negative_log_likelihood

    cfg, b, bundle, device = prep.cfg, prep.cfg.base, prep.bundle, prep.device
    t0 = time.perf_counter()
    seed_everything(seed)
    scfg = setting_config(b, params)
    model = build_model(scfg.model_config(), bundle.in_shape, len(bundle.classes))
    tcfg = scfg.train_config()
    common = {"mean": bundle.mean, "std": bundle.std, "device": device}
    n_fit = len(train_idx) if train_idx is not None else len(bundle.train.labels)
    train_loader = Loader(bundle.train, train_idx, batch_size=tcfg.batch_size, shuffle=True,
                          augment=scfg.resolved_augment(bundle.name, bundle.in_shape[0]),
                          seed=seed, drop_last=n_fit % tcfg.batch_size == 1,  # BatchNorm
                          **common)
    fit(model, train_loader, None, tcfg, device=device)
    eval_bs = max(256, tcfg.batch_size)
    eval_loader = Loader(eval_data, eval_idx, batch_size=eval_bs, shuffle=False, **common)
    probs, labels = predict_proba(model, eval_loader, device)
    acc = float((probs.argmax(1) == labels).double().mean())
    sub = torch.arange(n_fit) if train_idx is None else train_idx
    gen = torch.Generator().manual_seed(seed)
    sub = sub[torch.randperm(len(sub), generator=gen)[: cfg.train_eval_samples]].sort().values
    train_acc = evaluate(model, Loader(bundle.train, sub, batch_size=eval_bs, shuffle=False,
                                       **common), device)["acc"]
    robust = robust_accuracy(model, eval_loader, attack=cfg.attack, eps=cfg.eps,
                             steps=cfg.attack_steps, alpha=cfg.attack_alpha,
                             max_samples=cfg.attack_samples, seed=seed, **common)
    return {"acc": acc, "nll": negative_log_likelihood(probs, labels),
            "ece": expected_calibration_error(probs, labels), "robust_acc": float(robust),
            "train_acc": float(train_acc), "gap": float(train_acc) - acc,
            "time_s": time.perf_counter() - t0}


def _fold_seed(seed: int, fold: int) -> int:
    return int(seed) * 1009 + 7919 * (fold + 1)


class Objective:
    """The Optuna objective: k-fold CV of one setting, fold ``i`` reported as step ``i``."""

    def __init__(self, prep: Prepared) -> None:
        self.prep = prep

    def __call__(self, trial: Any) -> float:
        import optuna
        from optuna.trial import TrialState

        cfg = self.prep.cfg
        space = cfg.space
        trial.set_user_attr("worker", _worker_tag())
        params = {"rate": trial.suggest_categorical("rate", space.rates),
                  "kind": trial.suggest_categorical("kind", space.kinds),
                  "where": trial.suggest_categorical("where", space.wheres)}
        key = setting_key(params)
        others = [t for t in trial.study.get_trials(deepcopy=False)
                  if t.number != trial.number and t.params and setting_key(t.params) == key]
        if cfg.sampler == "grid":
            # another worker already holds or finished this grid point: do not repeat it
            if any(_counted(t) or (t.state == TrialState.RUNNING and t.number < trial.number)
                   for t in others):
                trial.set_user_attr(SURPLUS, True)
                raise _Surplus(f"grid point {params} is already taken")
        else:
            # TPE may propose a setting again; its CV result is deterministic, so reuse it
            for t in others:
                if t.state == TrialState.COMPLETE and "folds" in t.user_attrs:
                    trial.set_user_attr("folds", t.user_attrs["folds"])
                    trial.set_user_attr("reused_from", t.number)
                    return float(t.value)
        metric = OBJECTIVE_METRIC[cfg.objective]
        folds: list[dict[str, float]] = []
        for i, (tr, va) in enumerate(self.prep.folds):
            m = train_and_score(self.prep, params, tr, self.prep.bundle.train, va,
                                _fold_seed(cfg.base.seed, i))
            folds.append(m)
            trial.set_user_attr("folds", folds)
            trial.report(m[metric], i)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after fold {i}")
        return statistics.fmean(f[metric] for f in folds)


# ------------------------------------------------------------------------------------------
# workers
# ------------------------------------------------------------------------------------------
def worker_loop(cfg: SweepConfig, url: str, name: str, *, threads: int | None = None,
                wait_for_others: bool = True, prep: Prepared | None = None) -> int:
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
                prep = Prepared(cfg)
            objective = Objective(prep)
            study.optimize(objective, n_trials=1, catch=(_Surplus,), gc_after_trial=False)
            last = study.trials[-1]
            if last.user_attrs.get(SURPLUS):
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


def _threads(cfg: SweepConfig) -> int:
    return cfg.threads or max(1, (os.cpu_count() or 1) // cfg.workers)


def run_workers(cfg: SweepConfig, url: str, name: str, prep: Prepared | None = None) -> None:
    """Run the study with ``cfg.workers`` local processes (spawned), or in this process."""
    threads = _threads(cfg)
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


# ------------------------------------------------------------------------------------------
# summary
# ------------------------------------------------------------------------------------------
def _mean_std(values: Sequence[float]) -> dict[str, float]:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return {"mean": float("nan"), "std": float("nan")}
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}


def settings_table(study: Any, cfg: SweepConfig) -> list[dict[str, Any]]:
    """One row per setting of the space: its counted trial, CV mean ± std of every metric."""
    from optuna.trial import TrialState

    by_key: dict[tuple[float, str, str], Any] = {}
    for t in study.get_trials(deepcopy=False):
        if not (_counted(t) and t.params):
            continue
        key = setting_key(t.params)
        prev = by_key.get(key)
        if prev is None or (prev.state != TrialState.COMPLETE and t.state == TrialState.COMPLETE):
            by_key[key] = t
    rows = []
    for s in cfg.space.settings():
        t = by_key.get(setting_key(s))
        row: dict[str, Any] = {**s, "state": "missing", "trial": None, "folds_done": 0}
        if t is not None:
            folds = t.user_attrs.get("folds", [])
            row.update(state=t.state.name.lower(), trial=t.number, folds_done=len(folds),
                       value=t.value,
                       cv={k: _mean_std([f[k] for f in folds]) for k in METRIC_KEYS})
        rows.append(row)
    return rows


def _trial_records(study: Any) -> list[dict[str, Any]]:
    out = []
    for t in study.get_trials(deepcopy=False):
        out.append({"trial": t.number, "state": t.state.name.lower(), "params": t.params,
                    "value": t.value, "intermediate": t.intermediate_values,
                    "worker": t.user_attrs.get("worker"), "surplus": t.user_attrs.get(SURPLUS, False),
                    "retry_of": t.system_attrs.get("failed_trial"),
                    "folds": t.user_attrs.get("folds", []),
                    "duration_s": t.duration.total_seconds() if t.duration else None})
    return out


def plot_sweep(rows: list[dict[str, Any]], cfg: SweepConfig, out: Path) -> list[str]:
    """CV score vs rate (error bars: std over folds), train–val gap vs rate, robust acc vs rate."""
    from matplotlib.figure import Figure

    from droplab.plots import save_figure

    metric = OBJECTIVE_METRIC[cfg.objective]
    specs = [("cv_vs_rate.png", metric, f"CV {metric} ({cfg.folds}-fold, mean ± std)"),
             ("gap_vs_rate.png", "gap", "train − validation accuracy"),
             ("robust_vs_rate.png", "robust_acc",
              f"robust accuracy ({cfg.attack.upper()}, ε={cfg.eps:g})")]
    paths = []
    for fname, key, ylabel in specs:
        fig = Figure(figsize=(5.5, 3.8))
        ax = fig.add_subplot(1, 1, 1)
        for kind in cfg.space.kinds:
            for where in cfg.space.wheres:
                pts = [r for r in rows if r["kind"] == kind and r["where"] == where and "cv" in r]
                pts.sort(key=lambda r: r["rate"])
                if not pts:
                    continue
                xs = [r["rate"] for r in pts]
                ys = [r["cv"][key]["mean"] for r in pts]
                es = [r["cv"][key]["std"] for r in pts]
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=f"{kind} @ {where}")
                for r in pts:
                    if r["state"] == "pruned":
                        ax.annotate("pruned", (r["rate"], r["cv"][key]["mean"]), fontsize=7)
        ax.set_xlabel("dropout rate p (drop probability)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save_figure(fig, out / fname)
        paths.append(str(out / fname))
    return paths


def _test_figures(prep: Prepared, params: dict[str, Any]) -> dict[str, float]:
    m = train_and_score(prep, params, None, prep.bundle.test, None, _fold_seed(prep.cfg.base.seed, -1))
    return {"test_acc": m["acc"], "test_nll": m["nll"], "test_ece": m["ece"],
            "test_robust_acc": m["robust_acc"], "train_acc": m["train_acc"], "time_s": m["time_s"]}


# ------------------------------------------------------------------------------------------
# run
# ------------------------------------------------------------------------------------------
def run(cfg: SweepConfig, resume: bool = False) -> dict[str, Any]:
    """Run (or resume, or join) a sweep; write and return ``summary.json``'s content."""
    cfg.validate()
    t_start = time.perf_counter()
    if cfg.join:
        return _join(cfg)
    run_dir = RunDir.create(cfg.base.out, "sweep", resume=resume)
    cfg.base.out = str(run_dir.path)
    if resume:
        stored = run_dir.read_config()
        if stored.get("task") != "sweep":
            raise ResumeError(f"{run_dir.path} is not a sweep folder; pass the --out of a sweep")
        cfg.storage = cfg.storage or stored.get("storage")
        cfg.study_name = cfg.study_name or stored.get("study_name")
    url = cfg.storage or default_storage(run_dir.path, cfg.workers)
    if cfg.workers > 1 and url.startswith("sqlite"):
        raise InvalidValue("--workers N needs storage safe for many processes: omit --storage "
                           "(a journal file in --out is used) or pass a postgresql:// URL")
    name = cfg.study_name or f"sweep-{run_dir.path.name}"
    cfg.storage, cfg.study_name = url, name
    prep = Prepared(cfg)  # fails fast on bad data or folds, before a study exists
    if not resume:
        import optuna

        storage = make_storage(url, cfg)
        if name in {s.study_name for s in optuna.get_all_study_summaries(storage)}:
            raise UserError(f"study {name!r} already exists in {redact(url)}; pass --join to add "
                            "workers, --resume to continue it, or a new --study-name")
        run_dir.write_config({**to_jsonable(cfg), "storage": url}, task="sweep")
    study = open_study(cfg, url, name, create=not resume)
    if resume:
        reap_dead_trials(study)
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
                      threads=_threads(cfg))
    study = open_study(cfg, cfg.storage, cfg.study_name, create=False)
    st = study_state(study, cfg)
    return {"task": "sweep", "joined": True, "study_name": cfg.study_name,
            "storage": redact(cfg.storage), "trials_run_here": ran, "study_done": st["done"],
            "time_s": time.perf_counter() - t0}


def _finish(cfg: SweepConfig, run_dir: RunDir, study: Any, prep: Prepared, search_s: float,
            t_start: float) -> dict[str, Any]:
    from optuna.trial import TrialState

    st = study_state(study, cfg)
    rows = settings_table(study, cfg)
    with atomic_open(run_dir.metrics_path, "w") as fh:
        import json

        for rec in _trial_records(study):
            fh.write(json.dumps(to_jsonable(rec), allow_nan=True) + "\n")
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not complete:
        raise UserError("no trial of the sweep completed (all pruned or failed); widen the "
                        "search space or use --pruner none")
    best = study.best_trial
    pick = {"rate": best.params["rate"], "kind": best.params["kind"],
            "where": best.params["where"], "trial": best.number, "cv_score": best.value}
    test = _test_figures(prep, best.params)
    summary: dict[str, Any] = {
        "task": "sweep", "study_name": study.study_name, "storage": redact(cfg.storage or ""),
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
            figs = test if setting_key(s) == setting_key(best.params) else _test_figures(prep, s)
            oracle.append({**s, **figs})
        best_o = max(oracle, key=lambda r: r["test_acc"])
        summary["oracle"] = {"settings": oracle, "best": best_o,
                             "pick_minus_best_test_acc": test["test_acc"] - best_o["test_acc"]}
    summary["plots"] = plot_sweep(rows, cfg, run_dir.path)
    summary["time_s"] = time.perf_counter() - t_start
    summary["run_dir"] = str(run_dir.path)
    run_dir.write_summary(summary)
    return summary
