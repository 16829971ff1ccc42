"""Train a DCGAN with dropout and score it: ``droplab gan``.

A :class:`GanConfig` and :func:`run`. The loop (Radford et al. 2016; losses and
WGAN-GP's ``n_critic`` in :mod:`droplab.models.gan`) reads top to bottom:

- per batch one discriminator step; every ``n_critic``-th batch also a generator step,
  followed by an update of the EMA copy of the generator (decay ``min(ema, (1+t)/(10+t))``
  after ``t`` generator steps, the warm-up of TensorFlow's ``ExponentialMovingAverage``,
  so short runs are not dominated by the initial weights);
- after every epoch: one ``metrics.jsonl`` record (``epoch, step, d_loss, g_loss, d_real,
  d_fake, gp, time_s, images_per_s``; ``d_real``/``d_fake`` are mean D probabilities
  ``sigmoid(D(x))`` for the ``ns`` loss and mean raw critic scores otherwise; ``d_loss``
  excludes the gradient penalty, logged as ``gp``), a fixed-noise sample grid
  ``samples_epoch_<NNN>.png`` (+ ``samples.png``, the latest) from the EMA generator, and
  an atomic ``checkpoint.pt`` holding nets, optimisers, EMA and every RNG state, so that
  ``--resume`` continues exactly as an uninterrupted run with the same seed would;
- a NaN/inf loss, or one whose magnitude exceeds ``max_loss``, stops the run with a
  one-line :class:`TrainingDiverged`; the last good (end-of-epoch) checkpoint is kept.

At the end the EMA generator draws ``eval_samples`` images that are scored against as
many training images with :func:`droplab.evaluate.gan.gan_scores` (FID, KID, IS,
precision/recall, mode coverage), using a droplab classifier run
(``feature_extractor``) or, when none is given, a small classifier trained here on the
same dataset into ``<out>/classifier/``.
"""

from __future__ import annotations

import copy
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.utils import save_image

from droplab.config import Config, flatten, option, section
from droplab.data import Loader, load_dataset
from droplab.engine.classifier import ClassifyConfig, train_classifier
from droplab.engine.config import DataConfig, RunConfig
from droplab.engine.resume import finished_summary, open_run, resume_point
from droplab.engine.state import Progress, capture_rng, check_finite, restore_rng
from droplab.errors import InvalidValue
from droplab.evaluate.gan import ClassifierFeatures, InceptionFeatures, gan_scores
from droplab.layers import KINDS, concrete_regularization
from droplab.models import gan as nets
from droplab.runs import RunDir, atomic_write_bytes
from droplab.runtime import progress, resolve_device, seed_everything

TASK = "gan"


@dataclass
class GanModelConfig(Config):
    """The two networks and the adversarial loss (Radford et al. 2016; Gulrajani et al. 2017;
    Miyato et al. 2018)."""

    model: str = option("dcgan", choices=nets.GAN_MODELS, what="GAN model", help="dcgan")
    width: int = option(32, ge=1, help="base channel width")
    z_dim: int = option(64, ge=1, help="latent size")
    loss: str = option("ns", choices=nets.LOSSES, what="GAN loss",
                       help="ns (non-saturating), hinge or wgan-gp")
    n_critic: int | None = option(None, ge=1, help="discriminator steps per generator step "
                                  "(default 5 for wgan-gp, else 1)")
    gp_weight: float = option(10.0, ge=0, metavar="λ", help="WGAN-GP penalty weight")
    spectral_norm: bool = option(False, help="spectral-normalise the discriminator "
                                 "(Miyato et al. 2018)")


