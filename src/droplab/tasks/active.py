"""Pool-based active learning with MC dropout: ``droplab active``.

The loop of Gal, Islam & Ghahramani (ICML 2017, "Deep Bayesian Active Learning with Image
Data") on any droplab dataset and classifier:

1. label ``initial`` training images, balanced over the classes; hold out ``val_size``
   images for validation; everything else is the unlabelled *pool*;
2. each round: train the classifier on the labelled images (from scratch, or warm-started
   from the previous round), evaluate it on the test split (accuracy, NLL, ECE), then score
   the pool (or a random ``pool_subset`` of it, as the paper's code did) with ``mc`` MC
   dropout passes through the prefix cache — the same masks for every pool image
   (:func:`droplab.uncertainty.pool_mc_probs`) — and move the ``step`` best images to the
   labelled set (:func:`droplab.uncertainty.acquire`);
3. ``rounds`` acquisitions give ``rounds + 1`` evaluated models.

Training length is given in optimiser *steps* per round (``train_steps``): with 20 labels
an epoch is one batch, so epochs would mean nothing; each round trains one pass over the
labelled images repeated (and shuffled) to fill ``train_steps`` batches. The run folder holds ``config.json``,
``metrics.jsonl`` (one line per round: ``round, labels, test_acc, test_nll, test_ece,
val_acc, acquired, train_s, score_s, time_s``), ``checkpoint.pt`` after every round
(labelled set, acquisition order, warm-start weights) and ``summary.json``; ``--resume``
after a kill redoes only the unfinished round, with the same result (every round reseeds
from ``(seed, round)``). ``droplab report`` plots accuracy against labels per acquisition
function, mean ± std over seeds.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from droplab import data as D
from droplab.config import Config, option, section
from droplab.engine import fit, predict_proba
from droplab.engine.config import DataConfig, RunConfig, TrainConfig
from droplab.engine.resume import open_run
from droplab.errors import InvalidValue
from droplab.models import ModelConfig, build_model
from droplab.runs import RunDir
from droplab.runtime import progress, resolve_device, seed_everything
from droplab.uncertainty import (
    ACQUISITIONS,
    acquire,
    expected_calibration_error,
    negative_log_likelihood,
    pool_mc_probs,
)
from droplab.uncertainty.acquisition import needs_mc

TASK = "active"
#: the acquisition functions that need the same masks for every pool image
CONSISTENT = ("batch-bald",)


@dataclass
class ActiveOptions(Config):
    """The acquisition loop itself."""

    acquisition: str = option("bald", choices=ACQUISITIONS, what="acquisition function",
                              help=", ".join(ACQUISITIONS))
    initial: int = option(20, ge=1, metavar="N",
                          help="labelled images to start from, balanced over the classes")
    step: int = option(10, ge=1, metavar="K", help="images acquired per round")
    rounds: int = option(5, ge=0, metavar="R", help="acquisition rounds")
    mc: int = option(20, ge=1, metavar="T", help="MC-dropout passes scoring the pool")
    pool_subset: int | None = option(None, ge=1, metavar="N",
                                     help="score a random N-image subset of the pool each "
                                     "round (Gal et al.'s code: 2000); default the whole pool")
    val_size: int = option(100, ge=0, metavar="N",
                           help="validation images held out of the pool (Gal et al.: 100)")
    train_steps: int = option(300, ge=1, metavar="S", help="optimiser steps per round")
    warm_start: bool = option(False, help="continue from the previous round's weights "
                              "instead of training from scratch")
    beta: float = option(1.0, gt=0, help="PowerBALD exponent (scores^β)")
    score_batch: int = option(1024, ge=1, metavar="B", help="pool images per scoring batch")


@dataclass
class ActiveConfig(Config):
    """Everything that defines an active-learning run (``config.json`` stores it)."""

    data: DataConfig = section(DataConfig, title="data")
    model: ModelConfig = section(lambda: ModelConfig(name="lenet", dropout=0.5),
                                 title="model and dropout")
    train: TrainConfig = section(lambda: TrainConfig(batch_size=32, optimizer="adamw",
                                                     lr_schedule="constant"),
                                 title="training (each round)")
    active: ActiveOptions = section(ActiveOptions, title="active learning")
    run: RunConfig = section(RunConfig, title="run")

    def validate(self) -> None:
        if needs_mc(self.active.acquisition) and self.model.dropout == 0 \
                and self.model.input_dropout == 0:
            raise InvalidValue(
                f"--acquisition {self.active.acquisition} scores MC-dropout passes, but "
                "--dropout is 0; train with dropout (e.g. --dropout 0.5) or use "
                "--acquisition random")


@dataclass
class Split:
    """Positions into the training part: labelled (in acquisition order), validation, pool."""

    labelled: list[int]
    val: list[int]
    pool: list[int]


def initial_split(labels: Tensor, initial: int, val_size: int, seed: int) -> Split:
    """``initial`` labelled images balanced over classes (the remainder to the first
    classes), ``val_size`` random validation images, the rest the pool."""
    n = labels.numel()
    classes = torch.unique(labels)
    if initial < classes.numel():
        raise InvalidValue(f"--initial {initial} is fewer than the {classes.numel()} classes; "
                           "a balanced start needs at least one image per class")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=g)
    per = [initial // classes.numel() + (i < initial % classes.numel())
           for i in range(classes.numel())]
    chosen: list[int] = []
    for c, want in zip(classes.tolist(), per):
        of_c = order[labels[order] == c][:want].tolist()
        if len(of_c) < want:
            raise InvalidValue(f"class {c} has only {len(of_c)} training images; lower --initial")
        chosen += of_c
    taken = set(chosen)
    rest = [i for i in order.tolist() if i not in taken]
    if len(rest) <= val_size:
        raise InvalidValue(f"the pool is empty: {n} training images, {initial} labelled and "
                           f"{val_size} for validation; lower --initial or --val-size")
    return Split(chosen, rest[:val_size], rest[val_size:])


def _check_pool(a: ActiveOptions, pool: int, acquisitions: int) -> None:
    """The pool must hold every image the remaining rounds acquire."""
    if a.pool_subset is not None and a.pool_subset < a.step:
        raise InvalidValue(f"--pool-subset {a.pool_subset} is smaller than --step {a.step}; "
                           "score at least as many images as each round acquires")
    if acquisitions * a.step > pool:
        raise InvalidValue(f"{acquisitions} rounds of {a.step} need {acquisitions * a.step} pool "
                           f"images but the pool has {pool}; lower --rounds or --step")


def _round_seed(seed: int, r: int) -> int:
    return int(seed) * 10_007 + r


def _train(cfg: ActiveConfig, bundle: D.DatasetBundle, split: Split, device: torch.device,
           model: nn.Module | None, r: int,
           build: Callable[[ActiveConfig, D.DatasetBundle], nn.Module]) -> nn.Module:
    """Train on the labelled images for ``train_steps`` steps (a fresh model unless
    warm-starting); the round's seed fixes initialisation, order and masks."""
    seed_everything(_round_seed(cfg.run.seed, r))
    if model is None or not cfg.active.warm_start:
        model = build(cfg, bundle)
    bs = cfg.train.batch_size
    # one "epoch" of train_steps batches: the labelled images repeated, shuffled together
    # (with 20 labels an epoch is a single batch, and per-epoch work would dominate)
    n = len(split.labelled)
    reps = max(1, -(-cfg.active.train_steps * bs // n))
    indices = torch.tensor(split.labelled).repeat(reps)
    tcfg = dataclasses.replace(cfg.train, epochs=1)
    train_loader = D.Loader(bundle.train, indices, batch_size=bs, shuffle=True,
                            seed=_round_seed(cfg.run.seed, r), drop_last=n * reps % bs == 1,
                            mean=bundle.mean, std=bundle.std, device=device)
    fit(model, train_loader, None, tcfg, device=device)
    return model


def _evaluate(model: nn.Module, loader: D.Loader, device: torch.device) -> dict[str, float]:
    probs, labels = predict_proba(model, loader, device)
    return {"acc": float((probs.argmax(1) == labels).double().mean()),
            "nll": float(negative_log_likelihood(probs, labels)),
            "ece": float(expected_calibration_error(probs, labels))}


def _acquire(cfg: ActiveConfig, model: nn.Module, bundle: D.DatasetBundle, split: Split,
             device: torch.device, r: int) -> tuple[list[int], dict[str, Any]]:
    """Score the pool (or a random subset) and pick ``step`` images: their positions in the
    training part, and what the scoring cost."""
    a = cfg.active
    g = torch.Generator().manual_seed(_round_seed(cfg.run.seed, r) + 1)
    pool = torch.tensor(split.pool)
    if a.pool_subset is not None and a.pool_subset < pool.numel():
        pool = pool[torch.randperm(pool.numel(), generator=g)[:a.pool_subset]]
    info: dict[str, Any] = {"scored": int(pool.numel())}
    if not needs_mc(a.acquisition):
        picked = acquire("random", None, a.step, pool_size=pool.numel(), generator=g)
        return pool[picked.indices].tolist(), info
    loader = D.Loader(bundle.train, pool, batch_size=a.score_batch, shuffle=False,
                      mean=bundle.mean, std=bundle.std, device=device)
    start = time.perf_counter()
    scores = pool_mc_probs(model, (x for x, _ in loader), a.mc, seed=_round_seed(cfg.run.seed, r),
                           require_consistent=a.acquisition in CONSISTENT)
    info.update(score_s=time.perf_counter() - start, cached=scores.cached)
    picked = acquire(a.acquisition, scores.probs, a.step, generator=g, beta=a.beta)
    return pool[picked.indices].tolist(), info


def default_build(cfg: ActiveConfig, bundle: D.DatasetBundle) -> nn.Module:
    """The classifier of ``cfg.model`` for the bundle's images and classes."""
    return build_model(cfg.model, bundle.in_shape, bundle.num_classes)


def run(cfg: ActiveConfig, resume: bool = False, *,
        build: Callable[[ActiveConfig, D.DatasetBundle], nn.Module] = default_build,
        bundle: D.DatasetBundle | None = None) -> dict[str, Any]:
    """Run (or with ``resume`` continue) the active-learning loop; return the summary.

    ``build`` makes each round's fresh model (benchmarks pass the paper's CNN) and
    ``bundle`` an already loaded dataset; neither is stored, so pass the same ones to resume.
    """
    t0 = time.perf_counter()
    device = resolve_device(cfg.run.device)
    a = cfg.active
    run_dir = open_run(cfg, TASK, resume=resume)
    if resume and (done := run_dir.read_summary()) is not None:
        return done
    if bundle is None:
        d = cfg.data
        bundle = D.load_dataset(d.dataset, d.data_root, d.classes, image_size=d.image_size,
                                seed=cfg.run.seed, download=d.download, limit=d.limit)
    state = run_dir.load_checkpoint(map_location="cpu") if resume else None
    if state is not None:
        split = Split(list(state["labelled"]), list(state["val"]), list(state["pool"]))
        records: list[dict[str, Any]] = list(state["records"])
        first = len(records)
        model: nn.Module | None = None
        if a.warm_start and state.get("model") is not None:
            model = build(cfg, bundle)
            model.load_state_dict(state["model"])
    else:
        split = initial_split(bundle.train.labels, a.initial, a.val_size, cfg.run.seed)
        records, first, model = [], 0, None
    if run_dir.metrics_path.exists():  # records after the checkpoint (a killed round) go
        run_dir.truncate_metrics(lambda rec: int(rec.get("round", -1)) < first)
    _check_pool(a, len(split.pool), a.rounds - first)
    kw = dict(batch_size=1024, shuffle=False, mean=bundle.mean, std=bundle.std, device=device)
    test_loader = D.Loader(bundle.test, None, **kw)
    val_loader = D.Loader(bundle.train, torch.tensor(split.val), **kw) if split.val else None
    for r in progress(range(first, a.rounds + 1), desc=f"active {a.acquisition}",
                      initial=first, total=a.rounds + 1):
        start = time.perf_counter()
        model = _train(cfg, bundle, split, device, model, r, build)
        train_s = time.perf_counter() - start
        test = _evaluate(model, test_loader, device)
        record: dict[str, Any] = {
            "round": r, "labels": len(split.labelled), "test_acc": test["acc"],
            "test_nll": test["nll"], "test_ece": test["ece"],
            "val_acc": _evaluate(model, val_loader, device)["acc"] if val_loader else None,
            "train_s": train_s}
        if r < a.rounds:
            picked, info = _acquire(cfg, model, bundle, split, device, r)
            taken = set(picked)
            split.pool = [i for i in split.pool if i not in taken]
            split.labelled += picked
            record.update(acquired=picked, **info)
        record["time_s"] = time.perf_counter() - start
        records.append(record)
        run_dir.log(record)
        run_dir.save_checkpoint({
            "round": r, "labelled": split.labelled, "val": split.val, "pool": split.pool,
            "records": records,
            "model": model.state_dict() if a.warm_start else None})
    summary = _summary(cfg, bundle, records, run_dir, time.perf_counter() - t0)
    run_dir.write_summary(summary)
    return summary


def _summary(cfg: ActiveConfig, bundle: D.DatasetBundle, records: list[dict[str, Any]],
             run_dir: RunDir, wall_s: float) -> dict[str, Any]:
    last = records[-1]
    return {
        "task": TASK, "dataset": bundle.name, "model": cfg.model.name,
        "acquisition": cfg.active.acquisition, "seed": cfg.run.seed,
        "rounds": cfg.active.rounds, "labels": [r["labels"] for r in records],
        "test_acc": [r["test_acc"] for r in records],
        "test_nll": [r["test_nll"] for r in records],
        "test_ece": [r["test_ece"] for r in records],
        "final_labels": last["labels"], "final_test_acc": last["test_acc"],
        "labels_to_error": labels_to_error(records, (0.10, 0.05)),
        "wall_s": wall_s, "run_dir": str(run_dir.path),
    }


def labels_to_error(records: list[dict[str, Any]],
                    errors: tuple[float, ...]) -> dict[str, int | None]:
    """For each error level, the first label count whose test error is at most it."""
    out: dict[str, int | None] = {}
    for e in errors:
        hit = next((r["labels"] for r in records if 1 - r["test_acc"] <= e + 1e-12), None)
        out[f"{e:g}"] = hit
    return out


__all__ = ["ActiveConfig", "ActiveOptions", "Split", "default_build", "initial_split",
           "labels_to_error", "run"]
