"""The options of a GAN run, declared once (:mod:`droplab.config`): data, nets and loss,
dropout, what the discriminator sees, training, evaluation, run.

``droplab gan`` generates its parser from :class:`GanConfig`; ``droplab sweep`` nests the
same sections for a GAN study. References: Radford et al. 2016 (DCGAN), Gulrajani et al.
2017 (WGAN-GP), Miyato et al. 2018 (spectral norm), Karras et al. 2018 (minibatch std),
Mordido et al. 2018 (Dropout-GAN), Zhao et al. 2020 (DiffAugment), Sønderby et al. 2017
(instance noise), Isola et al. 2017 (pix2pix noise dropout).
"""

from __future__ import annotations

from dataclasses import dataclass

from droplab.config import Config, option, section
from droplab.data.diffaugment import parse_policy
from droplab.data.toy2d import TOY_DATASETS
from droplab.engine.config import DataConfig, RunConfig
from droplab.errors import InvalidValue
from droplab.layers import KINDS
from droplab.models import gan as nets

__all__ = ["GanAugmentConfig", "GanConfig", "GanDataConfig", "GanDropoutConfig",
           "GanEvalConfig", "GanModelConfig", "GanTrainConfig"]


@dataclass
class GanDataConfig(DataConfig):
    """:class:`~droplab.engine.config.DataConfig` plus the 2-D mixtures."""

    dataset: str = option("digits", metavar="NAME",
                          help="digits, mnist, fashion-mnist, cifar10, stacked-mnist (1,000 "
                          "modes), imagefolder:PATH, or the 2-D mixtures ring (8 modes) and "
                          "grid (25)")
    limit: int | None = option(None, ge=1, metavar="N",
                               help="at most N images per class (stacked-mnist: MNIST digits "
                               "per class; ring/grid: points per mode, default 2000)")


@dataclass
class GanModelConfig(Config):
    """The networks and the adversarial loss (Radford et al. 2016; Gulrajani et al. 2017;
    Miyato et al. 2018; Karras et al. 2018; Mordido et al. 2018)."""

    model: str = option("auto", choices=nets.GAN_MODELS, what="GAN model",
                        help="dcgan (images), mlp (2-D points) or auto (by the data)")
    width: int | None = option(None, ge=1, help="base channel width (mlp: hidden units); "
                               "default 32 (ring/grid: 128)")
    z_dim: int | None = option(None, ge=1, help="latent size; default 64 (ring/grid: 2, as "
                               "in PacGAN)")
    loss: str = option("ns", choices=nets.LOSSES, what="GAN loss",
                       help="ns (non-saturating), hinge or wgan-gp")
    n_critic: int | None = option(None, ge=1, help="discriminator steps per generator step "
                                  "(default 5 for wgan-gp, else 1)")
    gp_weight: float = option(10.0, ge=0, metavar="λ", help="WGAN-GP penalty weight")
    spectral_norm: bool = option(False, help="spectral-normalise the discriminator "
                                 "(Miyato et al. 2018)")
    minibatch_std: bool = option(False, help="minibatch standard deviation feature before "
                                 "the discriminator's output (Karras et al. 2018)")
    discriminators: int = option(1, ge=1, metavar="K",
                                 help="discriminators trained side by side (Dropout-GAN, "
                                 "Mordido et al. 2018; see --d-feedback-dropout)")


@dataclass
class GanDropoutConfig(Config):
    """Dropout in the discriminator, on the discriminators' feedback, and pix2pix noise
    dropout in the generator."""

    d_dropout: float = option(0.0, rate=True, metavar="P",
                              help="discriminator dropout rate (drop probability)")
    d_dropout_kind: str = option("dropout", choices=tuple(KINDS), what="dropout kind",
                                 metavar="KIND", help=", ".join(KINDS))
    d_dropout_where: str = option("hidden", choices=nets.WHERE,
                                  what="discriminator dropout placement",
                                  help="input, hidden (after every discriminator block) or all")
    d_feedback_dropout: float = option(0.0, rate=True, metavar="P",
                                       help="with --discriminators K > 1: drop each one's "
                                       "feedback to the generator with probability P")
    g_dropout: float = option(0.0, rate=True, metavar="P",
                              help="pix2pix noise dropout in the generator (Isola et al. 2017)")
    g_dropout_at_sampling: bool = option(False, help="keep the generator's noise dropout on "
                                         "when sampling")


def _policy(text: str) -> list[str]:
    return parse_policy(text)


@dataclass
class GanAugmentConfig(Config):
    """What the discriminator sees: DiffAugment and annealed instance noise."""

    diffaugment: list[str] | None = option(None, parse=_policy, metavar="POLICY",
                                           help="DiffAugment policies for real and fake "
                                           "images, e.g. color,translation,cutout (Zhao et "
                                           "al. 2020)")
    instance_noise: float = option(0.0, ge=0, metavar="σ",
                                   help="std of Gaussian noise added to every discriminator "
                                   "input, annealed linearly to 0 (Sønderby et al. 2017)")
    noise_anneal_epochs: int | None = option(None, ge=1, metavar="E",
                                             help="epochs over which the instance noise "
                                             "anneals to 0 (default: all --epochs)")

    def validate(self) -> None:
        if self.diffaugment is not None:
            object.__setattr__(self, "diffaugment", parse_policy(self.diffaugment) or None)


