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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from droplab.errors import InvalidValue, ResumeError, UserError, check_rate, unknown_name
from droplab.models import gan as nets
from droplab.runs import RunDir, atomic_write_bytes
from droplab.runtime import progress, resolve_device, seed_everything

#: Config fields that may change when a run is resumed (they do not affect training).
RESUMABLE_CHANGES = frozenset(
    {"epochs", "out", "device", "eval_samples", "feature_extractor", "inception",
     "classifier_epochs"}
)


class TrainingDiverged(UserError):
    """A GAN loss became NaN/inf or exploded; the last good checkpoint is kept."""


@dataclass
class GanConfig:
    """Everything a ``droplab gan`` run needs (written to ``config.json``).

    ``n_critic``, ``lr`` and ``betas`` left at ``None`` take the loss's usual values:
    WGAN-GP 5, 1e-4, (0.0, 0.9) (Gulrajani et al. 2017); ns/hinge 1, 2e-4, (0.5, 0.999)
    (Radford et al. 2016).
    """

    dataset: str = "digits"
    data_root: str | None = None
    classes: list[str] | None = None
    image_size: int | None = None  # None: the dataset's own size (digits: 8 px)
    limit: int | None = None  # training images per class (quick runs and benchmarks)
    model: str = "dcgan"
    width: int = 32
    z_dim: int = 64
    loss: str = "ns"
    n_critic: int | None = None
    gp_weight: float = 10.0
    spectral_norm: bool = False
    d_dropout: float = 0.0
    d_dropout_kind: str = "dropout"
    d_dropout_where: str = "hidden"
    g_dropout: float = 0.0
    g_dropout_at_sampling: bool = False
    epochs: int = 2
    batch_size: int = 64
    lr: float | None = None
    betas: tuple[float, float] | None = None
    ema: float = 0.999
    eval_samples: int = 1000
    feature_extractor: str | None = None
    classifier_epochs: int = 5
    inception: bool = False
    grid: int = 64
    max_loss: float = 1e4
    seed: int = 0
    device: str = "auto"
    out: str | None = None

    def resolved(self) -> GanConfig:
        """Validate and fill the loss-dependent defaults (returns a new config)."""
        if self.model not in nets.GAN_MODELS:
            raise unknown_name("GAN model", self.model, nets.GAN_MODELS)
        if self.loss not in nets.LOSSES:
            raise unknown_name("GAN loss", self.loss, nets.LOSSES)
        if self.d_dropout_where not in nets.WHERE:
            raise unknown_name("discriminator dropout placement", self.d_dropout_where, nets.WHERE)
        from droplab.layers import KINDS

        if self.d_dropout_kind not in KINDS:
            raise unknown_name("dropout kind", self.d_dropout_kind, KINDS)
        check_rate(self.d_dropout, "--d-dropout")
        check_rate(self.g_dropout, "--g-dropout")
        wgan = self.loss == "wgan-gp"
        cfg = copy.deepcopy(self)
        cfg.n_critic = self.n_critic if self.n_critic is not None else (5 if wgan else 1)
        cfg.lr = self.lr if self.lr is not None else (1e-4 if wgan else 2e-4)
        betas = self.betas if self.betas is not None else ((0.0, 0.9) if wgan else (0.5, 0.999))
        cfg.betas = (float(betas[0]), float(betas[1]))
        for name, value, ok in [
            ("--epochs", cfg.epochs, cfg.epochs >= 1),
            ("--batch-size", cfg.batch_size, cfg.batch_size >= 2),
            ("--n-critic", cfg.n_critic, cfg.n_critic >= 1),
            ("--z-dim", cfg.z_dim, cfg.z_dim >= 1),
            ("--width", cfg.width, cfg.width >= 1),
            ("--lr", cfg.lr, cfg.lr > 0),
            ("--gp-weight", cfg.gp_weight, cfg.gp_weight >= 0),
            ("--eval-samples", cfg.eval_samples, cfg.eval_samples == 0 or cfg.eval_samples >= 10),
            ("--grid", cfg.grid, cfg.grid >= 1),
        ]:
            if not ok:
                raise InvalidValue(f"{name} {value} is out of range; see droplab gan --help")
        if not all(0.0 <= b < 1.0 for b in cfg.betas):
            raise InvalidValue(f"--betas {cfg.betas} must both lie in [0, 1), e.g. 0.5 0.999")
        if not 0.0 <= cfg.ema < 1.0:
            raise InvalidValue(f"--ema {cfg.ema} must lie in [0, 1) (0 disables the EMA generator)")
        return cfg


