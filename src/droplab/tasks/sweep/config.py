"""The sweep's configuration, declared once (:mod:`droplab.config`): the search space, the
objective(s) and the pick, the study and its workers, and the ``droplab train`` setup each
setting is trained with — the same data / model / training / run sections the classify
task nests, so ``--epochs`` or ``--classes`` is written in one place.

No Optuna here: the CLI builds its parser from this module without importing the study
machinery.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from droplab.config import Config, option, section
from droplab.engine.config import ClassifyDataConfig, RunConfig, TrainConfig
from droplab.errors import InvalidValue
from droplab.evaluate.robustness import ATTACKS, check_attack
from droplab.layers import KINDS
from droplab.models import ModelConfig
from droplab.models.classifiers import WHERE
from droplab.tasks.sweep.space import SearchSpace

#: objective name → direction
OBJECTIVES: dict[str, str] = {"acc": "maximize", "nll": "minimize", "ece": "minimize",
                              "robust": "maximize"}
#: objective name → key of the per-fold metrics dict
OBJECTIVE_METRIC = {"acc": "acc", "nll": "nll", "ece": "ece", "robust": "robust_acc"}
SAMPLERS = ("grid", "tpe", "random", "nsga2")
PRUNERS = ("none", "median", "hyperband")
#: how the setting refitted and scored on test is chosen (see :mod:`droplab.tasks.sweep.stats`)
PICKS = ("auto", "best", "1se", "knee")
#: every metric a trial records per fold, whatever the objective
METRIC_KEYS = ("acc", "nll", "ece", "robust_acc", "train_acc", "gap")


@dataclass
class SweepDataConfig(ClassifyDataConfig):
    """The classify data section; cross-validation replaces the validation split."""

    val_fraction: float = option(0.0, ge=0, lt=1, cli=False,
                                 help="unused: k-fold CV splits the training part")


@dataclass
class SweepModelConfig(ModelConfig):
    """The classify model section; the dropout rate, kind and placement are the space's."""

    dropout: float = option(0.0, rate=True, cli=False, help="set by each setting (--rates)")
    dropout_kind: str = option("dropout", choices=tuple(KINDS), what="dropout kind", cli=False,
                               help="set by each setting (--kinds)")
    dropout_where: str = option("head", choices=WHERE, what="dropout placement", cli=False,
                                help="set by each setting (--wheres)")


