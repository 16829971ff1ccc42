"""The :class:`Loader`: normalised (and augmented) float batches from in-memory uint8
images, seeded per epoch, sharded like ``DistributedSampler``."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from droplab.data.bundle import ImageData
from droplab.errors import InvalidValue

__all__ = ["Loader"]


def _mix(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix-style), stable across runs and platforms."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


class Loader:
    """Normalised float batches ``(x, y)`` from in-memory uint8 images, on a device.

    Per batch: gather the rows (uint8), move them to ``device``, augment (optional), convert
    to float (``channels_last`` if asked) and normalise with ``mean``/``std`` (0..1 scale) —
    whole-batch tensor ops only. On an accelerator the images are copied to the device once.

    Shuffling and augmentation are seeded by ``(seed, epoch)``: :meth:`set_epoch` picks the
    epoch; without it each pass uses the next epoch number, so passes differ but a run
    replays exactly. Like ``DistributedSampler``, ``rank``/``world_size`` give each rank a
    disjoint shard of equal size (padded by repeating indices unless ``drop_last``).
    ``drop_last`` drops the last incomplete batch (and the indices that would need padding).
    ``len()`` is the number of batches this rank yields.

    Augmentation (``augment=True``; the task picks the default): a random crop from the
    image zero-padded by ``pad`` pixels (default 4 for images ≥ 32 px, 2 for ≥ 16 px,
    1 below) and, for colour images only (``flip`` default), a random horizontal flip
    (as in He et al. 2016's CIFAR setup; flipping digits would change their meaning).
    """

    def __init__(
        self,
        data: ImageData,
        indices: Tensor | Sequence[int] | None = None,
        *,
        batch_size: int,
        shuffle: bool,
        augment: bool = False,
        mean: Sequence[float],
        std: Sequence[float],
        device: str | torch.device = "cpu",
        seed: int = 0,
        drop_last: bool = False,
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        pad: int | None = None,
        flip: bool | None = None,
    ) -> None:
        if int(batch_size) != batch_size or batch_size < 1:
            raise InvalidValue(f"batch size must be a positive integer, got {batch_size!r}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise InvalidValue(f"rank {rank} is outside 0..world_size-1 (world_size={world_size})")
        c, h, w = data.images.shape[1:]
        if len(mean) != c or len(std) != c:
            raise InvalidValue(f"mean/std need {c} values for {c}-channel images")
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.augment = bool(augment)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.channels_last = bool(channels_last)
        self.rank, self.world_size = int(rank), int(world_size)
        self.pad = int(pad) if pad is not None else (4 if min(h, w) >= 32 else 2 if min(h, w) >= 16 else 1)
        self.flip = bool(flip) if flip is not None else c == 3
        idx = (torch.arange(len(data)) if indices is None
               else torch.as_tensor(indices, dtype=torch.int64).reshape(-1))
        if self.device.type == "cpu":
            self._images, self._labels, self._idx = data.images, data.labels, idx
        else:  # copy the rows once; index on the device
            self._images = data.images[idx].to(self.device)
            self._labels = data.labels[idx].to(self.device)
            self._idx = torch.arange(idx.numel())
        n = self._idx.numel()
        if self.drop_last and n % self.world_size:
            self._shard = n // self.world_size
        else:
            self._shard = math.ceil(n / self.world_size)
        std_t = torch.tensor([float(s) for s in std], dtype=torch.float32)
        mean_t = torch.tensor([float(m) for m in mean], dtype=torch.float32)
        if (std_t <= 0).any():
            raise InvalidValue("std values must be positive")
        # x_norm = x_uint8 * scale - shift  with scale = 1 / (255 std), shift = mean / std
        self._scale = (1.0 / (255.0 * std_t)).view(1, c, 1, 1).to(self.device)
        self._shift = (mean_t / std_t).view(1, c, 1, 1).to(self.device)
        self.epoch = 0

    @property
    def num_samples(self) -> int:
        """Images this rank yields per pass (its shard)."""
        return self._shard if not self.drop_last else (self._shard // self.batch_size) * self.batch_size

    def __len__(self) -> int:
        if self.drop_last:
            return self._shard // self.batch_size
        return math.ceil(self._shard / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch``'s order and augmentation for the next pass."""
        self.epoch = int(epoch)

    def _order(self, epoch: int) -> Tensor:
        n = self._idx.numel()
        if self.shuffle:
            gen = torch.Generator().manual_seed(_mix(self.seed, epoch))
            pos = torch.randperm(n, generator=gen)
        else:
            pos = torch.arange(n)
        total = self._shard * self.world_size
        if total > n:  # pad like DistributedSampler so every rank gets the same count
            reps = math.ceil(total / max(n, 1))
            pos = pos.repeat(reps)[:total]
        else:
            pos = pos[:total]
        return pos[self.rank::self.world_size]

    def _augment(self, x: Tensor, gen: torch.Generator) -> Tensor:
        """Random crop with zero padding (+ horizontal flip) of a uint8 batch, one gather."""
        b, c, h, w = x.shape
        p = self.pad
        oy = torch.randint(0, 2 * p + 1, (b, 1), generator=gen)
        ox = torch.randint(0, 2 * p + 1, (b, 1), generator=gen)
        rows = oy + torch.arange(h)
        cols = ox + torch.arange(w)
        if self.flip:
            flip = torch.rand(b, generator=gen) < 0.5
            cols = torch.where(flip[:, None], cols.flip(1), cols)
        xp = torch.nn.functional.pad(x, (p, p, p, p))
        rows, cols = rows.to(x.device), cols.to(x.device)
        bi = torch.arange(b, device=x.device).view(b, 1, 1, 1)
        ci = torch.arange(c, device=x.device).view(1, c, 1, 1)
        return xp[bi, ci, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        epoch = self.epoch
        self.epoch += 1
        order = self._order(epoch)
        sel = self._idx[order]
        aug_gen = torch.Generator().manual_seed(_mix(self.seed, epoch, self.rank, 1))
        bs = self.batch_size
        stop = len(self) * bs
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        on_cpu = self.device.type == "cpu"
        for start in range(0, min(stop, sel.numel()), bs):
            bi = sel[start:start + bs]
            if not on_cpu:
                bi = bi.to(self.device, non_blocking=True)
            xb = self._images.index_select(0, bi)
            yb = self._labels.index_select(0, bi)
            if self.augment:
                xb = self._augment(xb, aug_gen)
            x = torch.empty(xb.shape, dtype=torch.float32, device=self.device, memory_format=fmt)
            x.copy_(xb).mul_(self._scale).sub_(self._shift)
            yield x, yb
