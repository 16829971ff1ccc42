"""Transfer learning with a dropout head: ``droplab finetune``.

A pretrained backbone (a torchvision classifier with its weights enum, a timm model, or a
droplab run folder) keeps its feature extractor; its classifier is replaced by a dropout
head (``Dropout → Linear`` or ``Dropout → Linear → ReLU → Dropout → Linear``). Strategies:

- ``linear-probe``: only the head trains;
- ``full``: everything trains, with discriminative learning rates (stage ``i`` from the
  top gets ``lr * lr_decay**i``; Howard & Ruder 2018, ULMFiT);
- ``gradual``: the head trains first, then one more backbone stage is unfrozen from the
  top every ``epochs / (stages + 1)`` epochs (fastai's ``fine_tune`` / Lightning's
  ``BackboneFinetuning``), with the same discriminative learning rates;
- ``scratch``: the same architecture from random weights, everything trains (the baseline
  transfer has to beat).

``freeze_bn`` keeps the backbone's BatchNorm statistics fixed (eval mode) while training,
the usual choice when the target set is small. DropPath / DropBlock can be added inside
the backbone through :mod:`droplab.surgery` (``drop_path``, ``dropblock``).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import torch

from droplab import data as D
from droplab.config import Config, option, section
from droplab.engine import GradualUnfreezing, fit, predict_proba
from droplab.engine.config import ClassifyDataConfig, RunConfig, TrainConfig
from droplab.engine.resume import finished_summary, open_run
from droplab.errors import InvalidValue
from droplab.models.transfer import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FinetuneNet,
    Source,
    TransferSpec,
    assemble,
    backbone_source,
    feature_dim,
)
from droplab.runs.restore import CLASSIFIER_TASKS, load_run
from droplab.runtime import resolve_device, seed_everything
from droplab.uncertainty import expected_calibration_error, negative_log_likelihood

TASK = "finetune"
STRATEGIES = ("linear-probe", "full", "gradual", "scratch")
#: fine-tuning default learning rates (a fresh head on few labels wants a larger AdamW
#: step than training from scratch; 3e-3 beat 1e-3 for every strategy on digits 5-9)
DEFAULT_LR = {"adamw": 3e-3, "sgd": 0.05}


def parse_weights(text: str | None) -> str | None:
    """``--weights`` value: ``none`` → random init, ``default`` (or omitted) → the weights
    enum's default, anything else → a path to a state dict."""
    if text is None or text.lower() == "default":
        return "DEFAULT"
    if text.lower() == "none":
        return None
    return text


@dataclass
class SourceConfig(Config):
    """The pretrained source: exactly one of a droplab run folder and a backbone."""

    from_run: str | None = option(None, flag="--from", metavar="RUN",
                                  help="a droplab train run folder")
    backbone: str | None = option(None, metavar="NAME",
                                  help="tv:NAME (torchvision) or timm:NAME")
    weights: str | None = option("DEFAULT", parse=parse_weights, metavar="WEIGHTS",
                                 help="default (the weights enum's default, from the torch hub "
                                 "cache or downloaded), none (random init) or a state-dict path")


@dataclass
class FinetuneDataConfig(ClassifyDataConfig):
    """The target set, optionally a balanced few-label subset of it."""

    labels_per_class: int | None = option(None, ge=1, metavar="K",
                                          help="train on a balanced, seeded subset of K "
                                          "labels per class")


@dataclass
class HeadConfig(TransferSpec):
    """The head and the backbone's regularisers (a
    :class:`~droplab.models.transfer.TransferSpec`, declared there) and the strategy."""

    strategy: str = option("gradual", choices=STRATEGIES,
                           help="linear-probe, full, gradual or scratch")


@dataclass
class FinetuneConfig(Config):
    """Options of :func:`run`. Exactly one of ``source.from_run`` and ``source.backbone``.

    Learning rate ``None`` takes :data:`DEFAULT_LR` (3e-3 for AdamW, a larger step than
    training from scratch wants).
    """

    source: SourceConfig = section(SourceConfig, title="pretrained source (one of)")
    data: FinetuneDataConfig = section(FinetuneDataConfig, title="data")
    head: HeadConfig = section(HeadConfig, title="head and strategy")
    train: TrainConfig = section(
        lambda: TrainConfig(epochs=6, batch_size=64, optimizer="adamw"), title="training",
        help={"lr": "learning rate (default 3e-3 adamw, 0.05 sgd)"})
    run: RunConfig = section(RunConfig, title="run")

    def validate(self) -> None:
        if (self.source.from_run is None) == (self.source.backbone is None):
            raise InvalidValue(
                "give exactly one pretrained source: --from RUN (a droplab run folder) "
                "or --backbone tv:NAME / timm:NAME"
            )

    def train_config(self) -> TrainConfig:
        """The loop's options with the fine-tuning default learning rate."""
        t = self.train
        return t if t.lr is not None else dataclasses.replace(t, lr=DEFAULT_LR[t.optimizer])


# -- building the source ---------------------------------------------------------------------


