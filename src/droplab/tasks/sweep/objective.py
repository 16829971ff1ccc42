"""The objective of a sweep: stratified k-fold cross-validation of one dropout setting.

Each trial trains one setting on the training split only (:func:`droplab.data.kfold_splits`);
fold ``i``'s score is reported as step ``i`` so a median or Hyperband pruner can stop a
poor setting after its first folds. Every trial records all metrics (accuracy, NLL, ECE,
robust accuracy under FGSM/PGD, the train–validation gap) whatever the objective.

Trials are seeded by ``(seed, fold)`` only, never by trial number: all settings share the
same folds, initial weights and batch order (common random numbers, which makes the
comparison between rates less noisy) and a retried trial reproduces the lost one.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from droplab import data as D
from droplab.engine import evaluate, fit, predict_proba
from droplab.evaluate.robustness import robust_accuracy
from droplab.models import build_model
from droplab.runtime import resolve_device, seed_everything
from droplab.tasks.sweep.config import OBJECTIVE_METRIC, SweepConfig
from droplab.tasks.sweep.progress import SURPLUS, counted, worker_tag
from droplab.tasks.sweep.space import setting_key
from droplab.uncertainty import expected_calibration_error, negative_log_likelihood


class Surplus(Exception):
    """A trial that would repeat a grid point another worker already took."""


def setting_config(base: Any, params: dict[str, Any]) -> Any:
    """The base classify config with one setting applied."""
    return base.updated({"model.dropout": float(params["rate"]), "model.dropout_kind": params["kind"],
                         "model.dropout_where": params["where"]})


def load_bundle(base: Any) -> D.DatasetBundle:
    d = base.data
    return D.load_dataset(d.dataset, d.data_root, d.classes, image_size=d.image_size,
                          seed=int(base.run.seed), download=d.download, limit=d.limit)


class Prepared:
    """The dataset, folds and device one worker needs, loaded once."""

    def __init__(self, cfg: SweepConfig) -> None:
        b = cfg.base
        self.cfg = cfg
        self.device = resolve_device(b.run.device)
        self.bundle = load_bundle(b)
        self.folds = D.kfold_splits(self.bundle.train.labels, int(cfg.folds), seed=int(b.run.seed))


def fold_seed(seed: int, fold: int) -> int:
    """The seed of fold ``fold`` (``-1``: the refit on the whole training split)."""
    return int(seed) * 1009 + 7919 * (fold + 1)


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
    cfg, b, bundle, device = prep.cfg, prep.cfg.base, prep.bundle, prep.device
    t0 = time.perf_counter()
    seed_everything(seed)
    scfg = setting_config(b, params)
    model = build_model(scfg.model_config(), bundle.in_shape, len(bundle.classes))
    tcfg = scfg.train_config()
    common = {"mean": bundle.mean, "std": bundle.std, "device": device}
    n_fit = len(train_idx) if train_idx is not None else len(bundle.train.labels)
    train_loader = D.Loader(bundle.train, train_idx, batch_size=tcfg.batch_size, shuffle=True,
                            augment=scfg.data.resolved_augment(bundle.in_shape[0]),
                            seed=seed, drop_last=n_fit % tcfg.batch_size == 1,  # BatchNorm
                            **common)
    fit(model, train_loader, None, tcfg, device=device)
    eval_bs = max(256, tcfg.batch_size)
    eval_loader = D.Loader(eval_data, eval_idx, batch_size=eval_bs, shuffle=False, **common)
    probs, labels = predict_proba(model, eval_loader, device)
    acc = float((probs.argmax(1) == labels).double().mean())
    sub = torch.arange(n_fit) if train_idx is None else train_idx
    gen = torch.Generator().manual_seed(seed)
    sub = sub[torch.randperm(len(sub), generator=gen)[: cfg.train_eval_samples]].sort().values
    train_acc = evaluate(model, D.Loader(bundle.train, sub, batch_size=eval_bs, shuffle=False,
                                         **common), device)["acc"]
    robust = robust_accuracy(model, eval_loader, attack=cfg.attack, eps=cfg.eps,
                             steps=cfg.attack_steps, alpha=cfg.attack_alpha,
                             max_samples=cfg.attack_samples, seed=seed, **common)
    return {"acc": acc, "nll": negative_log_likelihood(probs, labels),
            "ece": expected_calibration_error(probs, labels), "robust_acc": float(robust),
            "train_acc": float(train_acc), "gap": float(train_acc) - acc,
            "time_s": time.perf_counter() - t0}


def refit_and_test(prep: Prepared, params: dict[str, Any]) -> dict[str, float]:
    """Refit one setting on the whole training split and score it once on the test split."""
    m = train_and_score(prep, params, None, prep.bundle.test, None, fold_seed(prep.cfg.base.run.seed, -1))
    return {"test_acc": m["acc"], "test_nll": m["nll"], "test_ece": m["ece"],
            "test_robust_acc": m["robust_acc"], "train_acc": m["train_acc"], "time_s": m["time_s"]}


class Objective:
    """The Optuna objective: k-fold CV of one setting, fold ``i`` reported as step ``i``."""

    def __init__(self, prep: Prepared) -> None:
        self.prep = prep

    def __call__(self, trial: optuna.Trial) -> float:
        cfg = self.prep.cfg
        space = cfg.space
        trial.set_user_attr("worker", worker_tag())
        params = {"rate": trial.suggest_categorical("rate", space.rates),
                  "kind": trial.suggest_categorical("kind", space.kinds),
                  "where": trial.suggest_categorical("where", space.wheres)}
        key = setting_key(params)
        others = [t for t in trial.study.get_trials(deepcopy=False)
                  if t.number != trial.number and t.params and setting_key(t.params) == key]
        if cfg.sampler == "grid":
            # another worker already holds or finished this grid point: do not repeat it
            if any(counted(t) or (t.state == TrialState.RUNNING and t.number < trial.number)
                   for t in others):
                trial.set_user_attr(SURPLUS, True)
                raise Surplus(f"grid point {params} is already taken")
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
                                fold_seed(cfg.base.run.seed, i))
            folds.append(m)
            trial.set_user_attr("folds", folds)
            trial.report(m[metric], i)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after fold {i}")
        return statistics.fmean(f[metric] for f in folds)
