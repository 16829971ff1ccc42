"""The GAN setup of a sweep (``--task gan``): the ``droplab gan`` sections a GAN study nests,
and the :class:`~droplab.engine.gan.GanConfig` one fold trains.

The options are :mod:`droplab.engine.gan_config`'s, declared there once; a sweep reuses
its sections and only changes what a sweep decides itself:

- the discriminator's dropout rate, kind and placement are the search space's (``--rates``,
  ``--kinds``, ``--wheres``), so their own options leave the command line;
- ``--epochs``, ``--batch-size`` and ``--lr`` are the sweep's training options (one flag
  for both tasks), and ``--dataset``, ``--data-root``, ``--classes``, ``--limit``,
  ``--image-size`` the sweep's data options; the GAN's model name is ``--gan-model``
  (``--model`` names the classifier of a classify sweep);
- the samples are always scored against held-out real images (``--eval-real`` leaves the
  command line), at least 10 of them, and the scoring options are part of the study (a
  resumed sweep must score its remaining folds the same way: none is a runtime option).
"""

from __future__ import annotations

from dataclasses import dataclass

from droplab.config import Config, option, section
from droplab.engine.config import DataConfig, RunConfig, TrainConfig
from droplab.engine.gan_config import (
    GanAugmentConfig,
    GanConfig,
    GanDropoutConfig,
    GanEvalConfig,
    GanModelConfig,
    GanTrainConfig,
)
from droplab.layers import KINDS
from droplab.models import gan as nets

__all__ = ["GAN_WHERES", "SweepGanConfig", "fold_gan_config"]

#: where the searched rate applies in the discriminator
GAN_WHERES = nets.WHERE


@dataclass
class SweepGanModelConfig(GanModelConfig):
    """The GAN's nets and loss (``--model`` is the classify sweep's classifier)."""

    model: str = option("auto", choices=nets.GAN_MODELS, what="GAN model", flag="--gan-model",
                        help="with --task gan: dcgan (images), mlp (2-D points) or auto")


@dataclass
class SweepGanDropoutConfig(GanDropoutConfig):
    """D dropout is the search space's; feedback and generator dropout stay options."""

    d_dropout: float = option(0.0, rate=True, cli=False, help="set by each setting (--rates)")
    d_dropout_kind: str = option("dropout", choices=tuple(KINDS), what="dropout kind",
                                 cli=False, help="set by each setting (--kinds)")
    d_dropout_where: str = option("hidden", choices=GAN_WHERES, cli=False,
                                  what="discriminator dropout placement",
                                  help="set by each setting (--wheres)")


@dataclass
class SweepGanTrainConfig(GanTrainConfig):
    """Adam's betas, the EMA and the divergence guard; epochs, batch size and learning
    rate are the sweep's ``--epochs``, ``--batch-size`` and ``--lr``."""

    epochs: int = option(2, ge=1, cli=False, help="the sweep's --epochs")
    batch_size: int = option(64, ge=2, cli=False, help="the sweep's --batch-size")
    lr: float | None = option(None, gt=0, cli=False, help="the sweep's --lr")


@dataclass
class SweepGanEvalConfig(GanEvalConfig):
    """Scoring each fold's EMA generator against held-out real samples; part of the study
    (none of these may change on ``--resume``)."""

    eval_samples: int = option(1000, ge=10, metavar="N",
                               help="with --task gan: generated (and held-out real) samples "
                               "scored per fold")
    eval_real: str = option("test", choices=("test",), cli=False,
                            help="always the held-out test split")
    mode_samples: int | None = option(None, ge=10, metavar="N",
                                      help="with --task gan: samples classified for the mode "
                                      "count (default --eval-samples; stacked-mnist 26,000)")
    feature_extractor: str | None = option(None, metavar="RUN",
                                           help="with --task gan on images: a `droplab train` "
                                           "run whose features score the samples (default: "
                                           "train one into OUT/classifier before the search)")
    classifier_model: str = option("auto", metavar="NAME",
                                   help="model of the on-the-fly classifier (auto: mlp on "
                                   "digits, else lenet)")
    classifier_epochs: int = option(5, ge=1, help="epochs of the on-the-fly classifier")
    inception: bool = option(False, cli=False, help="not in a sweep (classifier features)")
    grid: int = option(64, ge=1, cli=False, help="no sample grids in a sweep")


@dataclass
class SweepGanConfig(Config):
    """The ``droplab gan`` sections of a GAN sweep (used with ``--task gan`` only)."""

    model: SweepGanModelConfig = section(SweepGanModelConfig, title="GAN model and loss "
                                         "(--task gan)")
    dropout: SweepGanDropoutConfig = section(SweepGanDropoutConfig, title="GAN dropout "
                                             "(--task gan)")
    augment: GanAugmentConfig = section(GanAugmentConfig, title="GAN discriminator input "
                                        "(--task gan)")
    train: SweepGanTrainConfig = section(SweepGanTrainConfig, title="GAN training (--task gan)")
    eval: SweepGanEvalConfig = section(SweepGanEvalConfig, title="GAN scoring (--task gan)")


def fold_gan_config(gan: SweepGanConfig, data: DataConfig, train: TrainConfig, run: RunConfig,
                    params: dict[str, object], seed: int) -> GanConfig:
    """The ``droplab gan`` config of one fold: setting ``params`` (``rate``, ``kind``,
    ``where`` of the discriminator's dropout), the sweep's data and training options,
    ``seed``; loss-dependent defaults resolved (:meth:`GanConfig.resolved`). Validated
    like ``droplab gan``'s own (one-line errors)."""
    cfg = GanConfig.from_dict({
        "data": {k: getattr(data, k) for k in ("dataset", "data_root", "classes", "image_size",
                                               "limit", "download")},
        "model": gan.model.to_dict(),
        "dropout": {**gan.dropout.to_dict(), "d_dropout": float(params["rate"]),  # type: ignore[arg-type]
                    "d_dropout_kind": params["kind"], "d_dropout_where": params["where"]},
        "augment": gan.augment.to_dict(),
        "train": {**gan.train.to_dict(), "epochs": train.epochs, "batch_size": train.batch_size,
                  "lr": train.lr},
        "eval": {**gan.eval.to_dict(), "eval_real": "test"},
        "run": {"seed": int(seed), "device": run.device, "out": None},
    })
    return cfg.resolved()
