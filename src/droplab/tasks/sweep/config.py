"""The sweep's configuration: one ``droplab train`` setup (``base``) plus the study options.

No Optuna here (see :mod:`droplab.tasks.sweep.space`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# TEMPORARY (issue 15): the classify config is the base of a sweep; it moves below tasks/
# with `spine`'s nested `droplab.config` dataclasses, and this import goes with it.
from droplab.engine.classifier import ClassifyConfig
from droplab.errors import InvalidValue, unknown_name
from droplab.evaluate.robustness import check_attack
from droplab.runs import to_jsonable
from droplab.tasks.sweep.space import SearchSpace

OBJECTIVES: dict[str, str] = {"acc": "maximize", "nll": "minimize", "ece": "minimize",
                              "robust": "maximize"}
#: objective name → key of the per-fold metrics dict
OBJECTIVE_METRIC = {"acc": "acc", "nll": "nll", "ece": "ece", "robust": "robust_acc"}
SAMPLERS = ("grid", "tpe")
PRUNERS = ("none", "median", "hyperband")
#: every metric a trial records per fold, whatever the objective
METRIC_KEYS = ("acc", "nll", "ece", "robust_acc", "train_acc", "gap")
#: base-config fields a setting overrides (not part of what a joining worker must match)
SETTING_FIELDS = ("dropout", "dropout_kind", "dropout_where")


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
        self.space.validate(self.base.model.name)
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
        for k in ("out", "device"):
            base["run"].pop(k, None)
        for k in SETTING_FIELDS:
            base["model"].pop(k, None)
        return {"space": self.space.grid(), "folds": int(self.folds), "objective": self.objective,
                "sampler": self.sampler, "n_trials": self.target_trials,
                "attack": [self.attack, float(self.eps), int(self.attack_steps),
                           self.attack_alpha], "base": base}


def config_from_dict(d: dict[str, Any]) -> SweepConfig:
    """Rebuild a :class:`SweepConfig` from its ``config.json`` (for ``--resume``)."""
    d = dict(d)
    d.pop("task", None)
    base = ClassifyConfig.from_dict(d.pop("base"))
    space = SearchSpace(**d.pop("space"))
    names = {f.name for f in dataclasses.fields(SweepConfig)}
    return SweepConfig(base=base, space=space, **{k: v for k, v in d.items() if k in names})
