"""In-memory image data: uint8 ``(N, C, H, W)`` images with labels, a dataset's train and
test parts (:class:`DatasetBundle`), and exact per-channel statistics."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["DatasetBundle", "ImageData", "Skipped", "channel_stats", "make_bundle"]


@dataclass
class ImageData:
    """Images as ``uint8`` ``(N, C, H, W)`` and labels as ``int64`` ``(N,)``."""

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: Tensor) -> ImageData:
        """The rows ``indices`` (a copy)."""
        return ImageData(self.images[indices], self.labels[indices])




@dataclass(frozen=True)
class Skipped:
    """A file of an image folder that was not loaded, and why (one line)."""

    path: Path
    reason: str
    too_large: bool = False  #: over the pixel cap (rather than unreadable)


@dataclass
class DatasetBundle:
    """A dataset's train and test parts plus what a model and a loader need to know.

    ``mean``/``std`` are per-channel statistics of the training images on the 0..1 scale.
    ``skipped`` lists the image-folder files that were not loaded (unreadable, too large).
    """

    name: str
    train: ImageData
    test: ImageData
    classes: list[str]
    in_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and standard deviation (0..1 scale) of uint8 images.

    Uses a 256-bin histogram per channel, so it is exact and needs no float copy.
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError("channel_stats expects uint8 (N, C, H, W)")
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[1]):
        hist = torch.bincount(images[:, c].reshape(-1), minlength=256).to(torch.float64)
        n = hist.sum().clamp_min(1.0)
        mean = float((hist * values).sum() / n)
        var = float((hist * (values - mean) ** 2).sum() / n)
        means.append(mean)
        stds.append(max(math.sqrt(var), 1e-3))
    return tuple(means), tuple(stds)



def make_bundle(name: str, train: ImageData, test: ImageData, names: list[str],
                skipped: list[Skipped] | None = None) -> DatasetBundle:
    """A :class:`DatasetBundle` with ``mean``/``std`` computed on ``train``."""
    mean, std = channel_stats(train.images)
    c, h, w = train.images.shape[1:]
    return DatasetBundle(name, train, test, list(names), (int(c), int(h), int(w)), mean, std,
                         list(skipped or []))
