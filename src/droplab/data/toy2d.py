"""The 2-D mixtures of Gaussians of the mode-collapse literature, and a loader for points.

- ``ring``: 8 isotropic Gaussians with means ``(cos 2πi/8, sin 2πi/8)`` (radius 1) and
  standard deviation 0.01;
- ``grid``: 25 isotropic Gaussians with means ``(−4 + 2i, −4 + 2j)``, ``i, j ∈ 0..4``, and
  standard deviation 0.05.

These are PacGAN's settings (Lin et al. 2018, §5.1 and Table 1), which follow VEEGAN
(Srivastava et al. 2017); the ring is the toy problem of Metz et al. 2017. Their scores
(:func:`droplab.evaluate.gan_modes.mixture_scores`): a sample is *high quality* when it is
within 3σ of its nearest mean, and a mode is *hit* when at least one high-quality sample
is nearest to it.

:func:`toy_data` draws a seeded train and test set (``per_mode`` points per mode: every
mode gets the same number of points, so the label histogram is exactly uniform);
:class:`PointLoader` yields shuffled float batches ``(x, y)`` like
:class:`~droplab.data.Loader` does for images (same ``set_epoch`` / ``len`` protocol).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from droplab.errors import InvalidValue, unknown_name

__all__ = ["TOY_DATASETS", "Mixture", "PointLoader", "ToyData", "grid", "mixture", "ring",
           "toy_data"]

TOY_DATASETS = ("ring", "grid")


@dataclass(frozen=True)
class Mixture:
    """An equal-weight mixture of isotropic Gaussians in 2-D: means ``(K, 2)`` and one σ."""

    name: str
    means: Tensor
    std: float

    @property
    def modes(self) -> int:
        return int(self.means.shape[0])

    def sample(self, per_mode: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``per_mode`` points of every mode (float32 ``(K·per_mode, 2)``) and their modes."""
        labels = torch.arange(self.modes).repeat_interleave(int(per_mode))
        noise = torch.randn(labels.numel(), 2, generator=generator, dtype=torch.float64)
        points = self.means[labels] + self.std * noise
        return points.float(), labels

    def nearest(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Index of the nearest mean of every point and the distance to it (float64)."""
        d = torch.cdist(points.double().reshape(-1, 2), self.means)
        dist, idx = d.min(dim=1)
        return idx, dist


def ring(modes: int = 8, radius: float = 1.0, std: float = 0.01) -> Mixture:
    """``modes`` Gaussians evenly spaced on a circle of ``radius`` (PacGAN's 2D-ring)."""
    angles = torch.arange(modes, dtype=torch.float64) * (2 * math.pi / modes)
    means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
    return Mixture("ring", means, float(std))


def grid(side: int = 5, spacing: float = 2.0, std: float = 0.05) -> Mixture:
    """``side²`` Gaussians on a square grid centred at 0 (PacGAN's 2D-grid)."""
    ticks = (torch.arange(side, dtype=torch.float64) - (side - 1) / 2) * spacing
    gy, gx = torch.meshgrid(ticks, ticks, indexing="ij")
    return Mixture("grid", torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1), float(std))


def mixture(name: str) -> Mixture:
    """The mixture called ``name`` (``ring`` or ``grid``)."""
    if name == "ring":
        return ring()
    if name == "grid":
        return grid()
    raise unknown_name("2-D dataset", name, TOY_DATASETS)


@dataclass
class ToyData:
    """Train and test points of a 2-D mixture (labels = the mode each point was drawn from)."""

    mixture: Mixture
    train: Tensor
    train_labels: Tensor
    test: Tensor
    test_labels: Tensor

    @property
    def name(self) -> str:
        return self.mixture.name


def toy_data(name: str, per_mode: int = 2000, test_per_mode: int = 500, *, seed: int = 0) -> ToyData:
    """Seeded train and test points of the mixture ``name`` (``per_mode`` train points per mode)."""
    if per_mode < 1 or test_per_mode < 1:
        raise InvalidValue(f"2-D datasets need at least 1 point per mode, got {per_mode} and "
                           f"{test_per_mode}")
    mix = mixture(name)
    gen = torch.Generator().manual_seed(int(seed))
    train, train_y = mix.sample(per_mode, gen)
    test, test_y = mix.sample(test_per_mode, gen)
    return ToyData(mix, train, train_y, test, test_y)


class PointLoader:
    """Shuffled float batches ``(x, y)`` of 2-D points on ``device``, seeded by ``(seed, epoch)``.

    ``drop_last`` drops the last incomplete batch; ``len()`` is the number of batches.
    """

    def __init__(self, points: Tensor, labels: Tensor, *, batch_size: int, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False,
                 device: str | torch.device = "cpu") -> None:
        if points.dim() != 2 or points.shape[0] != labels.shape[0]:
            raise InvalidValue(f"points must be (N, D) with N labels, got {tuple(points.shape)} "
                               f"and {tuple(labels.shape)}")
        if int(batch_size) != batch_size or batch_size < 1:
            raise InvalidValue(f"batch size must be a positive integer, got {batch_size!r}")
        self.device = torch.device(device)
        self.points, self.labels = points.float().to(self.device), labels.to(self.device)
        self.batch_size, self.shuffle = int(batch_size), bool(shuffle)
        self.seed, self.drop_last, self.epoch = int(seed), bool(drop_last), 0

    def __len__(self) -> int:
        n = self.points.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch``'s order for the next pass."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        n = self.points.shape[0]
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(n, generator=gen).to(self.device)
        else:
            order = torch.arange(n, device=self.device)
        self.epoch += 1
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            yield self.points[idx], self.labels[idx]
