"""Scoring a trained GAN generator the way ``droplab gan`` reports it.

Two commands score generators — ``droplab gan`` (one run) and ``droplab sweep --task gan``
(every fold of every setting) — and no task imports another, so the scoring recipe lives
here, below the tasks:

- :func:`train_feature_classifier`: the small classifier whose features score images when
  no ``--feature-extractor`` is given (the library's ``droplab train`` recipe on the GAN's
  dataset; MNIST for Stacked MNIST), trained into a folder of its own and reused there;
- :func:`feature_extractor`: the extractor that scores a dataset (per channel for Stacked
  MNIST, :class:`~droplab.evaluate.gan_modes.StackedFeatures`);
- :func:`evaluate_images`: FID, KID, IS, precision/recall, density/coverage and modes of
  ``eval_samples`` generated images against as many held-out real ones
  (:func:`droplab.evaluate.gan.gan_scores`);
- :func:`evaluate_points`: modes hit, high-quality share, KL, Fréchet distance and
  density/coverage of 2-D samples (:func:`droplab.evaluate.gan_modes.point_scores`).

The real images are ``data.real(eval_real, eval_samples, seed + 3)`` unless the caller
passes its own (``real``: a sweep keeps one held-out set for all folds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from droplab.engine.classifier import ClassifyConfig, train_classifier
from droplab.engine.gan import GanConfig, GanData, sample
from droplab.evaluate.gan import ClassifierFeatures, InceptionFeatures, gan_scores, mode_coverage
from droplab.evaluate.gan_modes import StackedFeatures, point_scores

__all__ = ["STACKED_MODE_SAMPLES", "Extractor", "classifier_config", "evaluate_images",
           "evaluate_points", "feature_extractor", "train_feature_classifier"]

#: samples classified for the Stacked-MNIST mode count (VEEGAN and PacGAN use 26,000)
STACKED_MODE_SAMPLES = 26_000

Extractor = ClassifierFeatures | StackedFeatures


def classifier_config(cfg: GanConfig, out: Path) -> ClassifyConfig:
    """The ``droplab train`` options of the on-the-fly feature classifier."""
    d, ev = cfg.data, cfg.eval
    dataset = "mnist" if d.dataset == "stacked-mnist" else d.dataset
    model = ev.classifier_model if ev.classifier_model != "auto" else (
        "mlp" if dataset == "digits" else "lenet")
    return ClassifyConfig.build(
        dataset=dataset, data_root=d.data_root, classes=None if dataset != d.dataset else d.classes,
        limit=d.limit, image_size=None if dataset != d.dataset else d.image_size, model=model,
        epochs=ev.classifier_epochs, seed=cfg.run.seed, device=cfg.run.device, out=str(out),
        download=d.download,
    )


def train_feature_classifier(cfg: GanConfig, out: Path, device: torch.device) -> ClassifierFeatures:
    """Train a small classifier on the GAN's dataset (MNIST for Stacked MNIST) into ``out``
    (reused when it is already there, continued when it was interrupted) and return its
    feature extractor."""
    if not (out / "summary.json").exists():
        train_classifier(classifier_config(cfg, out), resume=(out / "config.json").exists())
    return ClassifierFeatures.from_run(out, device)


def feature_extractor(cfg: GanConfig, features: ClassifierFeatures) -> Extractor:
    """The extractor that scores this dataset: per channel for Stacked MNIST."""
    return StackedFeatures(features) if cfg.data.dataset == "stacked-mnist" else features


def evaluate_images(cfg: GanConfig, g: nn.Module, data: GanData, extractor: Extractor,
                    inception: InceptionFeatures | None = None,
                    real: torch.Tensor | None = None) -> dict[str, Any]:
    """Score ``eval_samples`` generated images against as many held-out real ones (or
    ``real``); the mode count uses ``mode_samples`` samples (Stacked MNIST: 26,000, a mode
    counted from one sample, as VEEGAN and PacGAN do; else classes with ≥ 1 % of the
    samples)."""
    ev, seed = cfg.eval, cfg.run.seed
    device = next(g.parameters()).device
    if real is None:
        real = data.real(ev.eval_real, ev.eval_samples, seed + 3)
    fake = sample(g, ev.eval_samples, seed=seed + 4, device=device)
    stacked = isinstance(extractor, StackedFeatures)
    min_count = 1 if stacked else None
    scores = gan_scores(real, fake, extractor, seed=seed, inception=inception,
                        mode_min_count=min_count)
    n_modes = ev.mode_samples or (STACKED_MODE_SAMPLES if stacked else ev.eval_samples)
    if n_modes != ev.eval_samples:
        more = sample(g, n_modes, seed=seed + 6, device=device)
        preds = (extractor.modes(more) if isinstance(extractor, StackedFeatures)
                 else extractor(more)[1].argmax(1))
        scores.update(mode_coverage(preds, extractor.num_classes, min_count=min_count))
    return {**scores, "modes": scores["modes_covered"], "num_modes": extractor.num_classes,
            "mode_samples": n_modes, "mode_rule": "≥ 1 sample" if stacked else "≥ 1 % of samples",
            "eval_real": ev.eval_real}


def evaluate_points(cfg: GanConfig, g: nn.Module, data: GanData,
                    real: torch.Tensor | None = None) -> dict[str, Any]:
    """Score 2-D samples against held-out real points (or ``real``): modes hit,
    high-quality share, KL, Fréchet distance, density/coverage."""
    ev, seed = cfg.eval, cfg.run.seed
    assert data.mixture is not None
    if real is None:
        real = data.real(ev.eval_real, ev.eval_samples, seed + 3)
    n = ev.mode_samples or ev.eval_samples
    fake = sample(g, n, seed=seed + 4, device=next(g.parameters()).device)
    scores = point_scores(real, fake, data.mixture)
    return {**scores, "modes": scores["modes_hit"], "eval_real": ev.eval_real}
