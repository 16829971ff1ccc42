"""The :class:`Loader`: normalised (and augmented) float batches from in-memory uint8
images, seeded per epoch, sharded like ``DistributedSampler``."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from droplab.data.bundle import ImageData
from droplab.errors import InvalidValue, unknown_name

__all__ = ["FLIP_MODES", "PAD_MODES", "Loader"]

#: horizontal-flip augmentation: independent per epoch, or alternating (Jordan 2024)
FLIP_MODES = ("random", "alternate")
#: how random crops pad the image: zeros, or reflection (a random translation)
PAD_MODES = ("zeros", "reflect")


def _mix(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix-style), stable across runs and platforms."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def _reflect(index: Tensor, size: int) -> Tensor:
    """Indices outside ``0..size-1`` reflected about the border (``F.pad(mode="reflect")``)."""
    return torch.where(index < 0, -index, torch.where(index >= size, 2 * (size - 1) - index,
                                                      index))


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
    image padded by ``pad`` pixels (default 4 for images ≥ 32 px, 2 for ≥ 16 px, 1 below)
    with zeros (``pad_mode="zeros"``) or by reflection (``"reflect"``, airbench's random
    translation), and, for colour images only (``flip`` default), a horizontal flip (as in
    He et al. 2016's CIFAR setup; flipping digits would change their meaning). Flips are
    ``flip_mode="random"`` (each image, each epoch, with probability 1/2) or
    ``"alternate"`` (Jordan 2024: each image gets a random flip in epoch 0 and the
    opposite of its previous one in every later epoch, so consecutive epochs see both
    orientations).
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
        flip_mode: str = "random",
        pad_mode: str = "zeros",
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
        if flip_mode not in FLIP_MODES:
            raise unknown_name("flip mode", flip_mode, FLIP_MODES)
        if pad_mode not in PAD_MODES:
            raise unknown_name("pad mode", pad_mode, PAD_MODES)
        if pad_mode == "reflect" and self.pad >= min(h, w):
            raise InvalidValue(f"reflect padding of {self.pad} px needs images larger than that, "
                               f"got {h}×{w}")
        self.flip_mode, self.pad_mode = flip_mode, pad_mode
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
        # alternating flips: each stored image's orientation in epoch 0 (flipped again in
        # every odd epoch), drawn once from the seed
        bits = torch.Generator().manual_seed(_mix(self.seed, 0xF11F))
        self._flip0 = (torch.rand(len(self._images), generator=bits) < 0.5).to(self.device)
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

    def _augment(self, x: Tensor, gen: torch.Generator, flip0: Tensor, epoch: int) -> Tensor:
        """Random crop from the padded image (+ horizontal flip) of a uint8 batch, one gather.

        ``flip0`` are the batch images' epoch-0 orientations (alternating flips).
        """
        b, c, h, w = x.shape
        p = self.pad
        oy = torch.randint(0, 2 * p + 1, (b, 1), generator=gen)
        ox = torch.randint(0, 2 * p + 1, (b, 1), generator=gen)
        rows = oy + torch.arange(h)
        cols = ox + torch.arange(w)
        if self.flip:
            if self.flip_mode == "random":
                flip = torch.rand(b, generator=gen) < 0.5
            else:
                flip = flip0.cpu() ^ bool(epoch % 2)
            cols = torch.where(flip[:, None], cols.flip(1), cols)
        rows, cols = rows.to(x.device), cols.to(x.device)
        if self.pad_mode == "zeros":
            x = torch.nn.functional.pad(x, (p, p, p, p))
        else:  # reflect about the border pixels: index -i -> i, (n-1)+i -> (n-1)-i
            rows, cols = _reflect(rows - p, h), _reflect(cols - p, w)
        bi = torch.arange(b, device=x.device).view(b, 1, 1, 1)
        ci = torch.arange(c, device=x.device).view(1, c, 1, 1)
        return x[bi, ci, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]

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
                xb = self._augment(xb, aug_gen, self._flip0[bi], epoch)
            x = torch.empty(xb.shape, dtype=torch.float32, device=self.device, memory_format=fmt)
            x.copy_(xb).mul_(self._scale).sub_(self._shift)
            yield x, yb
