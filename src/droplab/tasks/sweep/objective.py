"""The objective of a sweep: stratified k-fold cross-validation of one dropout setting
(a GAN sweep's folds are seeds instead: :mod:`droplab.tasks.sweep.gan_objective`, the same
:class:`Objective` driving them through :class:`FoldScorer`).

Each trial trains one setting on the training split only (:func:`droplab.data.kfold_splits`)
and records every metric per fold (accuracy, NLL, ECE, robust accuracy under FGSM/PGD, the
train–validation gap) whatever the objective. With a pruner, every epoch of every fold is
a step: after epoch ``e`` of fold ``i`` the objective's metric on that fold's validation
part is reported as step ``i·E + e`` (``E`` epochs per fit), so a median or Hyperband
pruner can stop a weak setting after its first epochs instead of its first folds. Without
a pruner only the last epoch of each fold is reported (no extra scoring); the robust
metric is only computed at the end of a fold, so it always reports at ``i·E + E − 1``;
multi-objective studies report nothing (Optuna cannot prune them).

Trials are seeded by ``(seed, fold)`` only, never by trial number: all settings share the
same folds, initial weights and batch order (common random numbers, which makes the
comparison between rates less noisy and makes fold-wise differences paired) and a retried
trial reproduces the lost one. Scoring between epochs runs in eval mode and draws no random
numbers, so it changes no result.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any, Protocol

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from droplab import data as D
from droplab.engine import evaluate, fit, predict_proba
from droplab.engine.callbacks import OnEpochEnd
from droplab.engine.config import TrainConfig
from droplab.errors import InvalidValue
from droplab.evaluate.robustness import robust_accuracy
from droplab.models import ModelConfig, build_model
from droplab.runtime import resolve_device, seed_everything
from droplab.surgery import find_dropout
from droplab.tasks.sweep.config import OBJECTIVE_METRIC, SweepConfig
from droplab.tasks.sweep.progress import SURPLUS, counted, worker_tag
from droplab.tasks.sweep.space import CONSTANT, simplicity
from droplab.uncertainty import expected_calibration_error, negative_log_likelihood

#: a rate no user gives, to tell which dropout modules a build put where
_TAG = 0.4142135
#: called after each epoch but the last with (epoch index from 0, metrics of the model then)
EpochHook = Callable[[int, dict[str, float]], None]


class Surplus(Exception):
    """A trial that would repeat a grid point another worker already took."""


# ------------------------------------------------------------------------------------------
# a setting → the model and the training loop's options
# ------------------------------------------------------------------------------------------
def setting_configs(cfg: SweepConfig, params: dict[str, Any]) -> tuple[ModelConfig, TrainConfig]:
    """The model and loop options of one setting (the base sections with it applied)."""
    rate = float(params["rate"])
    model = cfg.model.updated({"dropout": rate, "dropout_kind": params["kind"],
                               "dropout_where": params["where"],
                               "input_dropout": float(params.get("input_rate",
                                                                 cfg.model.input_dropout))})
    model = dataclasses.replace(model, max_norm=cfg.train.max_norm)
    schedule = params.get("schedule", cfg.train.dropout_schedule)
    if schedule == CONSTANT or simplicity({**params, "input_rate": model.input_dropout}) == 0:
        schedule = None  # nothing to schedule
    train = dataclasses.replace(cfg.train, dropout_schedule=schedule,
                                dropout_p=rate if schedule and rate > 0 else None)
    return model, train


def _tagged(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(d.name, d.module) for d in find_dropout(model)
            if abs(float(getattr(d.module, "p", -1.0)) - _TAG) < 1e-9]


def build_setting_model(mcfg: ModelConfig, params: dict[str, Any], in_shape: tuple[int, int, int],
                        num_classes: int) -> nn.Module:
    """Build the classifier of a setting; with ``conv_rate`` the conv blocks get their own rate.

    The zoo has one main rate per model, so a separate conv rate is placed by building with
    a tag rate everywhere (``where=all``) and telling the head's modules from the conv
    blocks' by a head-only build (made under a forked RNG: the weights are those of one
    ordinary build). A model whose modules do not split that way is a one-line error.
    """
    if "conv_rate" not in params:
        return build_model(mcfg, in_shape, num_classes)
    if abs(mcfg.input_dropout - _TAG) < 1e-9:
        raise InvalidValue(f"input dropout {_TAG} collides with droplab's placement tag; "
                           "use another rate")
    with torch.random.fork_rng(devices=[]):
        head = {name for name, _ in _tagged(build_model(
            dataclasses.replace(mcfg, dropout=_TAG, dropout_where="head"), in_shape, num_classes))}
        n_conv = len(_tagged(build_model(
            dataclasses.replace(mcfg, dropout=_TAG, dropout_where="conv"), in_shape, num_classes)))
    model = build_model(dataclasses.replace(mcfg, dropout=_TAG, dropout_where="all"),
                        in_shape, num_classes)
    tagged = _tagged(model)
    if not head <= {n for n, _ in tagged} or len(tagged) != len(head) + n_conv or n_conv == 0:
        raise InvalidValue(f"model {mcfg.name!r} does not separate head and conv dropout; "
                           "drop --conv-rates and search --wheres instead")
    for name, module in tagged:
        module.p = float(params["rate"]) if name in head else float(params["conv_rate"])
    return model


# ------------------------------------------------------------------------------------------
# data and one fit
# ------------------------------------------------------------------------------------------
def load_bundle(cfg: SweepConfig) -> D.DatasetBundle:
    d = cfg.data
    return D.load_dataset(d.dataset, d.data_root, d.classes, image_size=d.image_size,
                          seed=cfg.seed, download=d.download, limit=d.limit)


class FoldScorer(Protocol):
    """What the Optuna objective needs from a worker's setup: a classify sweep's
    :class:`Prepared` or a GAN sweep's :class:`~droplab.tasks.sweep.gan_objective.GanPrepared`."""

    cfg: SweepConfig

    @property
    def n_folds(self) -> int: ...

    def score_fold(self, params: dict[str, Any], fold: int,
                   on_epoch: EpochHook | None = None) -> dict[str, float]: ...

    def refit_and_test(self, params: dict[str, Any]) -> dict[str, float]: ...

    def ready(self) -> None:
        """Work that needs the run folder, done once before the search."""


