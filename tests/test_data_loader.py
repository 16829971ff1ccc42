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


# --------------------------------------------------------------------------- fast-recipe modes
def test_reflect_padding_crops_are_crops_of_the_reflected_image() -> None:
    data = _toy(n=40, s=8)
    ld = D.Loader(data, batch_size=40, shuffle=False, augment=True, pad=2, pad_mode="reflect",
                  flip=False, mean=(0.0,) * 3, std=(1 / 255,) * 3, seed=4)
    x, _ = next(iter(ld))
    padded = torch.nn.functional.pad(data.images.float(), (2,) * 4, mode="reflect")
    crops = padded.unfold(2, 8, 1).unfold(3, 8, 1)  # (n, c, 5, 5, 8, 8): every translation
    found = [(crops[i] == x[i][:, None, None]).flatten(3).all(-1).all(0) for i in range(40)]
    assert all(bool(f.any()) for f in found)
    # the offsets are spread over all 5×5 translations (40 draws: at least 10 distinct)
    offsets = {int(f.flatten().nonzero()[0]) for f in found}
    assert len(offsets) >= 10


def test_alternating_flips_reverse_every_image_each_epoch() -> None:
    n = 2000
    toy = _toy(n=n, s=4)
    data = D.ImageData(toy.images, torch.arange(n))  # labels name the images
    kw = dict(batch_size=500, shuffle=True, augment=True, pad=0, flip_mode="alternate",
              mean=(0.0,) * 3, std=(1 / 255,) * 3, seed=5)

    def flipped(ld: D.Loader, epoch: int) -> torch.Tensor:
        """Per image id: True where this epoch shows it mirrored."""
        ld.set_epoch(epoch)
        xs, ys = zip(*ld)
        x, ids = torch.cat(xs), torch.cat(ys)
        img = data.images[ids].float()
        mirrored = (x == img.flip(-1)).flatten(1).all(1)
        assert bool((mirrored ^ (x == img).flatten(1).all(1)).all())  # never symmetric
        out = torch.empty(n, dtype=torch.bool)
        out[ids] = mirrored
        return out

    ld = D.Loader(data, **kw)
    f0, f1, f2 = (flipped(ld, e) for e in range(3))
    # epoch 0: each image flipped with probability 1/2, independently: 5σ = 5·sqrt(.25/n)
    assert abs(f0.double().mean().item() - 0.5) < 5 * (0.25 / n) ** 0.5
    assert torch.equal(f1, ~f0) and torch.equal(f2, f0)
    # the same seed gives the same orientations; another seed others
    assert torch.equal(flipped(D.Loader(data, **kw), 0), f0)
    assert not torch.equal(flipped(D.Loader(data, **{**kw, "seed": 6}), 0), f0)


def test_random_flips_are_independent_across_epochs() -> None:
    n = 2000
    data = _toy(n=n, s=4)
    ld = D.Loader(data, batch_size=n, shuffle=False, augment=True, pad=0, mean=(0.0,) * 3,
                  std=(1 / 255,) * 3, seed=5)
    e0, _ = next(iter(ld))
    e1, _ = next(iter(ld))
    same = (e0 == e1).flatten(1).all(1).double().mean().item()
    assert abs(same - 0.5) < 5 * (0.25 / n) ** 0.5


def test_bad_augmentation_modes_are_one_line_errors() -> None:
    data = _toy(s=4)
    kw = dict(batch_size=4, shuffle=False, mean=(0.5,) * 3, std=(0.25,) * 3)
    with pytest.raises(UserError, match="flip mode"):
        D.Loader(data, flip_mode="sometimes", **kw)
    with pytest.raises(UserError, match="pad mode"):
        D.Loader(data, pad_mode="wrap", **kw)
    with pytest.raises(InvalidValue, match="reflect padding of 4 px"):
        D.Loader(data, pad=4, pad_mode="reflect", **kw)