@dataclass
class GanDropoutConfig(Config):
    """Dropout in the discriminator and pix2pix noise dropout in the generator."""

    d_dropout: float = option(0.0, rate=True, metavar="P",
                              help="discriminator dropout rate (drop probability)")
    d_dropout_kind: str = option("dropout", choices=tuple(KINDS), what="dropout kind",
                                 metavar="KIND", help=", ".join(KINDS))
    d_dropout_where: str = option("hidden", choices=nets.WHERE,
                                  what="discriminator dropout placement",
                                  help="input, hidden (after every discriminator block) or all")
    g_dropout: float = option(0.0, rate=True, metavar="P",
                              help="pix2pix noise dropout in the generator (Isola et al. 2017)")
    g_dropout_at_sampling: bool = option(False, help="keep the generator's noise dropout on "
                                         "when sampling")


@dataclass
class GanTrainConfig(Config):
    """Adam on both nets, the EMA generator and the divergence guard. ``--epochs`` may grow
    on ``--resume`` (there is no LR schedule to stretch)."""

    epochs: int = option(2, ge=1, runtime=True, help="training epochs")
    batch_size: int = option(64, ge=2, help="batch size")
    lr: float | None = option(None, gt=0, help="Adam learning rate (default 1e-4 for "
                              "wgan-gp, else 2e-4)")
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
                               help="generated (and real) images scored at the end "
                               "(0 skips; else at least 10)")
    feature_extractor: str | None = option(None, runtime=True, metavar="RUN",
                                           help="a `droplab train` run whose features and "
                                           "softmax score the samples (default: train one on "
                                           "the fly into OUT/classifier)")
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
    """Everything a ``droplab gan`` run needs (written to ``config.json``).

    ``n_critic``, ``lr`` and ``betas`` left at ``None`` take the loss's usual values
    (:meth:`resolved`): WGAN-GP 5, 1e-4, (0.0, 0.9) (Gulrajani et al. 2017); ns/hinge 1,
    2e-4, (0.5, 0.999) (Radford et al. 2016). ``image_size`` ``None`` keeps the dataset's
    own size (digits: 8 px); ``limit`` is training images per class.
    """

    data: DataConfig = section(DataConfig, title="data")
    model: GanModelConfig = section(GanModelConfig, title="model and loss")
    dropout: GanDropoutConfig = section(GanDropoutConfig, title="dropout")
    train: GanTrainConfig = section(GanTrainConfig, title="training")
    eval: GanEvalConfig = section(GanEvalConfig, title="evaluation")
    run: RunConfig = section(RunConfig, title="run")

    def resolved(self) -> GanConfig:
        """The loss-dependent defaults filled in (returns a new config)."""
        wgan = self.model.loss == "wgan-gp"
        t = self.train
        return self.updated({
            "model.n_critic": self.model.n_critic if self.model.n_critic is not None
            else (5 if wgan else 1),
            "train.lr": t.lr if t.lr is not None else (1e-4 if wgan else 2e-4),
            "train.betas": t.betas if t.betas is not None
            else ((0.0, 0.9) if wgan else (0.5, 0.999)),
        })


# -- building blocks ---------------------------------------------------------------------------