@dataclass
class SweepConfig(Config):
    """A dropout sweep: k-fold CV of every setting of ``space`` on one ``droplab train``
    setup (``data``, ``model``, ``train``, ``run``), on an Optuna study.

    ``objective`` (or several ``objectives``: a multi-objective study and its Pareto front)
    is what the sampler optimises; every trial records all metrics anyway. ``pick`` chooses
    the setting refitted and scored once on test: ``best`` CV score, ``1se`` (the simplest
    setting within one standard error of the best), ``knee`` (of the Pareto front);
    ``auto`` = ``knee`` with several objectives, else ``best``. ``n_trials`` defaults to the
    grid size. ``grace_period`` defaults to twice the heartbeat interval. ``threads`` is
    torch's intra-op threads per worker (default: CPU cores ÷ workers).
    """

    space: SearchSpace = section(SearchSpace, title="search space")
    folds: int = option(5, ge=2, help="stratified cross-validation folds")
    objective: str = option("acc", choices=tuple(OBJECTIVES),
                            help="what the study optimises: acc, nll, ece or robust")
    objectives: list[str] | None = option(None, choices=tuple(OBJECTIVES), metavar="OBJ,…",
                                          help="several objectives at once, e.g. acc,ece: a "
                                          "multi-objective study, its Pareto front and knee")
    pick: str = option("auto", choices=PICKS, what="pick rule",
                       help="setting refitted and tested: best, 1se (simplest within one "
                       "standard error of the best), knee (of the Pareto front) or auto "
                       "(knee with --objectives, else best)")
    attack: str = option("fgsm", choices=tuple(ATTACKS), what="attack",
                         help="attack of the robust metric: fgsm or pgd (L∞)")
    eps: float = option(0.1, ge=0, le=1, help="attack radius in pixel units")
    attack_steps: int = option(10, ge=1, help="PGD steps")
    attack_alpha: float | None = option(None, gt=0, help="PGD step (default 2.5·eps/steps)")
    attack_samples: int = option(500, ge=1, help="validation images attacked per fold")
    train_eval_samples: int = option(2000, ge=1, cli=False,
                                     help="training images scored for the train–val gap")
    sampler: str = option("grid", choices=SAMPLERS,
                          help="grid, tpe (Bergstra et al. 2011), random or nsga2 (Deb et al. "
                          "2002); all seeded")
    n_trials: int | None = option(None, ge=1, flag="--trials", metavar="N",
                                  help="trials (default: the grid size)")
    pruner: str = option("none", choices=PRUNERS,
                         help="none, median or hyperband; every epoch of every fold is a step")
    storage: str | None = option(None, metavar="URL",
                                 help="study URL (default sqlite:///OUT/study.db; a journal "
                                 "file with --workers > 1; postgresql://… for many machines)")
    study_name: str | None = option(None, help="default sweep-<out folder name>")
    workers: int = option(1, ge=1, runtime=True, help="local worker processes")
    threads: int | None = option(None, ge=1, runtime=True,
                                 help="torch threads per worker (default: CPU cores ÷ workers)")
    join: bool = option(False, runtime=True, help="join the study --study-name in --storage "
                        "as a worker (another machine)")
    heartbeat_interval: int = option(10, ge=1, runtime=True,
                                     help="seconds between trial heartbeats")
    grace_period: int | None = option(None, ge=1, runtime=True,
                                      help="seconds without heartbeat before a trial is "
                                      "retried (default 2×interval)")
    max_retry: int = option(3, ge=0, runtime=True, help="retries of a lost trial")
    oracle: bool = option(False, runtime=True,
                          help="also train every setting on the full split and score it on test")
    data: SweepDataConfig = section(SweepDataConfig, title="data (as in droplab train)")
    model: SweepModelConfig = section(lambda: SweepModelConfig(name="mlp"),
                                      title="model (as in droplab train)")
    train: TrainConfig = section(lambda: TrainConfig(batch_size=32),
                                 title="training (as in droplab train)")
    run: RunConfig = section(RunConfig, title="run")

    def validate(self) -> None:
        space = self.space
        space.check_model(self.model.name)
        check_attack(self.attack, self.eps, self.attack_steps, self.attack_alpha)
        if self.objectives is not None:
            if not self.objectives:
                raise InvalidValue("--objectives is empty; give e.g. acc,ece")
            if len(set(self.objectives)) != len(self.objectives):
                raise InvalidValue(f"--objectives lists one twice ({self.objectives})")
        if self.multi and self.pruner != "none":
            raise InvalidValue("pruning needs a single objective (Optuna cannot prune a "
                               "multi-objective study); use --pruner none or one --objective")
        if self.pick == "knee" and not self.multi:
            raise InvalidValue("--pick knee needs several --objectives (a Pareto front)")
        if self.sampler == "grid" and not space.discrete:
            raise InvalidValue("a continuous range in the search space needs a sampler that "
                               "draws from it: --sampler tpe, random or nsga2")
        if self.sampler == "grid" and self.n_trials is not None and self.n_trials != space.size():
            raise InvalidValue(f"--trials {self.n_trials} with --sampler grid: the grid has "
                               f"{space.size()} settings; omit --trials")
        if self.sampler != "grid" and self.n_trials is None and not space.discrete:
            raise InvalidValue("a continuous search space has no natural size: give --trials N")
        if (self.grace_period is not None and self.grace_period <= self.heartbeat_interval):
            raise InvalidValue("--grace-period must exceed --heartbeat-interval "
                               f"({self.grace_period} <= {self.heartbeat_interval})")
        if self.join and not (self.storage and self.study_name):
            raise InvalidValue("--join needs the shared --storage URL and the --study-name to join")

    # -- derived ----------------------------------------------------------------------------
    @property
    def objective_list(self) -> list[str]:
        """The objectives in order (the first one decides ``best`` and ``1se``)."""
        return list(self.objectives) if self.objectives else [self.objective]

    @property
    def multi(self) -> bool:
        return len(self.objective_list) > 1

    @property
    def directions(self) -> list[str]:
        return [OBJECTIVES[o] for o in self.objective_list]

    @property
    def direction(self) -> str:
        return self.directions[0]

    @property
    def pick_rule(self) -> str:
        if self.pick != "auto":
            return self.pick
        return "knee" if self.multi else "best"

    @property
    def target_trials(self) -> int:
        return self.n_trials if self.n_trials is not None else self.space.size()

    @property
    def seed(self) -> int:
        return int(self.run.seed)

    def space_record(self) -> dict[str, Any]:
        """What must agree between the study and every worker joining it."""
        base = {name: getattr(self, name).to_dict() for name in ("data", "model", "train")}
        for k in ("dropout", "dropout_kind", "dropout_where"):
            base["model"].pop(k, None)
        base["train"].pop("tensorboard", None)
        base["seed"] = self.seed
        return {"space": self.space.record(), "folds": int(self.folds),
                "objectives": self.objective_list, "sampler": self.sampler,
                "n_trials": self.target_trials,
                "attack": [self.attack, float(self.eps), int(self.attack_steps),
                           self.attack_alpha, int(self.attack_samples)], "base": base}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: Any = None) -> SweepConfig:
        """Also reads the ``config.json`` of release 0.1 (the train options under ``base``)."""
        data = dict(data)
        legacy = data.pop("base", None)
        if isinstance(legacy, Mapping):
            data = {**legacy, **data}
        return super().from_dict(data, base)
