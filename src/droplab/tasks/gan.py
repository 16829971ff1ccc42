"""Train a GAN with dropout and score it: ``droplab gan``.

The options, the data and the training loop are the library's GAN recipe
(:mod:`droplab.engine.gan`: DCGAN or MLP nets, D dropout, DiffAugment, instance noise,
minibatch std, spectral norm, WGAN-GP, several discriminators with feedback dropout);
this task adds the run folder and the scores:

- after every epoch: one ``metrics.jsonl`` record (``epoch, step, g_steps, d_loss,
  g_loss, d_real, d_fake, gp, noise_std, time_s, images_per_s``; ``d_real``/``d_fake``
  are mean D probabilities ``sigmoid(D(x))`` for the ``ns`` loss and mean raw critic
  scores otherwise, averaged over the discriminators; ``d_loss`` excludes the gradient
  penalty, logged as ``gp``), a fixed-noise sample grid ``samples_epoch_<NNN>.png`` (+
  ``samples.png``, the latest; a scatter plot over the mixture's means for the 2-D
  datasets) from the EMA generator, and an atomic ``checkpoint.pt``, so that ``--resume``
  continues exactly as an uninterrupted run with the same seed would; a NaN/inf or
  exploding loss stops the run with one line and keeps the last good checkpoint;
- at the end the EMA generator draws ``eval_samples`` samples scored against as many
  held-out real ones (``--eval-real test``, the default; ``train`` for the training
  images) with :func:`droplab.evaluate.gan.gan_scores` — FID, KID, IS, precision/recall,
  density/coverage, modes — on the features of a droplab classifier run
  (``feature_extractor``; Stacked MNIST: an MNIST classifier applied per channel,
  :class:`~droplab.evaluate.gan_modes.StackedFeatures`), or, when none is given, of a
  classifier trained here into ``<out>/classifier/`` (on MNIST for Stacked MNIST). The
  2-D mixtures are scored by :func:`droplab.evaluate.gan_modes.point_scores` (modes hit,
  high-quality samples within 3σ, KL, Fréchet distance and density/coverage of the
  points).
"""

from __future__ import annotations

import io
import math
import time
from pathlib import Path
from typing import Any

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torchvision.utils import save_image

from droplab.data.toy2d import Mixture
from droplab.engine.gan import (
    GanConfig,
    GanTrainer,
    build_nets,
    ema_update,
    load_gan_data,
    sample,
)
from droplab.engine.resume import finished_summary, open_run, resume_point
from droplab.evaluate.gan import ClassifierFeatures, InceptionFeatures
from droplab.evaluate.gan_run import (
    STACKED_MODE_SAMPLES,
    evaluate_images,
    evaluate_points,
    feature_extractor,
    train_feature_classifier,
)
from droplab.runs import RunDir, atomic_write_bytes
from droplab.runtime import resolve_device, seed_everything

TASK = "gan"


# -- pictures -------------------------------------------------------------------------------


def save_grid(images: torch.Tensor, paths: list[Path]) -> None:
    """Write a PNG grid of images in [−1, 1] to each path, atomically."""
    buf = io.BytesIO()
    nrow = max(1, int(math.sqrt(images.shape[0])))
    save_image(images, buf, format="png", nrow=nrow, normalize=True, value_range=(-1, 1), padding=1)
    for p in paths:
        atomic_write_bytes(p, buf.getvalue())