# -- building blocks ---------------------------------------------------------------------------


def build_nets(cfg: GanConfig, shape: tuple[int, int, int]) -> tuple[nets.Generator, nets.Discriminator]:
    """Generator and discriminator for images of ``shape`` (:func:`nets.build_gan`)."""
    return nets.build_gan(shape, **nets.gan_options(asdict(cfg)))


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
    from torchvision.utils import save_image

    buf = io.BytesIO()
    nrow = max(1, int(math.sqrt(images.shape[0])))
    save_image(images, buf, format="png", nrow=nrow, normalize=True, value_range=(-1, 1), padding=1)
    for p in paths:
        atomic_write_bytes(p, buf.getvalue())


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _check_resume(run: RunDir, cfg: GanConfig) -> None:
    old = run.read_config()
    if old.get("task") != "gan":
        raise ResumeError(f"cannot resume {run.path}: it holds a {old.get('task')!r} run, not a GAN run")
    new = asdict(cfg)
    diff = sorted(
        k for k in new
        if k not in RESUMABLE_CHANGES and k in old
        and _norm(old[k]) != _norm(new[k])
    )
    if diff:
        raise ResumeError(
            f"cannot resume {run.path}: {', '.join(diff)} differ from the stored config.json; "
            "pass the same options (only --epochs, --eval-samples, --feature-extractor, "
            "--device may change)"
        )


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _train_classifier(cfg: GanConfig, run: RunDir, device: torch.device) -> Any:
    """Train a small classifier on the GAN's dataset into ``<out>/classifier`` (reused when
    it is already there, e.g. on ``--resume``) and return its feature extractor."""
    from droplab.evaluate.gan import ClassifierFeatures
    from droplab.tasks import classify

    out = run / "classifier"
    if not (out / "summary.json").exists():
        ccfg = classify.ClassifyConfig(
            dataset=cfg.dataset, data_root=cfg.data_root, classes=cfg.classes,
            limit=cfg.limit, epochs=cfg.classifier_epochs, seed=cfg.seed, device=cfg.device,
            out=str(out),
        )
        classify.run(ccfg, resume=(out / "config.json").exists())
    return ClassifierFeatures.from_run(out, device)


# -- the task ---------------------------------------------------------------------------------


