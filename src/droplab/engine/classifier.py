"""Train and test an image classifier into a run folder: the recipe behind ``droplab train``
(and behind ``droplab gan``'s feature classifier, which is why it lives in the library).

:func:`train_classifier` loads a named dataset (:mod:`droplab.data`), holds out a
stratified validation split of the training part, builds a classifier from the zoo
(:mod:`droplab.models`) with the requested dropout, trains it with the one loop
(:func:`droplab.engine.fit`), evaluates it once on the test part and writes::

    config.json       the ClassifyConfig (task "train")
    metrics.jsonl     one record per epoch
    checkpoint.pt     model/optimiser/schedulers/RNG (+ meta that load_run needs)
    summary.json      test_acc, test_loss (NLL), test_ece, test_brier, best_val_acc, …
    learning_curves.png

Under ``torchrun`` each process trains on its shard (``batch_size`` is the global batch)
and only rank 0 writes files.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from droplab import data as D
from droplab.config import Config, section
from droplab.engine.callbacks import Callback
from droplab.engine.config import ClassifyDataConfig, RunConfig, TrainConfig
from droplab.engine.distributed import broadcast_object, init_distributed, shutdown_distributed
from droplab.engine.loop import fit, predict_proba
from droplab.engine.resume import finished_summary, open_run
from droplab.errors import UserError
from droplab.models import ModelConfig, build_model
from droplab.models.tta import with_tta
from droplab.plots import learning_curves
from droplab.runs import RunDir
from droplab.runtime import resolve_device, seed_everything
from droplab.uncertainty import brier_score, expected_calibration_error, negative_log_likelihood

TASK = "train"
#: training images a model's data-dependent initialisation sees (airbench: 5,000)
DATA_INIT_IMAGES = 5000


@dataclass
class ClassifyConfig(Config):
    """Everything that defines a classification run (``config.json`` stores it), in four
    sections that other tasks reuse:

    - ``data`` (:class:`~droplab.engine.config.ClassifyDataConfig`): dataset, classes,
      image size, per-class limit, validation share, augmentation;
    - ``model`` (:class:`~droplab.models.ModelConfig`): the classifier and its dropout
      (rate, kind, placement, input dropout);
    - ``train`` (:class:`~droplab.engine.config.TrainConfig`): the loop's options, incl.
      max-norm (applied at build time too) and the dropout schedule;
    - ``run`` (:class:`~droplab.engine.config.RunConfig`): seed, device, output folder.

    ``ClassifyConfig.build(dataset="digits", epochs=5)`` takes flat option names. The
    defaults train ``digits`` with an MLP to ≥ 0.95 test accuracy in 5 epochs.
    """

    data: ClassifyDataConfig = section(ClassifyDataConfig, title="data")
    model: ModelConfig = section(lambda: ModelConfig(name="mlp", dropout=0.5),
                                 title="model and dropout")
    train: TrainConfig = section(lambda: TrainConfig(batch_size=32), title="training")
    run: RunConfig = section(RunConfig, title="run")

    def train_config(self) -> TrainConfig:
        """The loop's options; a dropout schedule ramps towards ``--dropout``."""
        scheduled = self.train.dropout_schedule and self.model.dropout > 0
        return dataclasses.replace(self.train,
                                   dropout_p=self.model.dropout if scheduled else None)

    def model_config(self) -> ModelConfig:
        """The architecture, with the max-norm cap applied at build time as well."""
        return dataclasses.replace(self.model, max_norm=self.train.max_norm)


# ------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------
def _open_run_dir(cfg: ClassifyConfig, resume: bool, rank: int) -> RunDir:
    """Rank 0 creates (or reopens) the folder under the one resume rule; the other ranks
    learn its path (or the error)."""
    found: Any = None
    if rank == 0:
        try:
            found = str(open_run(cfg, TASK, resume=resume,
                                 finished=("epochs", cfg.train.epochs)).path)
        except UserError as exc:
            found = exc
    found = broadcast_object(found)
    if isinstance(found, BaseException):
        raise found
    cfg.run.out = found
    return RunDir(found)