def build_nets(cfg: GanConfig, shape: tuple[int, int, int]) -> tuple[nets.Generator, nets.Discriminator]:
    """Generator and discriminator for images of ``shape`` (:func:`nets.build_gan`)."""
    return nets.build_gan(shape, **nets.gan_options(flatten(cfg.to_dict())))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema ← decay·ema + (1 − decay)·model`` for parameters; buffers are copied."""
    for e, m in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(m, 1.0 - decay)
    for e, m in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(m)


@torch.no_grad()
def sample(
    g: nets.Generator, n: int, *, seed: int, device: torch.device, batch_size: int = 256
) -> torch.Tensor:
    """``n`` images in [−1, 1] (CPU) from ``g`` in eval mode, reproducible from ``seed``.

    The caller's RNG state is left untouched (noise dropout at sampling draws from a
    forked, seeded global RNG).
    """
    was_training = g.training
    g.eval()
    zgen = torch.Generator().manual_seed(seed)
    out = []
    devices = ([device.index if device.index is not None else torch.cuda.current_device()]
               if device.type == "cuda" else [])
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for i in range(0, n, batch_size):
            z = torch.randn(min(batch_size, n - i), g.z_dim, generator=zgen).to(device)
            out.append(g(z).cpu())
    g.train(was_training)
    return torch.cat(out) if out else torch.empty(0, *g.out_shape)


def save_grid(images: torch.Tensor, paths: list[Path]) -> None:
    """Write a PNG grid of images in [−1, 1] to each path, atomically."""
    buf = io.BytesIO()
    nrow = max(1, int(math.sqrt(images.shape[0])))
    save_image(images, buf, format="png", nrow=nrow, normalize=True, value_range=(-1, 1), padding=1)
    for p in paths:
        atomic_write_bytes(p, buf.getvalue())


def _train_classifier(cfg: GanConfig, run: RunDir, device: torch.device) -> ClassifierFeatures:
    """Train a small classifier on the GAN's dataset into ``<out>/classifier`` (the library's
    ``droplab train`` recipe; reused when it is already there, e.g. on ``--resume``) and
    return its feature extractor."""
    out = run / "classifier"
    if not (out / "summary.json").exists():
        d = cfg.data
        ccfg = ClassifyConfig.build(
            dataset=d.dataset, data_root=d.data_root, classes=d.classes, limit=d.limit,
            epochs=cfg.eval.classifier_epochs, seed=cfg.run.seed, device=cfg.run.device,
            out=str(out),
        )
        train_classifier(ccfg, resume=(out / "config.json").exists())
    return ClassifierFeatures.from_run(out, device)


# -- the loop ----------------------------------------------------------------------------------


class GanTrainer:
    """The two nets, their Adam optimisers, the EMA generator and the noise generator, with
    the engine's :class:`~droplab.engine.Progress` — everything a GAN checkpoint holds."""

    def __init__(self, cfg: GanConfig, shape: tuple[int, int, int], device: torch.device,
                 run: RunDir, n_train: int) -> None:
        self.cfg, self.shape, self.device, self.run, self.n_train = cfg, shape, device, run, n_train
        t = cfg.train
        self.g, self.d = build_nets(cfg, shape)
        self.g_ema = copy.deepcopy(self.g).requires_grad_(False)
        self.g, self.d, self.g_ema = self.g.to(device), self.d.to(device), self.g_ema.to(device)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=t.lr, betas=t.betas)  # type: ignore[arg-type]
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=t.lr, betas=t.betas)  # type: ignore[arg-type]
        self.zgen = torch.Generator().manual_seed(cfg.run.seed + 1)
        self.progress, self.g_steps = Progress(), 0
        self.concrete = cfg.dropout.d_dropout > 0 and cfg.dropout.d_dropout_kind == "concrete"

    @property
    def sampler(self) -> nets.Generator:
        """The generator samples are drawn from (the EMA copy unless ``--ema 0``)."""
        return self.g_ema if self.cfg.train.ema > 0 else self.g

    def state_dict(self) -> dict[str, Any]:
        return {**self.progress.state_dict(), "g_steps": self.g_steps,
                "g": self.g.state_dict(), "d": self.d.state_dict(),
                "g_ema": self.g_ema.state_dict(), "opt_g": self.opt_g.state_dict(),
                "opt_d": self.opt_d.state_dict(), "zgen": self.zgen.get_state(),
                "rng": capture_rng(self.device), "config": flatten(self.cfg.to_dict()),
                "shape": self.shape}

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        for name in ("g", "d", "g_ema", "opt_g", "opt_d"):
            getattr(self, name).load_state_dict(ckpt[name])
        self.zgen.set_state(ckpt["zgen"])
        self.progress.load_state_dict(ckpt)
        self.g_steps = int(ckpt["g_steps"])
        restore_rng(ckpt["rng"])

    def _guard(self, name: str, loss: torch.Tensor, epoch: int) -> None:
        check_finite(name, float(loss.detach()), epoch=epoch, step=self.progress.step + 1,
                     run=self.run, limit=self.cfg.train.max_loss,
                     advice="lower --lr, try --loss hinge or --spectral-norm")

    def train_epoch(self, loader: Loader, epoch: int) -> dict[str, Any]:
        """One epoch: a discriminator step per batch, a generator step (+ EMA update) every
        ``n_critic``-th; returns the epoch's metrics record."""
        m, t, device = self.cfg.model, self.cfg.train, self.device
        g, d = self.g.train(), self.d.train()
        loader.set_epoch(epoch)
        sums = dict.fromkeys(("d_loss", "g_loss", "d_real", "d_fake", "gp"), 0.0)
        n_d = n_g = 0
        t0 = time.perf_counter()
        for real, _ in progress(loader, desc=f"gan epoch {epoch}/{t.epochs}", total=len(loader)):
            g_step = (self.progress.step + 1) % m.n_critic == 0  # type: ignore[operator]
            z = torch.randn(real.shape[0], m.z_dim, generator=self.zgen).to(device)
            with torch.set_grad_enabled(g_step):
                fake = g(z)
            # discriminator / critic step
            d_real, d_fake = d(real), d(fake.detach())
            d_loss = nets.discriminator_loss(m.loss, d_real, d_fake)
            gp = (nets.gradient_penalty(d, real, fake, generator=self.zgen)
                  if m.loss == "wgan-gp" else torch.zeros((), device=device))
            total = d_loss + m.gp_weight * gp
            if self.concrete:
                total = total + concrete_regularization(d) / self.n_train
            self._guard("d_loss", total, epoch)
            self.opt_d.zero_grad(set_to_none=True)
            total.backward()
            self.opt_d.step()
            squash = torch.sigmoid if m.loss == "ns" else (lambda v: v)
            sums["d_real"] += float(squash(d_real.detach()).mean())
            sums["d_fake"] += float(squash(d_fake.detach()).mean())
            sums["d_loss"] += float(d_loss.detach())
            sums["gp"] += float(gp.detach())
            n_d += 1
            if g_step:  # generator step, then the EMA copy with TF's warm-up
                g_loss = nets.generator_loss(m.loss, d(fake))
                self._guard("g_loss", g_loss, epoch)
                self.opt_g.zero_grad(set_to_none=True)
                g_loss.backward()
                self.opt_g.step()
                self.g_steps += 1
                ema_update(self.g_ema, g, min(t.ema, (1 + self.g_steps) / (10 + self.g_steps)))
                sums["g_loss"] += float(g_loss.detach())
                n_g += 1
            self.progress.step += 1
        dt = time.perf_counter() - t0
        self.progress.epoch, self.progress.time_s = epoch, self.progress.time_s + dt
        return {"epoch": epoch, "step": self.progress.step,
                **{k: v / max(n_g if k == "g_loss" else n_d, 1) for k, v in sums.items()},
                "time_s": dt, "images_per_s": n_d * t.batch_size / max(dt, 1e-9)}


