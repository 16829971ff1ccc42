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
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from droplab import data as D
from droplab.errors import InvalidValue, UserError, check_rate, unknown_name
from droplab.models.transfer import (  # FinetuneNet and Source re-exported from their new home
    IMAGENET_MEAN,
    IMAGENET_STD,
    FinetuneNet,
    Source,
    TransferSpec,
    assemble,
    backbone_source,
    feature_dim,
)
from droplab.runs import RunDir
from droplab.runs.restore import finetune_net, load_run
from droplab.runtime import resolve_device, seed_everything

STRATEGIES = ("linear-probe", "full", "gradual", "scratch")
#: fine-tuning default learning rates (a fresh head on few labels wants a larger AdamW
#: step than training from scratch; 3e-3 beat 1e-3 for every strategy on digits 5-9)
DEFAULT_LR = {"adamw": 3e-3, "sgd": 0.05}


@dataclass
class FinetuneConfig:
    """Options of :func:`run`. Exactly one of ``from_run`` and ``backbone`` is set.

    ``backbone`` is ``tv:<torchvision name>`` or ``timm:<timm name>``; ``weights`` is
    ``"DEFAULT"`` (the weights enum's default, from the torch hub cache or downloaded), a
    path to a state dict, or ``None`` (random init). ``labels_per_class`` samples a balanced, seeded training
    subset of the target set.
    """

    dataset: str = "digits"
    data_root: str | None = None
    classes: list[str] | None = None
    image_size: int | None = None
    labels_per_class: int | None = None
    from_run: str | None = None
    backbone: str | None = None
    weights: str | None = "DEFAULT"
    strategy: str = "gradual"
    dropout: float = 0.5
    dropout_kind: str = "dropout"
    hidden: int | None = None
    drop_path: float = 0.0
    dropblock: float = 0.0
    freeze_bn: bool = False
    lr_decay: float = 0.3
    max_stages: int = 4
    epochs: int = 6
    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float | None = None
    weight_decay: float | None = None
    lr_schedule: str = "cosine"
    label_smoothing: float = 0.0
    val_fraction: float = 0.1
    augment: str = "auto"
    seed: int = 0
    device: str = "auto"
    out: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if (self.from_run is None) == (self.backbone is None):
            raise InvalidValue(
                "give exactly one pretrained source: --from RUN (a droplab run folder) "
                "or --backbone tv:NAME / timm:NAME"
            )
        if self.strategy not in STRATEGIES:
            raise unknown_name("strategy", self.strategy, STRATEGIES)
        check_rate(self.dropout, "dropout")
        check_rate(self.drop_path, "drop-path")
        check_rate(self.dropblock, "dropblock")
        if not 0.0 < self.lr_decay <= 1.0:
            raise InvalidValue(f"--lr-decay must be in (0, 1], got {self.lr_decay}")
        if self.labels_per_class is not None and self.labels_per_class < 1:
            raise InvalidValue("--labels-per-class must be a positive integer")
        if self.epochs < 1:
            raise InvalidValue("--epochs must be at least 1")


# -- building the source ---------------------------------------------------------------------


def load_source(cfg: FinetuneConfig, pretrained: bool = True) -> Source:
    """Build the pretrained (or, with ``pretrained=False``, freshly initialised) source."""
    if cfg.from_run:
        loaded = load_run(cfg.from_run, device="cpu")
        model = loaded.model
        if not pretrained:
            model = copy.deepcopy(model)
            for m in model.modules():
                if hasattr(m, "reset_parameters") and m is not model:
                    m.reset_parameters()
        feats = feature_dim(model, loaded.in_shape)
        return Source(model, feats, tuple(loaded.in_shape), tuple(loaded.mean),  # type: ignore[arg-type]
                      tuple(loaded.std), f"run {cfg.from_run}")
    assert cfg.backbone is not None
    return backbone_source(cfg.backbone, cfg.weights, pretrained=pretrained)


# -- running ----------------------------------------------------------------------------------


def build(cfg: FinetuneConfig, bundle: D.DatasetBundle) -> tuple[FinetuneNet, Source]:
    """The fine-tuning network for ``bundle`` (source weights loaded per the strategy)."""
    src = load_source(cfg, pretrained=cfg.strategy != "scratch")
    return _assemble(cfg, src, len(bundle.classes), tuple(bundle.in_shape)), src


def _assemble(cfg: FinetuneConfig, src: Source, num_classes: int,
              in_shape: tuple[int, ...]) -> FinetuneNet:
    return assemble(src, TransferSpec.from_config(asdict(cfg)), num_classes, in_shape,
                    dataset=cfg.dataset)


def rebuild(config: dict[str, Any], num_classes: int, in_shape: tuple[int, ...]) -> FinetuneNet:
    """Moved: :func:`droplab.runs.restore.finetune_net` (kept for existing callers)."""
    return finetune_net(config, num_classes, in_shape)