class Prepared:
    """The dataset, folds and device one worker needs, loaded once (``bundle``: data already
    in memory, e.g. a benchmark's training subsets of one decoded dataset)."""

    def __init__(self, cfg: SweepConfig, bundle: D.DatasetBundle | None = None) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.run.device)
        self.bundle = bundle if bundle is not None else load_bundle(cfg)
        self.folds = D.kfold_splits(self.bundle.train.labels, int(cfg.folds), seed=cfg.seed)

    @property
    def n_folds(self) -> int:
        return len(self.folds)

    def score_fold(self, params: dict[str, Any], fold: int,
                   on_epoch: EpochHook | None = None) -> dict[str, float]:
        """Train on fold ``fold``'s training part, score on its validation part."""
        tr, va = self.folds[fold]
        return train_and_score(self, params, tr, self.bundle.train, va,
                               fold_seed(self.cfg.seed, fold), on_epoch=on_epoch)

    def refit_and_test(self, params: dict[str, Any]) -> dict[str, float]:
        return refit_and_test(self, params)

    def ready(self) -> None:
        """Nothing: a classify sweep needs nothing but its folds."""


def fold_seed(seed: int, fold: int) -> int:
    """The seed of fold ``fold`` (``-1``: the refit on the whole training split)."""
    return int(seed) * 1009 + 7919 * (fold + 1)


