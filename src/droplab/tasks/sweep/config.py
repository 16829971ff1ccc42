"""The sweep's configuration, declared once (:mod:`droplab.config`): the search space, the
objective(s) and the pick, the study and its workers, and the setup each setting is trained
with — ``--task classify`` (default): the same data / model / training / run sections the
classify task nests, so ``--epochs`` or ``--classes`` is written in one place; ``--task
gan``: the discriminator's dropout of a ``droplab gan`` setup (:mod:`.gan_config`), each
fold a seed, scored on held-out real images.

No Optuna here: the CLI builds its parser from this module without importing the study
machinery.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from droplab.config import Config, option, section
from droplab.data.toy2d import TOY_DATASETS
from droplab.engine.config import ClassifyDataConfig, RunConfig, TrainConfig
from droplab.engine.gan_config import GanConfig
from droplab.errors import InvalidValue
from droplab.evaluate.robustness import ATTACKS, check_attack
from droplab.layers import KINDS
from droplab.models import ModelConfig
from droplab.models.classifiers import WHERE
from droplab.tasks.sweep.gan_config import SweepGanConfig, fold_gan_config
from droplab.tasks.sweep.space import WHERES, SearchSpace

#: objective name → direction
OBJECTIVES: dict[str, str] = {"acc": "maximize", "nll": "minimize", "ece": "minimize",
                              "robust": "maximize", "fid": "minimize", "kid": "minimize",
                              "modes": "maximize", "kl": "minimize"}
#: objective name → key of the per-fold metrics dict
OBJECTIVE_METRIC = {"acc": "acc", "nll": "nll", "ece": "ece", "robust": "robust_acc",
                    "fid": "fid", "kid": "kid", "modes": "modes", "kl": "kl"}
#: what a sweep trains (``--task``) → the objectives that apply to it
TASK_OBJECTIVES: dict[str, tuple[str, ...]] = {"classify": ("acc", "nll", "ece", "robust"),
                                               "gan": ("fid", "kid", "modes", "kl")}
#: the placements of the searched rate, per task (the first is the default)
TASK_WHERES: dict[str, tuple[str, ...]] = {"classify": WHERES, "gan": ("hidden", "input", "all")}
SAMPLERS = ("grid", "tpe", "random", "nsga2")
PRUNERS = ("none", "median", "hyperband")
#: how the setting refitted and scored on test is chosen (see :mod:`droplab.tasks.sweep.stats`)
PICKS = ("auto", "best", "1se", "knee")
#: every metric a trial records per fold, whatever the objective
METRIC_KEYS = ("acc", "nll", "ece", "robust_acc", "train_acc", "gap")
#: the same for a GAN sweep (2-D points: no KID, but the share of high-quality samples)
GAN_METRIC_KEYS = ("fid", "kid", "modes", "kl", "density", "coverage", "precision", "recall",
                   "high_quality")
TASK_METRIC_KEYS = {"classify": METRIC_KEYS, "gan": GAN_METRIC_KEYS}


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

    sweep_task: str = option("classify", choices=tuple(TASK_OBJECTIVES), flag="--task",
                             what="sweep task",
                             help="what each setting trains: classify (a `droplab train` "
                             "classifier) or gan (a `droplab gan` GAN; the rates are its "
                             "discriminator's dropout)")
    space: SearchSpace = section(SearchSpace, title="search space")
    folds: int = option(5, ge=2, help="stratified cross-validation folds (--task gan: seeds, "
                        "each training on the whole training split)")
    objective: str | None = option(None, choices=tuple(OBJECTIVES),
                                   help="what the study optimises: acc, nll, ece or robust "
                                   "(default acc); --task gan: fid, kid, modes or kl on "
                                   "held-out real images (default fid)")
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
    data: SweepDataConfig = section(
        SweepDataConfig, title="data (as in droplab train)",
        help={"dataset": "digits, mnist, fashion-mnist, cifar10 or imagefolder:PATH; --task "
                         "gan also stacked-mnist and the 2-D mixtures ring and grid",
              "limit": "at most N images per class (--task gan: ring/grid points per mode, "
                       "default 2000)"})
    model: SweepModelConfig = section(lambda: SweepModelConfig(name="mlp"),
                                      title="model (as in droplab train)")
    train: TrainConfig = section(lambda: TrainConfig(batch_size=32),
                                 title="training (as in droplab train)")
    run: RunConfig = section(RunConfig, title="run")
    gan: SweepGanConfig = section(SweepGanConfig, title="GAN setup (--task gan)")

    def validate(self) -> None:
        if self.objective is None:
            self.objective = TASK_OBJECTIVES[self.sweep_task][0]
        if self.space.wheres is None:  # the task's own default placement
            self.space = self.space.updated({"wheres": [TASK_WHERES[self.sweep_task][0]]})
        self._check_task()
        space = self.space
        if self.sweep_task == "classify":
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
        if self.sweep_task == "gan":  # droplab gan's own checks, on the first setting
            self.probe_gan_config()

    def _check_task(self) -> None:
        """Objectives and placements that belong to the other task: one line each."""
        task, fits = self.sweep_task, TASK_OBJECTIVES[self.sweep_task]
        for name, flag in ((self.objective, "--objective"), *((o, "--objectives")
                                                              for o in self.objectives or ())):
            if name not in fits:
                other = next(t for t, objs in TASK_OBJECTIVES.items() if name in objs)
                raise InvalidValue(f"{flag} {name} is a {other} objective and does not apply "
                                   f"to --task {task}; use one of {', '.join(fits)}")
        wheres = TASK_WHERES[task]
        bad = [w for w in self.space.wheres or () if w not in wheres]
        if bad:
            raise InvalidValue(f"--wheres {bad[0]} is not a placement of --task {task}; use "
                               f"{', '.join(wheres)}"
                               + (" (the discriminator's)" if task == "gan" else ""))
        if task != "gan":
            return
        for flag, value in (("--input-rates", self.space.input_rates),
                            ("--conv-rates", self.space.conv_rates),
                            ("--schedules", self.space.schedules)):
            if value is not None:
                raise InvalidValue(f"{flag} searches a classifier's dropout and does not apply "
                                   "to --task gan; search the discriminator's with --rates, "
                                   "--kinds and --wheres")
        toy = self.data.dataset in TOY_DATASETS
        if toy and "kid" in self.objective_list:
            raise InvalidValue(f"--objective kid compares image features; {self.data.dataset} "
                               "is a 2-D dataset: use fid, modes or kl")

    def fold_gan_config(self, params: dict[str, Any], seed: int) -> GanConfig:
        """The ``droplab gan`` config of one fold of a GAN sweep (``--task gan``)."""
        return fold_gan_config(self.gan, self.data, self.train, self.run, params, seed)

    def probe_gan_config(self) -> GanConfig:
        """The ``droplab gan`` config of the space's first kind and placement at rate 0 with
        the study seed: what a GAN sweep is checked with up front, and loads its data and
        feature classifier by."""
        assert self.space.wheres is not None  # set by validate()
        return self.fold_gan_config({"rate": 0.0, "kind": self.space.kinds[0],
                                     "where": self.space.wheres[0]}, self.seed)

    # -- derived ----------------------------------------------------------------------------
    @property
    def objective_list(self) -> list[str]:
        """The objectives in order (the first one decides ``best`` and ``1se``)."""
        assert self.objective is not None  # set by validate()
        return list(self.objectives) if self.objectives else [self.objective]

    @property
    def metric_keys(self) -> tuple[str, ...]:
        """Every metric a trial of this task records per fold."""
        return TASK_METRIC_KEYS[self.sweep_task]

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
        if self.sweep_task != "classify":  # (a classify study's record is that of release 0.2)
            base["task"] = self.sweep_task
            base["gan"] = self.gan.to_dict()
        return {"space": self.space.record(), "folds": int(self.folds),
                "objectives": self.objective_list, "sampler": self.sampler,
                "n_trials": self.target_trials,
                "attack": [self.attack, float(self.eps), int(self.attack_steps),
                           self.attack_alpha, int(self.attack_samples)], "base": base}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: Any = None) -> SweepConfig:
        """Also reads the ``config.json`` of release 0.1 (the train options under ``base``)."""
        data = dict(data)
        if data.get("task") not in TASK_OBJECTIVES:  # config.json's run kind ("sweep")
            data.pop("task", None)
        legacy = data.pop("base", None)
        if isinstance(legacy, Mapping):
            data = {**legacy, **data}
        if "gan" not in data:  # flat names (build(), release 0.1): "model" is the classifier
            data["gan"] = {k: v for k, v in data.items() if k != "model"}
        return super().from_dict(data, base)