@dataclass
class GanTrainConfig(Config):
    """Adam on both nets, the EMA generator and the divergence guard. ``--epochs`` may grow
    on ``--resume`` (there is no LR schedule to stretch)."""

    epochs: int | None = option(None, ge=1, runtime=True, help="training epochs; default 2 "
                                "(ring/grid: 50 of 16,000 points = 3,100 steps at batch 256)")
    batch_size: int | None = option(None, ge=2, help="batch size; default 64 (ring/grid: 256)")
    lr: float | None = option(None, gt=0, help="Adam learning rate; default 1e-4 for "
                              "wgan-gp, else 2e-4 (ring/grid: 1e-3)")
    betas: tuple[float, float] | None = option(None, ge=0, lt=1, nargs=2, metavar=("B1", "B2"),
                                               help="Adam betas (default 0 0.9 for wgan-gp, "
                                               "else 0.5 0.999)")
    ema: float = option(0.999, ge=0, lt=1, help="EMA decay of the sampled generator "
                        "(0 disables it)")
    max_loss: float = option(1e4, gt=0, help="stop when a loss exceeds this in magnitude")


@dataclass
class GanEvalConfig(Config):
    """Scoring the samples at the end (every option here may change on ``--resume``)."""

    eval_samples: int = option(1000, ge=0, runtime=True, metavar="N",
                               help="generated (and held-out real) samples scored at the "
                               "end (0 skips; else at least 10)")
    eval_real: str = option("test", choices=("test", "train"), runtime=True,
                            help="real images the samples are compared with: the held-out "
                            "test part or the training images")
    mode_samples: int | None = option(None, ge=10, runtime=True, metavar="N",
                                      help="samples classified for the mode count (default "
                                      "--eval-samples; stacked-mnist 26,000 as in "
                                      "VEEGAN/PacGAN)")
    feature_extractor: str | None = option(None, runtime=True, metavar="RUN",
                                           help="a `droplab train` run whose features and "
                                           "softmax score the samples (stacked-mnist: an "
                                           "MNIST run, applied per channel; default: train "
                                           "one on the fly into OUT/classifier)")
    classifier_model: str = option("auto", runtime=True, metavar="NAME",
                                   help="model of the on-the-fly classifier (auto: mlp on "
                                   "digits, else lenet)")
    classifier_epochs: int = option(5, ge=1, runtime=True,
                                    help="epochs of the on-the-fly classifier")
    inception: bool = option(False, runtime=True, help="also FID/KID with Inception-v3 "
                             "features (needs torch-fidelity weights)")
    grid: int = option(64, ge=1, help="images in the sample grid")

    def validate(self) -> None:
        if 0 < self.eval_samples < 10:
            raise InvalidValue(f"--eval-samples must be 0 or at least 10, got {self.eval_samples}")


@dataclass
class GanConfig(Config):
    """Everything a GAN run needs (``droplab gan`` writes it to ``config.json``).

    ``n_critic``, ``lr`` and ``betas`` left at ``None`` take the loss's usual values
    (:meth:`resolved`): WGAN-GP 5, 1e-4, (0.0, 0.9) (Gulrajani et al. 2017); ns/hinge 1,
    2e-4, (0.5, 0.999) (Radford et al. 2016). ``width``, ``z_dim``, ``epochs``,
    ``batch_size`` left at ``None`` take the data's: images 32, 64, 2, 64; the 2-D
    mixtures 128 hidden units, a 2-D latent (PacGAN, Lin et al. 2018), 50 epochs (3,100
    steps) of batch 256 and (ns/hinge) lr 1e-3 — a point generator needs thousands of steps
    and a larger step size to put 90 % of its samples within 3σ = 0.03 of the ring's modes.
    ``image_size`` ``None`` keeps the dataset's own size (digits: 8 px); ``limit`` is
    training images per class.
    """

    data: GanDataConfig = section(GanDataConfig, title="data")
    model: GanModelConfig = section(GanModelConfig, title="model and loss")
    dropout: GanDropoutConfig = section(GanDropoutConfig, title="dropout")
    augment: GanAugmentConfig = section(GanAugmentConfig, title="discriminator input")
    train: GanTrainConfig = section(GanTrainConfig, title="training")
    eval: GanEvalConfig = section(GanEvalConfig, title="evaluation")
    run: RunConfig = section(RunConfig, title="run")

    def validate(self) -> None:
        toy = self.data.dataset in TOY_DATASETS
        if toy and self.augment.diffaugment:
            raise InvalidValue(f"--diffaugment transforms images; {self.data.dataset} is a "
                               "2-D dataset: drop --diffaugment")
        if self.dropout.d_feedback_dropout > 0 and self.model.discriminators < 2:
            raise InvalidValue("--d-feedback-dropout drops the feedback of one of several "
                               "discriminators: add --discriminators K (K ≥ 2)")

    def resolved(self) -> GanConfig:
        """The loss- and data-dependent defaults filled in (returns a new config)."""
        wgan, toy = self.model.loss == "wgan-gp", self.toy
        m, t = self.model, self.train

        def pick(value: object, image: object, point: object) -> object:
            return value if value is not None else (point if toy else image)

        return self.updated({
            "model.n_critic": m.n_critic if m.n_critic is not None else (5 if wgan else 1),
            "model.width": pick(m.width, 32, 128),
            "model.z_dim": pick(m.z_dim, 64, 2),
            "train.epochs": pick(t.epochs, 2, 50),
            "train.batch_size": pick(t.batch_size, 64, 256),
            "train.lr": t.lr if t.lr is not None else (1e-4 if wgan else pick(None, 2e-4, 1e-3)),
            "train.betas": t.betas if t.betas is not None
            else ((0.0, 0.9) if wgan else (0.5, 0.999)),
        })

    @property
    def toy(self) -> bool:
        """Whether the data are 2-D points (``ring``, ``grid``) rather than images."""
        return self.data.dataset in TOY_DATASETS
