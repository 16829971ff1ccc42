"""droplab.data.Loader: batches, normalisation, seeded epochs, augmentation, DDP shards."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from droplab import data as D
from droplab.errors import InvalidValue, UserError


@pytest.fixture(scope="module")
def digits() -> D.DatasetBundle:
    return D.load_dataset("digits")


def _toy(n: int = 37, c: int = 3, s: int = 8) -> D.ImageData:
    g = torch.Generator().manual_seed(0)
    return D.ImageData(torch.randint(0, 256, (n, c, s, s), generator=g, dtype=torch.uint8),
                       torch.arange(n) % 4)


def test_loader_batches_and_normalisation(digits: D.DatasetBundle) -> None:
    b = digits
    ld = D.Loader(b.train, batch_size=100, shuffle=False, mean=b.mean, std=b.std)
    assert len(ld) == 15  # ceil(1437 / 100)
    xs, ys = zip(*ld)
    x, y = torch.cat(xs), torch.cat(ys)
    assert x.dtype == torch.float32 and x.shape == (1437, 1, 8, 8)
    assert torch.equal(y, b.train.labels)
    # normalising with the training set's own statistics: mean 0 and std 1 (float32 error)
    assert float(x.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(x.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)
    ld = D.Loader(b.train, torch.arange(10), batch_size=4, shuffle=True, drop_last=True,
                  mean=b.mean, std=b.std, channels_last=True)
    batches = list(ld)
    assert len(ld) == len(batches) == 2 and batches[0][0].shape == (4, 1, 8, 8)
    data = _toy()
    ld = D.Loader(data, batch_size=8, shuffle=False, mean=(0.5,) * 3, std=(0.25,) * 3,
                  channels_last=True)
    x, _ = next(iter(ld))
    assert x.is_contiguous(memory_format=torch.channels_last)
    expect = (data.images[:8].float() / 255 - 0.5) / 0.25
    assert torch.allclose(x, expect, atol=1e-5)
    with pytest.raises(InvalidValue):
        D.Loader(data, batch_size=0, shuffle=False, mean=(0.5,) * 3, std=(0.2,) * 3)


def test_loader_seeded_per_epoch() -> None:
    data = _toy()
    kw = dict(batch_size=10, shuffle=True, augment=True, mean=(0.5,) * 3, std=(0.25,) * 3)

    def labels_and_x(ld: D.Loader, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        ld.set_epoch(epoch)
        xs, ys = zip(*ld)
        return torch.cat(ys), torch.cat(xs)

    a, b = D.Loader(data, seed=3, **kw), D.Loader(data, seed=3, **kw)
    ya, xa = labels_and_x(a, 2)
    yb, xb = labels_and_x(b, 2)
    assert torch.equal(ya, yb) and torch.equal(xa, xb)
    y1, x1 = labels_and_x(a, 1)
    assert not torch.equal(x1, xa)
    assert torch.equal(torch.sort(y1).values, torch.sort(data.labels).values)  # a permutation
    c = D.Loader(data, seed=4, **kw)
    assert not torch.equal(labels_and_x(c, 2)[1], xa)


def test_augmentation_is_padded_crop_and_flip() -> None:
    data = _toy(n=16, s=8)
    ld = D.Loader(data, batch_size=16, shuffle=False, augment=True, mean=(0.0,) * 3,
                  std=(1 / 255,) * 3, seed=0)  # x = raw pixel values
    assert ld.pad == 1 and ld.flip  # 8-px colour images: 1-px padding, flips
    x, _ = next(iter(ld))
    padded = torch.nn.functional.pad(data.images, (1, 1, 1, 1)).float()
    flips = 0
    for i in range(16):
        windows = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(3) for dx in range(3)]
        plain = any(torch.equal(x[i], w) for w in windows)
        flipped = any(torch.equal(x[i], w.flip(-1)) for w in windows)
        assert plain or flipped
        flips += flipped and not plain
    assert 0 < flips < 16  # P(all 16 the same way) = 2 * 0.5**16
    grey = D.ImageData(data.images[:, :1].contiguous(), data.labels)
    assert not D.Loader(grey, batch_size=4, shuffle=False, augment=True, mean=(0.5,),
                        std=(0.2,)).flip  # no flips for greyscale (digits)


@pytest.mark.parametrize("drop_last", [False, True])
def test_loader_ddp_shards(drop_last: bool) -> None:
    base = _toy(n=37)
    data = D.ImageData(base.images, torch.arange(37))  # label = index: shards are visible
    shards = []
    for rank in range(3):
        ld = D.Loader(data, batch_size=5, shuffle=True, mean=(0.5,) * 3, std=(0.2,) * 3,
                      rank=rank, world_size=3, seed=7, drop_last=drop_last)
        ld.set_epoch(1)
        ys = [y for _, y in ld]
        assert len(ys) == len(ld)
        shards.append(torch.cat(ys).tolist())
    flat = [i for s in shards for i in s]
    if drop_last:  # 12 per rank (36 of 37), whole batches of 5 only: 10 per rank
        assert [len(s) for s in shards] == [10, 10, 10] and len(set(flat)) == 30
    else:  # 13 per rank like DistributedSampler: 37 + 2 repeated indices
        assert [len(s) for s in shards] == [13, 13, 13] and set(flat) == set(range(37))
        assert sorted(Counter(flat).values()) == [1] * 35 + [2] * 2
    with pytest.raises(UserError):
        D.Loader(data, batch_size=5, shuffle=True, mean=(0.5,) * 3, std=(0.2,) * 3, rank=3,
                 world_size=3)