def prob_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Accuracy, NLL and ECE (15 equal-width bins) of predicted probabilities."""
    return {"acc": float((probs.argmax(1) == labels).double().mean()),
            "nll": float(negative_log_likelihood(probs, labels)),
            "ece": float(expected_calibration_error(probs, labels))}


def train_and_score(
    prep: Prepared,
    params: dict[str, Any],
    train_idx: torch.Tensor | None,
    eval_data: Any,
    eval_idx: torch.Tensor | None,
    seed: int,
    on_epoch: EpochHook | None = None,
) -> dict[str, float]:
    """Train one setting on ``train_idx`` of the training split, score it on ``eval_data``.

    Returns acc, nll, ece, robust_acc, train_acc (eval mode, on up to
    ``train_eval_samples`` training images), gap = train_acc − acc, time_s. ``on_epoch``
    gets acc/nll/ece on ``eval_data`` after every epoch but the last (it may raise, e.g.
    :class:`optuna.TrialPruned`, to stop early).
    """
    cfg, bundle, device = prep.cfg, prep.bundle, prep.device
    t0 = time.perf_counter()
    seed_everything(seed)
    mcfg, tcfg = setting_configs(cfg, params)
    model = build_setting_model(mcfg, params, bundle.in_shape, len(bundle.classes))
    common = {"mean": bundle.mean, "std": bundle.std, "device": device}
    n_fit = len(train_idx) if train_idx is not None else len(bundle.train.labels)
    train_loader = D.Loader(bundle.train, train_idx, batch_size=tcfg.batch_size, shuffle=True,
                            augment=cfg.data.resolved_augment(bundle.in_shape[0]),
                            seed=seed, drop_last=n_fit % tcfg.batch_size == 1,  # BatchNorm
                            **common)
    eval_bs = max(256, tcfg.batch_size)
    eval_loader = D.Loader(eval_data, eval_idx, batch_size=eval_bs, shuffle=False, **common)
    hook = None
    if on_epoch is not None:
        def hook(record: dict[str, Any]) -> None:
            epoch = int(record["epoch"]) - 1
            if epoch < tcfg.epochs - 1:  # the last epoch is scored below, once
                on_epoch(epoch, prob_metrics(*predict_proba(model, eval_loader, device)))
    fit(model, train_loader, None, tcfg, device=device,
        callbacks=[OnEpochEnd(hook)] if hook is not None else ())
    probs, labels = predict_proba(model, eval_loader, device)
    scores = prob_metrics(probs, labels)
    sub = torch.arange(n_fit) if train_idx is None else train_idx
    gen = torch.Generator().manual_seed(seed)
    sub = sub[torch.randperm(len(sub), generator=gen)[: cfg.train_eval_samples]].sort().values
    train_acc = evaluate(model, D.Loader(bundle.train, sub, batch_size=eval_bs, shuffle=False,
                                         **common), device)["acc"]
    robust = robust_accuracy(model, eval_loader, attack=cfg.attack, eps=cfg.eps,
                             steps=cfg.attack_steps, alpha=cfg.attack_alpha,
                             max_samples=cfg.attack_samples, seed=seed, **common)
    return {**scores, "robust_acc": float(robust), "train_acc": float(train_acc),
            "gap": float(train_acc) - scores["acc"], "time_s": time.perf_counter() - t0}


def refit_and_test(prep: Prepared, params: dict[str, Any]) -> dict[str, float]:
    """Refit one setting on the whole training split and score it once on the test split."""
    m = train_and_score(prep, params, None, prep.bundle.test, None, fold_seed(prep.cfg.seed, -1))
    return {"test_acc": m["acc"], "test_nll": m["nll"], "test_ece": m["ece"],
            "test_robust_acc": m["robust_acc"], "train_acc": m["train_acc"], "time_s": m["time_s"]}


# ------------------------------------------------------------------------------------------
# the Optuna objective
# ------------------------------------------------------------------------------------------
def step_of(fold: int, epoch: int, epochs: int) -> int:
    """The pruning step of epoch ``epoch`` (from 0) of fold ``fold``."""
    return fold * epochs + epoch


class Objective:
    """The Optuna objective: k-fold CV of one setting; its value is the CV mean of each
    objective's metric (a tuple for a multi-objective study)."""

    def __init__(self, prep: FoldScorer) -> None:
        self.prep = prep

    def _repeat(self, trial: optuna.Trial, params: dict[str, Any]) -> Any:
        """Handle a setting already taken: ``Surplus`` on the grid, the earlier result for
        samplers that may propose a setting again (its CV result is deterministic)."""
        cfg = self.prep.cfg
        if cfg.sampler == "grid":
            self._claim_grid_point(trial, params)
            return None
        for t in self._same_setting(trial, params):
            if t.state == TrialState.COMPLETE and "folds" in t.user_attrs:
                trial.set_user_attr("folds", t.user_attrs["folds"])
                trial.set_user_attr("reused_from", t.number)
                return t.values if cfg.multi else t.value
        return None

    def _claim_grid_point(self, trial: optuna.Trial, params: dict[str, Any]) -> None:
        """Raise ``Surplus`` if another worker holds or finished this grid point: a counted
        trial, or a running one with a lower number (the tie-break every worker applies)."""
        if any(counted(t) or (t.state == TrialState.RUNNING and t.number < trial.number
                              and not t.user_attrs.get(SURPLUS))
               for t in self._same_setting(trial, params)):
            trial.set_user_attr(SURPLUS, True)
            raise Surplus(f"grid point {params} is already taken")

    def _same_setting(self, trial: optuna.Trial, params: dict[str, Any]) -> list[FrozenTrial]:
        key = self.prep.cfg.space.key(params)
        return [t for t in trial.study.get_trials(deepcopy=False)
                if t.number != trial.number and self.prep.cfg.space.key(t.params) == key]

    def __call__(self, trial: optuna.Trial) -> Any:
        cfg = self.prep.cfg
        trial.set_user_attr("worker", worker_tag())
        params = cfg.space.suggest(trial)
        earlier = self._repeat(trial, params)
        if earlier is not None:
            return earlier
        metrics = [OBJECTIVE_METRIC[o] for o in cfg.objective_list]
        prune = cfg.pruner != "none"
        epochs = cfg.train.epochs
        folds: list[dict[str, float]] = []
        trial.set_user_attr("folds", folds)  # the folds finished so far (none if pruned early)
        for i in range(self.prep.n_folds):
            hook = None
            if prune and metrics[0] != "robust_acc":
                def hook(epoch: int, m: dict[str, float], fold: int = i) -> None:
                    trial.report(m[metrics[0]], step_of(fold, epoch, epochs))
                    if trial.should_prune():
                        raise optuna.TrialPruned(f"pruned at fold {fold}, epoch {epoch + 1}")
            m = self.prep.score_fold(params, i, on_epoch=hook)
            folds.append(m)
            trial.set_user_attr("folds", folds)
            if not cfg.multi:  # progress for the dashboard and pruners (not multi-objective)
                trial.report(m[metrics[0]], step_of(i, epochs - 1, epochs))
                if prune and trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after fold {i}")
        if cfg.sampler == "grid":
            # two workers can start the same grid point when one reads the study before the
            # other's parameters are stored; checked again at the end, exactly one counts
            self._claim_grid_point(trial, params)
        means = [statistics.fmean(f[k] for f in folds) for k in metrics]
        return means if cfg.multi else means[0]
