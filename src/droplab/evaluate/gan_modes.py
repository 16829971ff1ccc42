"""Mode counting for the mode-collapse benchmarks: Stacked MNIST and the 2-D mixtures.

- :class:`StackedFeatures`: droplab's own MNIST classifier (a ``droplab train`` run)
  applied to each channel of a Stacked-MNIST image (Metz et al. 2017; VEEGAN, Srivastava
  et al. 2017; PacGAN, Lin et al. 2018). The mode of an image is the triple of its channel
  predictions, ``100·a + 10·b + c``; its features are the three channels' penultimate
  features side by side (so FID, KID, precision/recall and density/coverage compare the
  joint distribution of the three digits), and its logits are the log-probabilities of the
  1,000 modes under the product of the channels' softmaxes (so the Inception Score is
  computed over modes). Feed it to :func:`droplab.evaluate.gan.gan_scores` with
  ``mode_min_count=1``: as in VEEGAN and PacGAN a mode counts as covered when at least
  one sample lands on it, and KL(mode histogram ‖ uniform) measures the balance.
- :func:`mixture_scores`: for the 2-D ring / grid (:mod:`droplab.data.toy2d`) a sample is
  *high quality* when it lies within 3σ of its nearest mean; a mode is *hit* when at least
  one high-quality sample is nearest to it; the KL is that of the high-quality samples'
  mode histogram to uniform (VEEGAN §5, PacGAN Table 1). :func:`point_scores` adds the
  Fréchet distance and density/coverage of the raw points against held-out real points.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from droplab.data.stacked import MODES, stacked_label
from droplab.data.toy2d import Mixture
from droplab.errors import InvalidValue
from droplab.evaluate.gan import (
    ClassifierFeatures,
    density_coverage,
    frechet_distance,
    mode_coverage,
    precision_recall,
)

__all__ = ["StackedFeatures", "mixture_scores", "point_scores"]


class StackedFeatures:
    """A 1-channel, 10-class digit classifier applied channel by channel (Stacked MNIST)."""

    def __init__(self, digits: ClassifierFeatures) -> None:
        if digits.in_shape[0] != 1 or digits.num_classes != 10:
            raise InvalidValue(
                "Stacked MNIST is scored by a 10-class, 1-channel MNIST classifier, got "
                f"{digits.num_classes} classes on {digits.in_shape[0]}-channel input; pass "
                "--feature-extractor of a `droplab train --dataset mnist` run (or none)")
        self.digits = digits
        self.classes = [f"{i:03d}" for i in range(MODES)]

    @property
    def num_classes(self) -> int:
        return MODES

    def _channels(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise InvalidValue(f"Stacked-MNIST images have 3 channels, got shape {tuple(images.shape)}")
        return images

    def __call__(self, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features (N, 3·D), mode log-probabilities (N, 1000))``."""
        images = self._channels(images)
        per = [self.digits(images[:, c : c + 1], batch_size) for c in range(3)]
        feats = torch.cat([f for f, _ in per], dim=1)
        a, b, c = (F.log_softmax(lg.double(), dim=1) for _, lg in per)
        joint = a[:, :, None, None] + b[:, None, :, None] + c[:, None, None, :]
        return feats, joint.reshape(images.shape[0], MODES).float()

    @torch.no_grad()
    def modes(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """The mode ``100·a + 10·b + c`` of each image (channel-wise argmax), ``(N,)``."""
        images = self._channels(images)
        digits = [self.digits(images[:, c : c + 1], batch_size)[1].argmax(1) for c in range(3)]
        return stacked_label(torch.stack(digits, dim=1))


def mixture_scores(points: torch.Tensor, mix: Mixture, *, n_std: float = 3.0) -> dict[str, object]:
    """Modes hit, share of high-quality samples and KL of their mode histogram to uniform."""
    if points.dim() != 2 or points.shape[1] != 2 or points.shape[0] == 0:
        raise InvalidValue(f"2-D mixture scores need points (N ≥ 1, 2), got {tuple(points.shape)}")
    idx, dist = mix.nearest(points)
    good = dist <= n_std * mix.std
    counts = torch.bincount(idx[good], minlength=mix.modes)
    n_good = int(good.sum())
    kl = (float(mode_coverage(counts.double(), mix.modes)["kl_uniform"])  # type: ignore[arg-type]
          if n_good else None)
    return {
        "modes_hit": int((counts >= 1).sum()),
        "num_modes": mix.modes,
        "high_quality": n_good / points.shape[0],
        "kl_uniform": kl,
        "mode_histogram": [int(v) for v in counts.tolist()],
        "num_samples": int(points.shape[0]),
        "quality_radius": n_std * mix.std,
    }


def point_scores(real: torch.Tensor, fake: torch.Tensor, mix: Mixture, *, k: int = 3,
                 dc_k: int = 5) -> dict[str, object]:
    """:func:`mixture_scores` of ``fake`` plus its Fréchet distance, precision/recall and
    density/coverage against held-out ``real`` points (the points are their own features)."""
    out = mixture_scores(fake, mix)
    real, fake = real.double(), fake.double()
    finite = bool(torch.isfinite(fake).all())
    if finite:
        precision, recall = precision_recall(real, fake, k=k)
        density, coverage = density_coverage(real, fake, k=dc_k)
        fid = frechet_distance(real, fake)
    else:
        precision = recall = density = coverage = fid = math.nan
    out.update({"fid": fid, "precision": precision, "recall": recall, "density": density,
                "coverage": coverage, "num_real": int(real.shape[0])})
    return out
