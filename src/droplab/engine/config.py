"""The option sections every training task shares: what data, how to train, where to run.

Declared once with :mod:`droplab.config`; the classify, finetune, sweep and GAN configs nest
them (with their own defaults), so ``--epochs`` or ``--classes`` is written in one place.

- :class:`DataConfig`: which dataset and which part of it (:func:`droplab.data.load_dataset`);
  :class:`ClassifyDataConfig` adds the validation split and augmentation of classifier tasks.
- :class:`TrainConfig`: the options of the training loop (:func:`droplab.engine.fit`).
- :class:`RunConfig`: seed, device and run folder (the runtime part of every command).

References: Srivastava et al. 2014 (dropout and max-norm), Loshchilov & Hutter 2017/2019
(SGDR cosine schedule, AdamW), Smith & Topin 2019 (one-cycle).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from droplab.config import Config, option
from droplab.data.loader import FLIP_MODES, PAD_MODES
from droplab.errors import InvalidValue
from droplab.models.tta import TTA_MODES
from droplab.runtime import DEVICES

OPTIMIZERS = ("sgd", "adamw")
LR_SCHEDULES = ("cosine", "onecycle", "triangle", "constant")
AMP_MODES = ("auto", "off", "bf16", "fp16")

#: ``--flip`` choices: the Loader's flip modes, none, or auto (random for colour images)
FLIPS = ("auto", *FLIP_MODES, "none")

#: default learning rate and weight decay per optimiser (used when the config says None)
DEFAULT_LR = {"sgd": 0.05, "adamw": 1e-3}
DEFAULT_WEIGHT_DECAY = {"sgd": 5e-4, "adamw": 0.01}

#: largest ``--seed``: NumPy and scikit-learn take seeds below 2**32 (sweeps add offsets)
MAX_SEED = 2**31 - 1
#: largest ``--image-size`` (a whole dataset is resized in memory)
MAX_IMAGE_SIZE = 4096
#: most classes a ``--classes`` range may name
MAX_CLASS_RANGE = 100_000


def parse_classes(text: str | None) -> list[str] | None:
    """``0-4`` or ``0,2,5`` or ``cat,dog`` → list of class tokens (indices kept as str)."""
    if text is None or text == "":
        return None
    out: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part and all(s.strip().isdigit() for s in part.split("-", 1)):
            a, b = (int(s) for s in part.split("-", 1))
            if b < a:
                raise InvalidValue(f"--classes range {part!r} is reversed; write {b}-{a}")
            if b - a >= MAX_CLASS_RANGE:
                raise InvalidValue(f"--classes range {part!r} names more classes than any "
                                   "dataset has; name the classes of your dataset (e.g. 0-9)")
            out.extend(str(i) for i in range(a, b + 1))
        elif part:
            out.append(part)
    return out


def parse_device(text: str) -> str:
    """``auto|cpu|mps|cuda[:N]`` (checked against the machine later, when the run starts)."""
    kind = text.split(":", 1)[0]
    if kind not in DEVICES:
        raise InvalidValue(f"--device must be one of {', '.join(DEVICES)} (cuda:N for one GPU), "
                           f"got {text!r}")
    return text


@dataclass
class DataConfig(Config):
    """Which images: a named dataset (:func:`droplab.data.load_dataset`), a class subset,
    a size, and at most ``limit`` images per class (quick runs)."""

    dataset: str = option("digits", metavar="NAME",
                          help="digits, mnist, fashion-mnist, cifar10 or imagefolder:PATH")
    data_root: str | None = option(None, metavar="DIR",
                                   help="dataset folder (default $DROPLAB_DATA or ~/.cache/droplab/data)")
    classes: list[str] | None = option(None, parse=parse_classes, metavar="LIST",
                                       help="subset of classes: 0-4, 0,2,5 or cat,dog")
    image_size: int | None = option(None, ge=1, le=MAX_IMAGE_SIZE, metavar="SIZE",
                                    help="resize images to SIZE×SIZE")
    limit: int | None = option(None, ge=1, metavar="N",
                               help="at most N images per class (quick runs)")
    download: bool = option(True, runtime=True,
                            help="download torchvision datasets that are not on disk")


@dataclass
class ClassifyDataConfig(DataConfig):
    """:class:`DataConfig` plus the validation split and augmentation of classifier tasks."""

    val_fraction: float = option(0.1, ge=0, lt=1, metavar="F",
                                 help="stratified share of the training part held out for "
                                 "validation; 0 holds out none")
    augment: bool | None = option(None, help="random crops with padding (+ horizontal flips "
                                  "for colour images); default: on for colour images only")
    crop_pad: int | None = option(None, ge=0, metavar="PX",
                                  help="padding of the random crops (default 4 px for images "
                                  "of 32 px and more, 2 for 16 px, else 1)")
    pad_mode: str = option("zeros", choices=PAD_MODES, what="pad mode",
                           help="crop padding: zeros, or reflect (a random translation, as "
                           "in airbench)")
    flip: str = option("auto", choices=FLIPS, what="flip mode",
                       help="horizontal flips when augmenting: random, alternate (each image "
                       "flipped the other way every other epoch, Jordan 2024), none; auto: "
                       "random for colour images, none for greyscale")
    tta: str = option("none", choices=TTA_MODES, what="test-time augmentation",
                      help="test-time augmentation of the test figures: none, flip (2 views) "
                      "or flip-translate (6 views, airbench)")

    def resolved_augment(self, channels: int) -> bool:
        """Augment colour photos by default, never greyscale digits."""
        return channels == 3 if self.augment is None else self.augment

    def loader_augmentation(self, channels: int) -> dict[str, Any]:
        """The :class:`droplab.data.Loader` keywords of these augmentation options."""
        flip = {"auto": None, "none": False}.get(self.flip, True)
        mode = "alternate" if self.flip == "alternate" else "random"
        return {"augment": self.resolved_augment(channels), "pad": self.crop_pad,
                "pad_mode": self.pad_mode, "flip": flip, "flip_mode": mode}


@dataclass
class TrainConfig(Config):
    """Options of the training loop (:func:`droplab.engine.fit`); each maps to one behaviour.

    ``lr``/``weight_decay`` of ``None`` take the optimiser's default (:data:`DEFAULT_LR`,
    :data:`DEFAULT_WEIGHT_DECAY`); weight decay is applied to weights only, not to biases
    or normalisation parameters. ``amp="auto"`` is bf16 autocast on CUDA GPUs that support
    it, else fp16 with a GradScaler, and off on the CPU. ``lookahead`` (K steps) adds the
    :class:`~droplab.engine.averaging.Lookahead` callback. ``dropout_schedule`` is a
    :func:`droplab.schedules.make_schedule` spec stepped once per batch; its target rate is
    ``dropout_p`` (default: the largest rate found in the model). ``max_norm`` caps every
    unit's incoming weight norm after each step (Srivastava et al. 2014). ``checkpoint_every``
    additionally checkpoints every N optimiser steps inside an epoch (0: epoch ends only).
    ``batch_size`` is the global batch; the caller builds its loaders with it (divided by
    the world size under data parallelism).
    """

    epochs: int = option(10, ge=1, help="training epochs")
    batch_size: int = option(64, ge=1, help="global batch size")
    optimizer: str = option("sgd", choices=OPTIMIZERS, help="sgd (Nesterov momentum) or adamw")
    lr: float | None = option(None, gt=0, help="learning rate (default 0.05 sgd, 0.001 adamw)")
    momentum: float = option(0.9, ge=0, lt=1, help="SGD momentum")
    weight_decay: float | None = option(None, ge=0,
                                        help="weight decay (default 5e-4 sgd, 0.01 adamw)")
    lr_schedule: str = option("cosine", choices=LR_SCHEDULES, what="lr schedule",
                              help="per-batch learning-rate schedule: cosine, onecycle, "
                              "triangle (airbench: 0.2 → 1 → 0.07 × lr, peak at 23 %% of the "
                              "steps or after --warmup-epochs) or constant")
    warmup_epochs: float = option(0.0, ge=0, metavar="E", help="linear learning-rate warm-up")
    label_smoothing: float = option(0.0, ge=0, lt=1, metavar="S", help="label smoothing")
    grad_clip: float | None = option(None, gt=0, metavar="G", help="clip the gradient norm at G")
    lookahead: int = option(0, ge=0, metavar="K",
                            help="every K steps pull the weights onto their moving average "
                            "(Lookahead/EMA as in airbench: K=5); 0 = off")
    lookahead_decay: float = option(0.95, gt=0, lt=1, metavar="B",
                                    help="Lookahead average decay per step (reached at the end)")
    max_norm: float | None = option(None, gt=0, metavar="C",
                                    help="cap each unit's incoming weight norm at C (3–4 in "
                                    "Srivastava et al. 2014)")
    dropout_schedule: str | None = option(None, metavar="SPEC",
                                          help="dropout-rate schedule, stepped per batch: "
                                          "constant, linear[:F], cosine[:F], curriculum[:R], "
                                          "early[:F], late[:F]")
    dropout_p: float | None = option(None, rate=True, cli=False,
                                     help="target rate of the dropout schedule")
    amp: str = option("auto", choices=AMP_MODES, what="amp mode",
                      help="mixed precision: auto (bf16/fp16 on CUDA), off, bf16, fp16")
    tensorboard: bool = option(False, runtime=True,
                               help="log scalars to RUN/tensorboard (needs tensorboard)")
    channels_last: bool = option(False, help="channels_last memory format (faster convnets)")
    checkpoint_every: int = option(0, ge=0, runtime=True, metavar="STEPS",
                                   help="also checkpoint every STEPS batches inside an epoch")

    @property
    def resolved_lr(self) -> float:
        return float(self.lr if self.lr is not None else DEFAULT_LR[self.optimizer])

    @property
    def resolved_weight_decay(self) -> float:
        wd = self.weight_decay
        return float(wd if wd is not None else DEFAULT_WEIGHT_DECAY[self.optimizer])


@dataclass
class RunConfig(Config):
    """Seed, device and run folder: the part every command shares."""

    seed: int = option(0, ge=0, le=MAX_SEED, help="random seed")
    device: str = option("auto", parse=parse_device, runtime=True, metavar="DEVICE",
                         help="auto, cpu, cuda[:N] or mps (auto: CUDA when present)")
    out: str | None = option(None, runtime=True, metavar="DIR",
                             help="run folder (default runs/<task>-<timestamp>)")


__all__ = [
    "AMP_MODES",
    "DEFAULT_LR",
    "DEFAULT_WEIGHT_DECAY",
    "LR_SCHEDULES",
    "OPTIMIZERS",
    "ClassifyDataConfig",
    "DataConfig",
    "RunConfig",
    "TrainConfig",
    "parse_classes",
    "parse_device",
]