# -- the task ---------------------------------------------------------------------------------


def run(cfg: GanConfig, resume: bool = False) -> dict[str, Any]:
    """Train (or continue) a GAN run and score it; returns the summary (also summary.json).

    ``resume`` follows :mod:`droplab.engine.resume`: the stored config must match except
    runtime options (``--epochs`` may grow); a run that already finished its epochs returns
    its summary and changes no file.
    """
    cfg = cfg.resolved()
    t, ev, seed = cfg.train, cfg.eval, cfg.run.seed
    device = resolve_device(cfg.run.device)
    inception = extractor = None
    if ev.eval_samples:  # fail fast, before any training
        if ev.feature_extractor:
            extractor = ClassifierFeatures.from_run(ev.feature_extractor, device)
        if ev.inception:
            inception = InceptionFeatures(device)
    d_cfg = cfg.data
    bundle = load_dataset(d_cfg.dataset, d_cfg.data_root, d_cfg.classes,
                          image_size=d_cfg.image_size, seed=seed, limit=d_cfg.limit,
                          download=d_cfg.download)
    train = bundle.train
    shape = tuple(train.images.shape[1:])
    if len(train.labels) < t.batch_size:
        raise InvalidValue(
            f"{len(train.labels)} training images is fewer than --batch-size {t.batch_size}; "
            "lower --batch-size or raise --limit"
        )

    seed_everything(seed)
    build_nets(cfg, shape)  # type: ignore[arg-type]  (validates the nets' options early)
    run_dir = open_run(cfg, TASK, resume=resume, finished=("epochs", t.epochs))
    done = finished_summary(run_dir, "epochs", t.epochs) if resume else None
    if done is not None:
        return done
    seed_everything(seed)
    trainer = GanTrainer(cfg, shape, device, run_dir, len(train.labels))  # type: ignore[arg-type]
    loader = Loader(train, batch_size=t.batch_size, shuffle=True, mean=(0.5,) * shape[0],
                    std=(0.5,) * shape[0], device=device, seed=seed, drop_last=True)
    ckpt = resume_point(run_dir, device) if resume else None
    if ckpt is not None:
        trainer.load_state_dict(ckpt)
    for epoch in range(trainer.progress.epoch + 1, t.epochs + 1):
        record = trainer.train_epoch(loader, epoch)
        save_grid(sample(trainer.sampler, ev.grid, seed=seed + 2, device=device),
                  [run_dir / f"samples_epoch_{epoch:03d}.png", run_dir / "samples.png"])
        run_dir.log(record)
        run_dir.save_checkpoint(trainer.state_dict())

    last = (run_dir.read_metrics() or [{}])[-1]
    summary: dict[str, Any] = {
        "task": TASK,
        "dataset": bundle.name,
        "image_shape": list(shape),
        "loss": cfg.model.loss,
        "d_dropout": cfg.dropout.d_dropout,
        "d_dropout_kind": cfg.dropout.d_dropout_kind,
        "d_dropout_where": cfg.dropout.d_dropout_where,
        "g_dropout": cfg.dropout.g_dropout,
        "epochs": t.epochs,
        "seed": seed,
        "d_loss": last.get("d_loss"),
        "g_loss": last.get("g_loss"),
        "train_time_s": trainer.progress.time_s,
    }
    if ev.eval_samples:
        t_eval = time.perf_counter()
        if extractor is None:
            extractor = _train_classifier(cfg, run_dir, device)
        summary.update(evaluate_run(cfg, trainer.sampler, train, extractor, inception))
        summary["eval_time_s"] = time.perf_counter() - t_eval
    summary.update({
        "samples": str(run_dir / "samples.png"),
        "checkpoint": str(run_dir.checkpoint_path),
        "run_dir": str(run_dir.path),
    })
    run_dir.write_summary(summary)
    return summary


def evaluate_run(
    cfg: GanConfig,
    g: nets.Generator,
    train: Any,
    extractor: Any,
    inception: Any = None,
) -> dict[str, Any]:
    """Score ``eval_samples`` generated images against as many training images."""
    n, seed = cfg.eval.eval_samples, cfg.run.seed
    n_real = min(n, len(train.labels))
    pick = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(seed + 3))
    real = train.images[pick[:n_real]]
    fake = sample(g, n, seed=seed + 4, device=next(g.parameters()).device)
    scores = gan_scores(real, fake, extractor, seed=seed, inception=inception)
    source = cfg.eval.feature_extractor or str(Path(cfg.run.out or ".") / "classifier")
    clf_summary = _read_summary(source)
    return {
        **scores,
        "feature_extractor": source,
        "classifier_test_acc": clf_summary.get("test_acc") if clf_summary else None,
        "generator": "ema" if cfg.train.ema > 0 else "last",
    }


def _read_summary(path: str) -> dict[str, Any] | None:
    try:
        return RunDir(path).read_summary()
    except (OSError, ValueError):
        return None


__all__ = [
    "TASK",
    "GanConfig",
    "GanTrainer",
    "build_nets",
    "ema_update",
    "run",
    "sample",
    "save_grid",
]