def _trainable_stages(cfg: FinetuneConfig, n_stages: int, epoch: int) -> int | None:
    """How many backbone stages train during (0-based) ``epoch``; ``None`` = all."""
    if cfg.strategy in ("full", "scratch"):
        return None
    if cfg.strategy == "linear-probe":
        return 0
    per = max(1, cfg.epochs // (n_stages + 1))
    return min(n_stages, epoch // per)


def run(cfg: FinetuneConfig, resume: bool = False) -> dict[str, Any]:
    """Fine-tune and evaluate; returns the summary written to ``summary.json``."""
    from droplab import train as T
    from droplab.uncertainty import expected_calibration_error, negative_log_likelihood

    cfg.validate()
    device = resolve_device(cfg.device)
    run_dir = RunDir.create(cfg.out, "finetune", resume=resume)
    if resume:
        stored = run_dir.read_config()
        if stored.get("task") != "finetune":
            raise UserError(f"{run_dir.path} is a {stored.get('task')} run, not a finetune run")
        done = run_dir.read_summary()
        if done is not None:
            return done
    else:
        run_dir.write_config(cfg, task="finetune")
    seed_everything(cfg.seed)
    t0 = time.perf_counter()

    bundle = D.load_dataset(cfg.dataset, cfg.data_root, cfg.classes, image_size=cfg.image_size,
                            seed=cfg.seed)
    train_idx = torch.arange(len(bundle.train.labels))
    if cfg.labels_per_class is not None:
        train_idx = D.subsample_per_class(bundle.train.labels, cfg.labels_per_class, cfg.seed)
    model, src = build(cfg, bundle)
    mean, std = src.mean, src.std
    if bundle.in_shape[0] == 1 and len(mean) == 3:  # grey images into an RGB backbone
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    labels = bundle.train.labels[train_idx]
    if cfg.val_fraction > 0 and len(train_idx) >= 4 * len(bundle.classes):
        tr, va = D.stratified_split(labels, cfg.val_fraction, cfg.seed)
        fit_idx, val_idx = train_idx[tr], train_idx[va]
    else:
        fit_idx, val_idx = train_idx, None
    augment = bundle.in_shape[0] == 3 if cfg.augment == "auto" else cfg.augment == "on"
    loader_kw = dict(mean=mean, std=std, device=device)
    train_loader = D.Loader(bundle.train, fit_idx, batch_size=cfg.batch_size, shuffle=True,
                            augment=augment, seed=cfg.seed, **loader_kw)
    val_loader = (D.Loader(bundle.train, val_idx, batch_size=256, shuffle=False, **loader_kw)
                  if val_idx is not None else None)
    test_loader = D.Loader(bundle.test, None, batch_size=256, shuffle=False, **loader_kw)

    lr = cfg.lr if cfg.lr is not None else DEFAULT_LR.get(cfg.optimizer)
    tcfg = T.TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, optimizer=cfg.optimizer,
                         lr=lr, weight_decay=cfg.weight_decay, lr_schedule=cfg.lr_schedule,
                         label_smoothing=cfg.label_smoothing)
    n_stages = len(model.stages)
    start_epoch = len(run_dir.read_metrics()) if resume else 0
    model.set_trainable_stages(_trainable_stages(cfg, n_stages, start_epoch))
    unfrozen_log: list[dict[str, Any]] = []

    def on_epoch(record: dict[str, Any]) -> None:
        k = _trainable_stages(cfg, n_stages, int(record["epoch"]))  # next epoch (0-based)
        model.set_trainable_stages(k)
        unfrozen_log.append({"after_epoch": record["epoch"], "trainable_stages": k})

    model.to(device)
    result = T.fit(model, train_loader, val_loader, tcfg, device=device, run=run_dir,
                   resume=resume, on_epoch=on_epoch,
                   meta={"classes": bundle.classes, "in_shape": bundle.in_shape,
                         "mean": mean, "std": std})
    probs, y = T.predict_proba(model, test_loader, device)
    test_acc = float((probs.argmax(1) == y).float().mean())
    summary = {
        "task": "finetune",
        "source": src.description,
        "strategy": cfg.strategy,
        "dropout": cfg.dropout,
        "labels_per_class": cfg.labels_per_class,
        "train_images": len(fit_idx),
        "stages": n_stages,
        "test_acc": test_acc,
        "test_loss": negative_log_likelihood(probs, y),
        "test_ece": float(expected_calibration_error(probs, y)),
        "best_val_acc": result.get("best_val_acc"),
        "epochs": cfg.epochs,
        "time_s": time.perf_counter() - t0,
        "run_dir": str(run_dir.path),
        "classes": bundle.classes,
    }
    run_dir.write_summary(summary)
    return summary


def parse_weights(text: str | None) -> str | None:
    """``--weights`` value: ``none`` → random init, ``default`` (or omitted) → the weights
    enum's default, anything else → a path to a state dict."""
    if text is None or text.lower() == "default":
        return "DEFAULT"
    if text.lower() == "none":
        return None
    return text


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "STRATEGIES", "FinetuneConfig", "FinetuneNet",
           "Source", "build", "load_source", "rebuild", "run"]
