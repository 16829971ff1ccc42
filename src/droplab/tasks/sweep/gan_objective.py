"""The objective of a GAN sweep (``--task gan``): seeds as folds, held-out real images.

A GAN has no labels to cross-validate on, and what varies most between two GANs of one
setting is the seed. So fold ``i`` of a setting trains the ``droplab gan`` recipe
(:mod:`droplab.engine.gan`) on the **whole** training split with the seed
:func:`~droplab.tasks.sweep.objective.fold_seed` ``(seed, i)`` — the same seeds for every
setting (common random numbers: paired differences between rates) — and scores its EMA
generator against held-out real images (:mod:`droplab.evaluate.gan_run`):

- images (``mnist``, ``stacked-mnist``, any image dataset): FID, KID, modes, KL(mode
  histogram ‖ uniform), density/coverage and precision/recall on the features of a
  classifier (``--feature-extractor`` RUN, or one trained into ``OUT/classifier`` before
  the search — MNIST per channel for Stacked MNIST);
- 2-D points (``ring``, ``grid``): the Fréchet distance of the points (``fid``), modes hit,
  KL of the high-quality samples' mode histogram, share of high-quality samples,
  density/coverage. A generator with no high-quality sample at all has no histogram; its
  KL is recorded as ``ln K`` (all mass on one mode, the worst a histogram can score).

The held-out real images are the test split, shuffled once with the study seed and cut in
two halves: every fold of every setting is scored against the same ``eval_samples`` images
of the first half, and the pick's refit (a fresh seed, :func:`fold_seed` ``(seed, −1)``)
against the second half, so the figure reported for the pick was not used to choose it.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from droplab.engine.gan import GanData, GanTrainer, load_gan_data
from droplab.errors import InvalidValue
from droplab.evaluate.gan import ClassifierFeatures
from droplab.evaluate.gan_run import (
    Extractor,
    evaluate_images,
    evaluate_points,
    feature_extractor,
    train_feature_classifier,
)
from droplab.runtime import resolve_device, seed_everything
from droplab.tasks.sweep.config import SweepConfig
from droplab.tasks.sweep.objective import EpochHook, fold_seed

__all__ = ["GanPrepared", "gan_metrics"]


def gan_metrics(scores: dict[str, Any], toy: bool) -> dict[str, float]:
    """The per-fold record of a GAN sweep from :mod:`droplab.evaluate.gan_run`'s scores
    (names of :data:`~droplab.tasks.sweep.config.GAN_METRIC_KEYS`)."""
    out = {k: float(scores[k]) for k in ("fid", "density", "coverage", "precision", "recall")}
    out["modes"] = float(scores["modes"])
    if toy:
        kl = scores["kl_uniform"]
        out["kl"] = float(kl) if kl is not None else math.log(int(scores["num_modes"]))
        out["high_quality"] = float(scores["high_quality"])
    else:
        out["kl"] = float(scores["kl_uniform"])
        out["kid"] = float(scores["kid_mean"])
    return out


class GanPrepared:
    """The data, held-out real halves and device of one worker of a GAN sweep (loaded
    once); the feature extractor is loaded on first use (:meth:`prepare_extractor` makes
    it before the search when the sweep trains its own)."""

    def __init__(self, cfg: SweepConfig) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.run.device)
        self.probe = cfg.probe_gan_config()
        self.toy = self.probe.toy
        self.data: GanData = load_gan_data(self.probe.data, cfg.seed)
        self.data.check_batch_size(int(cfg.train.batch_size))
        pool = self.data.pool("test")
        half = pool.shape[0] // 2
        n = int(cfg.gan.eval.eval_samples)
        if half < 2:
            raise InvalidValue(f"the test split has {pool.shape[0]} samples; a GAN sweep needs "
                               "at least 4 held-out ones (raise --limit)")
        perm = torch.randperm(pool.shape[0], generator=torch.Generator().manual_seed(cfg.seed))
        self.real_cv = pool[perm[:half][:n]]
        self.real_test = pool[perm[half:][:n]]
        self._extractor: Extractor | None = None

    @property
    def n_folds(self) -> int:
        return int(self.cfg.folds)

    # -- the feature extractor -----------------------------------------------------------
    def classifier_dir(self) -> Path:
        """Where the sweep's own feature classifier lives (``OUT/classifier``)."""
        if not self.cfg.run.out:
            raise InvalidValue("a worker joining a GAN sweep on images scores with the "
                               "sweep's classifier: pass the sweep's --out folder, or start "
                               "the sweep with --feature-extractor RUN")
        return Path(self.cfg.run.out) / "classifier"

    def ready(self) -> None:
        """Before the search: the feature classifier (images only)."""
        self.prepare_extractor()

    def prepare_extractor(self) -> None:
        """Load ``--feature-extractor``, or train the sweep's classifier into
        ``OUT/classifier`` (reused there on ``--resume``); nothing for 2-D points."""
        if self.toy or self._extractor is not None:
            return
        ev = self.cfg.gan.eval
        features = (ClassifierFeatures.from_run(ev.feature_extractor, self.device)
                    if ev.feature_extractor
                    else train_feature_classifier(self.probe, self.classifier_dir(), self.device))
        self._extractor = feature_extractor(self.probe, features)

    @property
    def extractor(self) -> Extractor:
        self.prepare_extractor()
        assert self._extractor is not None
        return self._extractor

    # -- one fold ------------------------------------------------------------------------
    def train_and_score(self, params: dict[str, Any], seed: int,
                        real: torch.Tensor) -> dict[str, float]:
        """Train the GAN of setting ``params`` with ``seed`` on the whole training split and
        score its EMA generator against ``real``."""
        t0 = time.perf_counter()
        gcfg = self.cfg.fold_gan_config(params, seed)
        t = gcfg.train
        seed_everything(seed)  # the order of droplab gan's run: nets, then batches
        trainer = GanTrainer(gcfg, self.data.shape, self.device, self.data.n_train)
        loader = self.data.loader(t.batch_size, seed, self.device)
        for epoch in range(1, t.epochs + 1):
            trainer.train_epoch(loader, epoch)
        if self.toy:
            scores = evaluate_points(gcfg, trainer.sampler, self.data, real=real)
        else:
            scores = evaluate_images(gcfg, trainer.sampler, self.data, self.extractor,
                                     real=real)
        return {**gan_metrics(scores, self.toy), "g_steps": float(trainer.g_steps),
                "time_s": time.perf_counter() - t0}

    def score_fold(self, params: dict[str, Any], fold: int,
                   on_epoch: EpochHook | None = None) -> dict[str, float]:
        """Fold ``fold``: seed ``fold_seed(seed, fold)``, scored on the first held-out half
        (``on_epoch`` is not called: a GAN is scored once, at the end)."""
        return self.train_and_score(params, fold_seed(self.cfg.seed, fold), self.real_cv)

    def refit_and_test(self, params: dict[str, Any]) -> dict[str, float]:
        """A fresh seed (``fold_seed(seed, −1)``), scored on the second held-out half."""
        m = self.train_and_score(params, fold_seed(self.cfg.seed, -1), self.real_test)
        return {**{f"test_{k}": v for k, v in m.items() if k not in ("time_s", "g_steps")},
                "g_steps": m["g_steps"], "time_s": m["time_s"]}