def run(cfg: GanConfig, resume: bool = False) -> dict[str, Any]:
    """Train (or continue) a GAN run and score it; returns the summary (also summary.json)."""
    from droplab.data import Loader, load_dataset

    cfg = cfg.resolved()
    device = resolve_device(cfg.device)
    inception = extractor = None
    if cfg.eval_samples:  # fail fast, before any training
        from droplab.evaluate.gan import ClassifierFeatures, InceptionFeatures

        if cfg.feature_extractor:
            extractor = ClassifierFeatures.from_run(cfg.feature_extractor, device)
        if cfg.inception:
            inception = InceptionFeatures(device)
    bundle = load_dataset(cfg.dataset, cfg.data_root, cfg.classes, image_size=cfg.image_size,
                          seed=cfg.seed, limit=cfg.limit)
    train = bundle.train
    shape = tuple(train.images.shape[1:])
    if len(train.labels) < cfg.batch_size:
        raise InvalidValue(
            f"{len(train.labels)} training images is fewer than --batch-size {cfg.batch_size}; "
            "lower --batch-size or raise --limit"
        )

    seed_everything(cfg.seed)
    g, d = build_nets(cfg, shape)  # type: ignore[arg-type]  (validates the nets' options)
    run_dir = RunDir.create(cfg.out, "gan", resume=resume)
    if resume:
        _check_resume(run_dir, cfg)
    cfg.out = str(run_dir.path)
    run_dir.write_config(cfg, task="gan")
    g_ema = copy.deepcopy(g).requires_grad_(False)
    g, d, g_ema = g.to(device), d.to(device), g_ema.to(device)
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr, betas=cfg.betas)  # type: ignore[arg-type]
    opt_d = torch.optim.Adam(d.parameters(), lr=cfg.lr, betas=cfg.betas)  # type: ignore[arg-type]
    zgen = torch.Generator().manual_seed(cfg.seed + 1)
    loader = Loader(train, batch_size=cfg.batch_size, shuffle=True, mean=(0.5,) * shape[0],
                    std=(0.5,) * shape[0], device=device, seed=cfg.seed, drop_last=True)
    start_epoch, step, g_steps = 0, 0, 0
    ckpt = run_dir.load_checkpoint(map_location=device) if resume else None
    if ckpt is not None:
        g.load_state_dict(ckpt["g"])
        d.load_state_dict(ckpt["d"])
        g_ema.load_state_dict(ckpt["g_ema"])
        opt_g.load_state_dict(ckpt["opt_g"])
        opt_d.load_state_dict(ckpt["opt_d"])
        zgen.set_state(ckpt["zgen"])
        _set_rng_state(ckpt["rng"], device)
        start_epoch, step, g_steps = ckpt["epoch"], ckpt["step"], ckpt["g_steps"]
        run_dir.truncate_metrics(lambda r: r.get("epoch", 0) <= start_epoch)
    elif resume:
        run_dir.truncate_metrics(lambda r: False)
    concrete = cfg.d_dropout > 0 and cfg.d_dropout_kind == "concrete"

    t_start = time.perf_counter()
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        g.train()
        d.train()
        loader.set_epoch(epoch)
        sums = dict.fromkeys(("d_loss", "g_loss", "d_real", "d_fake", "gp"), 0.0)
        n_d = n_g = 0
        t0 = time.perf_counter()
        for real, _ in progress(loader, desc=f"gan epoch {epoch}/{cfg.epochs}", total=len(loader)):
            b = real.shape[0]
            g_step = (step + 1) % cfg.n_critic == 0
            z = torch.randn(b, cfg.z_dim, generator=zgen).to(device)
            if g_step:
                fake = g(z)
            else:
                with torch.no_grad():
                    fake = g(z)
            # discriminator / critic step
            d_real, d_fake = d(real), d(fake.detach())
            d_loss = nets.discriminator_loss(cfg.loss, d_real, d_fake)
            gp = (nets.gradient_penalty(d, real, fake, generator=zgen)
                  if cfg.loss == "wgan-gp" else torch.zeros((), device=device))
            total = d_loss + cfg.gp_weight * gp
            if concrete:
                from droplab.layers import concrete_regularization

                total = total + concrete_regularization(d) / len(train.labels)
            _guard("d_loss", float(total.detach()), cfg, epoch, step, run_dir)
            opt_d.zero_grad(set_to_none=True)
            total.backward()
            opt_d.step()
            if cfg.loss == "ns":
                sums["d_real"] += float(torch.sigmoid(d_real.detach()).mean())
                sums["d_fake"] += float(torch.sigmoid(d_fake.detach()).mean())
            else:
                sums["d_real"] += float(d_real.detach().mean())
                sums["d_fake"] += float(d_fake.detach().mean())
            sums["d_loss"] += float(d_loss.detach())
            sums["gp"] += float(gp.detach())
            n_d += 1
            # generator step
            if g_step:
                g_loss = nets.generator_loss(cfg.loss, d(fake))
                _guard("g_loss", float(g_loss.detach()), cfg, epoch, step, run_dir)
                opt_g.zero_grad(set_to_none=True)
                g_loss.backward()
                opt_g.step()
                g_steps += 1
                ema_update(g_ema, g, min(cfg.ema, (1 + g_steps) / (10 + g_steps)))
                sums["g_loss"] += float(g_loss.detach())
                n_g += 1
            step += 1
        dt = time.perf_counter() - t0
        record = {
            "epoch": epoch,
            "step": step,
            **{k: v / max(n_g if k == "g_loss" else n_d, 1) for k, v in sums.items()},
            "time_s": dt,
            "images_per_s": n_d * cfg.batch_size / max(dt, 1e-9),
        }
        grid_g = g_ema if cfg.ema > 0 else g
        save_grid(sample(grid_g, cfg.grid, seed=cfg.seed + 2, device=device),
                  [run_dir / f"samples_epoch_{epoch:03d}.png", run_dir / "samples.png"])
        run_dir.log(record)
        run_dir.save_checkpoint({
            "epoch": epoch, "step": step, "g_steps": g_steps,
            "g": g.state_dict(), "d": d.state_dict(), "g_ema": g_ema.state_dict(),
            "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
            "zgen": zgen.get_state(), "rng": _rng_state(device),
            "config": asdict(cfg), "shape": shape,
        })
    train_time = time.perf_counter() - t_start

    records = run_dir.read_metrics()
    last = records[-1] if records else {}
    summary: dict[str, Any] = {
        "task": "gan",
        "dataset": bundle.name,
        "image_shape": list(shape),
        "loss": cfg.loss,
        "d_dropout": cfg.d_dropout,
        "d_dropout_kind": cfg.d_dropout_kind,
        "d_dropout_where": cfg.d_dropout_where,
        "g_dropout": cfg.g_dropout,
        "epochs": cfg.epochs,
        "seed": cfg.seed,
        "d_loss": last.get("d_loss"),
        "g_loss": last.get("g_loss"),
        "train_time_s": train_time,
    }
    if cfg.eval_samples:
        t_eval = time.perf_counter()
        if extractor is None:
            extractor = _train_classifier(cfg, run_dir, device)
        summary.update(evaluate_run(cfg, g_ema if cfg.ema > 0 else g, train, extractor, inception))
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
    from droplab.evaluate.gan import gan_scores

    n_real = min(cfg.eval_samples, len(train.labels))
    pick = torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(cfg.seed + 3))
    real = train.images[pick[:n_real]]
    fake = sample(g, cfg.eval_samples, seed=cfg.seed + 4, device=next(g.parameters()).device)
    scores = gan_scores(real, fake, extractor, seed=cfg.seed, inception=inception)
    source = cfg.feature_extractor or str(Path(cfg.out or ".") / "classifier")
    clf_summary = _read_summary(source)
    return {
        **scores,
        "feature_extractor": source,
        "classifier_test_acc": clf_summary.get("test_acc") if clf_summary else None,
        "generator": "ema" if cfg.ema > 0 else "last",
    }


def _read_summary(path: str) -> dict[str, Any] | None:
    try:
        return RunDir(path).read_summary()
    except (OSError, ValueError):
        return None


def _guard(name: str, value: float, cfg: GanConfig, epoch: int, step: int, run_dir: RunDir) -> None:
    """Stop with a one-line :class:`TrainingDiverged` on a NaN/inf or exploding loss."""
    if nets.is_bad_loss(value, cfg.max_loss):
        kept = (
            f"the last good checkpoint (epoch {epoch - 1}) is kept in {run_dir.path}"
            if epoch - 1 > 0 and run_dir.checkpoint_path.exists()
            else "no checkpoint had been written yet"
        )
        what = "is not finite" if not math.isfinite(value) else f"exceeds --max-loss {cfg.max_loss:g}"
        raise TrainingDiverged(
            f"GAN training diverged at epoch {epoch}, step {step + 1}: {name}={value:.4g} {what}; "
            f"{kept}; lower --lr, try --loss hinge or --spectral-norm"
        )


__all__ = [
    "GanConfig",
    "TrainingDiverged",
    "build_nets",
    "ema_update",
    "run",
    "sample",
    "save_grid",
]