def train_classifier(
    cfg: ClassifyConfig,
    resume: bool = False,
    *,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Train and test a classifier; return the summary written to ``summary.json``.

    ``resume=True`` continues the run in ``cfg.run.out`` from its checkpoint (same options
    required, else :class:`~droplab.errors.ResumeError`; see
    :mod:`droplab.engine.resume`); a finished run returns its stored summary without
    training. ``callbacks`` are passed to :func:`droplab.engine.fit` (e.g. an
    :class:`~droplab.engine.OnEpochEnd` that reports to a sweep and may raise to prune). Under ``torchrun`` each process trains on its shard
    (``batch_size`` is the global batch) and only rank 0 writes files.
    """
    t0 = time.perf_counter()
    device = resolve_device(cfg.run.device)
    rank, world, device = init_distributed(device)
    data, tcfg = cfg.data, cfg.train_config()
    try:
        run_dir = _open_run_dir(cfg, resume, rank)
        done = finished_summary(run_dir, "epochs", tcfg.epochs) if resume else None
        if done is not None:
            return done

        seed = cfg.run.seed
        seed_everything(seed)
        bundle = D.load_dataset(data.dataset, data.data_root, data.classes,
                                image_size=data.image_size, seed=seed, download=data.download,
                                limit=data.limit)
        all_idx = torch.arange(len(bundle.train))
        if data.val_fraction > 0:
            train_idx, val_idx = D.stratified_split(bundle.train.labels, data.val_fraction, seed)
        else:
            train_idx, val_idx = all_idx, None
        per_rank = max(1, tcfg.batch_size // world)
        shard = -(-len(train_idx) // world)
        common = dict(mean=bundle.mean, std=bundle.std, device=device,
                      channels_last=tcfg.channels_last)
        train_loader = D.Loader(
            bundle.train, train_idx, batch_size=per_rank, shuffle=True, seed=seed,
            drop_last=shard % per_rank == 1,  # a batch of one breaks BatchNorm
            rank=rank, world_size=world, **data.loader_augmentation(bundle.in_shape[0]),
            **common,
        )
        eval_bs = max(256, tcfg.batch_size)
        val_loader = (D.Loader(bundle.train, val_idx, batch_size=eval_bs, shuffle=False, **common)
                      if val_idx is not None else None)
        test_loader = D.Loader(bundle.test, None, batch_size=eval_bs, shuffle=False, **common)

        seed_everything(seed)
        model_cfg = cfg.model_config()
        model = build_model(model_cfg, bundle.in_shape, bundle.num_classes)
        data_init = getattr(model, "init_from_data", None)
        if callable(data_init):  # e.g. airbench's whitening filters (a resume reloads them)
            data_init(first_images(bundle.train, train_idx, DATA_INIT_IMAGES, **common))
        num_params = sum(p.numel() for p in model.parameters())
        meta = {"model_config": model_cfg.to_dict(), "classes": bundle.classes,
                "in_shape": tuple(bundle.in_shape), "mean": tuple(bundle.mean),
                "std": tuple(bundle.std), "dataset": bundle.name}
        result = fit(model, train_loader, val_loader, tcfg, device=device,
                     run=run_dir, resume=resume, callbacks=callbacks, meta=meta)

        probs, labels = predict_proba(with_tta(model, data.tta), test_loader, device)
        summary = {
            "task": TASK,
            "dataset": bundle.name,
            "model": cfg.model.name,
            "dropout": cfg.model.dropout,
            "dropout_kind": cfg.model.dropout_kind,
            "classes": bundle.classes,
            "num_classes": bundle.num_classes,
            "in_shape": list(bundle.in_shape),
            "train_images": len(train_idx),
            "test_images": len(labels),
            "test_acc": float((probs.argmax(1) == labels).double().mean()),
            "test_loss": _nll(probs, labels),
            "test_ece": float(expected_calibration_error(probs, labels)),
            "test_brier": float(brier_score(probs, labels)),
            "tta": data.tta,
            "best_val_acc": result.get("best_val_acc"),
            "val_acc": result.get("val_acc"),
            "train_acc": result.get("train_acc"),
            "epochs": result.get("epochs"),
            "time_s": result.get("time_s"),
            "wall_s": time.perf_counter() - t0,
            "images_per_s": result.get("images_per_s"),
            "num_params": num_params,
            "world_size": world,
            "device": str(device),
            "run_dir": str(run_dir.path),
        }
        if rank == 0:
            learning_curves(run_dir.read_metrics(), run_dir / "learning_curves.png",
                            title=f"{cfg.model.name} on {bundle.name}, "
                            f"dropout {cfg.model.dropout:g}")
            run_dir.write_summary(summary)
        return summary
    finally:
        if world > 1:
            shutdown_distributed()


def first_images(data: D.ImageData, indices: Tensor, n: int, **loader: Any) -> Tensor:
    """The first ``n`` images of ``indices``, normalised and un-augmented, as one batch
    (the input of a model's ``init_from_data``)."""
    idx = indices[:n]
    return next(iter(D.Loader(data, idx, batch_size=max(1, idx.numel()), shuffle=False,
                              **loader)))[0]


def _nll(probs: Tensor, labels: Tensor) -> float:
    return float(negative_log_likelihood(probs, labels))


__all__ = ["TASK", "ClassifyConfig", "train_classifier"]