def load_source(cfg: FinetuneConfig, pretrained: bool = True) -> Source:
    """Build the pretrained (or, with ``pretrained=False``, freshly initialised) source."""
    src = cfg.source
    if src.from_run:
        loaded = load_run(src.from_run, device="cpu", tasks=CLASSIFIER_TASKS)
        model = loaded.model
        if not pretrained:
            model = copy.deepcopy(model)
            for m in model.modules():
                if hasattr(m, "reset_parameters") and m is not model:
                    m.reset_parameters()
        feats = feature_dim(model, loaded.in_shape)
        return Source(model, feats, tuple(loaded.in_shape), tuple(loaded.mean),  # type: ignore[arg-type]
                      tuple(loaded.std), f"run {src.from_run}")
    assert src.backbone is not None
    return backbone_source(src.backbone, src.weights, pretrained=pretrained,
                           drop_path=cfg.head.drop_path)


# -- running ----------------------------------------------------------------------------------


def build(cfg: FinetuneConfig, bundle: D.DatasetBundle) -> tuple[FinetuneNet, Source]:
    """The fine-tuning network for ``bundle`` (source weights loaded per the strategy)."""
    src = load_source(cfg, pretrained=cfg.head.strategy != "scratch")
    net = assemble(src, cfg.head.spec(), len(bundle.classes), tuple(bundle.in_shape),
                   dataset=cfg.data.dataset)
    return net, src


def _trainable_stages(cfg: FinetuneConfig, n_stages: int, epoch: int) -> int | None:
    """How many backbone stages train during (0-based) ``epoch``; ``None`` = all."""
    if cfg.head.strategy in ("full", "scratch"):
        return None
    if cfg.head.strategy == "linear-probe":
        return 0
    per = max(1, cfg.train.epochs // (n_stages + 1))
    return min(n_stages, epoch // per)


def run(cfg: FinetuneConfig, resume: bool = False) -> dict[str, Any]:
    """Fine-tune and evaluate; returns the summary written to ``summary.json``."""
    device = resolve_device(cfg.run.device)
    target = ("epochs", cfg.train.epochs)
    run_dir = open_run(cfg, TASK, resume=resume, finished=target)
    done = finished_summary(run_dir, *target) if resume else None
    if done is not None:
        return done
    data, seed = cfg.data, cfg.run.seed
    seed_everything(seed)
    t0 = time.perf_counter()

    bundle = D.load_dataset(data.dataset, data.data_root, data.classes,
                            image_size=data.image_size, seed=seed, download=data.download,
                            limit=data.limit)
    train_idx = torch.arange(len(bundle.train.labels))
    if data.labels_per_class is not None:
        train_idx = D.subsample_per_class(bundle.train.labels, data.labels_per_class, seed)
    model, src = build(cfg, bundle)
    mean, std = src.mean, src.std
    if bundle.in_shape[0] == 1 and len(mean) == 3:  # grey images into an RGB backbone
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    labels = bundle.train.labels[train_idx]
    if data.val_fraction > 0 and len(train_idx) >= 4 * len(bundle.classes):
        tr, va = D.stratified_split(labels, data.val_fraction, seed)
        fit_idx, val_idx = train_idx[tr], train_idx[va]
    else:
        fit_idx, val_idx = train_idx, None
    tcfg = cfg.train_config()
    loader_kw = dict(mean=mean, std=std, device=device, channels_last=tcfg.channels_last)
    train_loader = D.Loader(bundle.train, fit_idx, batch_size=tcfg.batch_size, shuffle=True,
                            augment=data.resolved_augment(bundle.in_shape[0]), seed=seed,
                            **loader_kw)
    val_loader = (D.Loader(bundle.train, val_idx, batch_size=256, shuffle=False, **loader_kw)
                  if val_idx is not None else None)
    test_loader = D.Loader(bundle.test, None, batch_size=256, shuffle=False, **loader_kw)

    n_stages = len(model.stages)
    model.to(device)
    unfreeze = GradualUnfreezing(lambda epoch: _trainable_stages(cfg, n_stages, epoch))
    result = fit(model, train_loader, val_loader, tcfg, device=device, run=run_dir,
                 resume=resume, callbacks=[unfreeze],
                 meta={"classes": bundle.classes, "in_shape": bundle.in_shape,
                       "mean": mean, "std": std})
    probs, y = predict_proba(model, test_loader, device)
    test_acc = float((probs.argmax(1) == y).float().mean())
    summary = {
        "task": TASK,
        "source": src.description,
        "strategy": cfg.head.strategy,
        "dropout": cfg.head.dropout,
        "labels_per_class": data.labels_per_class,
        "train_images": len(fit_idx),
        "stages": n_stages,
        "test_acc": test_acc,
        "test_loss": negative_log_likelihood(probs, y),
        "test_ece": float(expected_calibration_error(probs, y)),
        "best_val_acc": result.get("best_val_acc"),
        "epochs": tcfg.epochs,
        "time_s": time.perf_counter() - t0,
        "run_dir": str(run_dir.path),
        "classes": bundle.classes,
    }
    run_dir.write_summary(summary)
    return summary


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "STRATEGIES", "FinetuneConfig", "FinetuneDataConfig",
           "HeadConfig", "SourceConfig", "build", "load_source",
           "parse_weights", "run"]