def save_scatter(points: torch.Tensor, mix: Mixture, paths: list[Path]) -> None:
    """Write a scatter plot of 2-D samples over the mixture's means (and 3σ circles)."""
    fig = Figure(figsize=(4, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    pts = points.double().numpy()
    ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5, color="tab:blue", label="samples")
    means = mix.means.numpy()
    ax.scatter(means[:, 0], means[:, 1], s=12, marker="x", color="tab:red", label="modes")
    lim = float(mix.means.abs().max()) * 1.5 + 6 * mix.std
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_title(f"{mix.name}: {points.shape[0]} samples")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    for p in paths:
        atomic_write_bytes(p, buf.getvalue())


# -- scoring (the recipe is droplab.evaluate.gan_run's; droplab sweep --task gan uses it too)


def _train_classifier(cfg: GanConfig, run: RunDir, device: torch.device) -> ClassifierFeatures:
    """The on-the-fly feature classifier of this run, in ``<out>/classifier``."""
    return train_feature_classifier(cfg, run / "classifier", device)


def _read_summary(path: str) -> dict[str, Any] | None:
    try:
        return RunDir(path).read_summary()
    except (OSError, ValueError):
        return None


# -- the task -------------------------------------------------------------------------------


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
    if not cfg.toy:  # fail fast, before any training (a given extractor even when unused)
        if ev.feature_extractor:
            extractor = feature_extractor(cfg, ClassifierFeatures.from_run(ev.feature_extractor,
                                                                           device))
        if ev.inception and ev.eval_samples:
            inception = InceptionFeatures(device)
    data = load_gan_data(cfg.data, seed)
    data.check_batch_size(t.batch_size)

    seed_everything(seed)
    build_nets(cfg, data.shape)  # validates the nets' options early
    run_dir = open_run(cfg, TASK, resume=resume, finished=("epochs", t.epochs))
    done = finished_summary(run_dir, "epochs", t.epochs) if resume else None
    if done is not None:
        return done
    seed_everything(seed)
    trainer = GanTrainer(cfg, data.shape, device, data.n_train, run_dir)
    loader = data.loader(t.batch_size, seed, device)
    ckpt = resume_point(run_dir, device) if resume else None
    if ckpt is not None:
        trainer.load_state_dict(ckpt)
    for epoch in range(trainer.progress.epoch + 1, t.epochs + 1):
        record = trainer.train_epoch(loader, epoch)
        pictures = [run_dir / f"samples_epoch_{epoch:03d}.png", run_dir / "samples.png"]
        if data.mixture is not None:
            save_scatter(sample(trainer.sampler, 1000, seed=seed + 2, device=device),
                         data.mixture, pictures)
        else:
            save_grid(sample(trainer.sampler, ev.grid, seed=seed + 2, device=device), pictures)
        run_dir.log(record)
        run_dir.save_checkpoint(trainer.state_dict())

    last = (run_dir.read_metrics() or [{}])[-1]
    summary: dict[str, Any] = {
        "task": TASK,
        "dataset": data.name,
        "image_shape": list(data.shape),
        "loss": cfg.model.loss,
        "d_dropout": cfg.dropout.d_dropout,
        "d_dropout_kind": cfg.dropout.d_dropout_kind,
        "d_dropout_where": cfg.dropout.d_dropout_where,
        "g_dropout": cfg.dropout.g_dropout,
        "epochs": t.epochs,
        "g_steps": trainer.g_steps,
        "seed": seed,
        "d_loss": last.get("d_loss"),
        "g_loss": last.get("g_loss"),
        "train_time_s": trainer.progress.time_s,
    }
    if ev.eval_samples:
        t_eval = time.perf_counter()
        if data.mixture is not None:
            summary.update(evaluate_points(cfg, trainer.sampler, data))
        else:
            if extractor is None:
                extractor = feature_extractor(cfg, _train_classifier(cfg, run_dir, device))
            summary.update(evaluate_images(cfg, trainer.sampler, data, extractor, inception))
            source = ev.feature_extractor or str(run_dir / "classifier")
            clf = _read_summary(source)
            summary.update({"feature_extractor": source,
                            "classifier_test_acc": clf.get("test_acc") if clf else None})
        summary["generator"] = "ema" if t.ema > 0 else "last"
        summary["eval_time_s"] = time.perf_counter() - t_eval
    summary.update({
        "samples": str(run_dir / "samples.png"),
        "checkpoint": str(run_dir.checkpoint_path),
        "run_dir": str(run_dir.path),
    })
    run_dir.write_summary(summary)
    return summary


__all__ = [
    "STACKED_MODE_SAMPLES",
    "TASK",
    "GanConfig",
    "GanTrainer",
    "build_nets",
    "ema_update",
    "evaluate_images",
    "evaluate_points",
    "feature_extractor",
    "run",
    "sample",
    "save_grid",
    "save_scatter",
]
