"""GAN data: Stacked MNIST, the 2-D mixtures and their loader, DiffAugment."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from droplab import data as D
from droplab.data import diffaugment as A
from droplab.data import toy2d
from droplab.data.stacked import MODES, stack_digits, stacked_label, unstack_label
from droplab.errors import DataNotFound, InvalidValue, UnknownName


def _digits(per_class: int) -> D.ImageData:
    """Digit ``k`` is an image whose every pixel is ``20·k + i mod 7`` (its label and which
    copy it is can be read back from the stacked channels)."""
    labels = torch.arange(10).repeat_interleave(per_class)
    copy = torch.arange(10 * per_class) % per_class
    images = (20 * labels + copy % 7).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 4, 4)
    return D.ImageData(images.contiguous(), labels)


# -- Stacked MNIST --------------------------------------------------------------------------


def test_stacked_labels_are_the_channel_digits() -> None:
    src = _digits(30)
    s = stack_digits(src, seed=3)
    assert s.images.shape == (300, 3, 4, 4) and s.images.dtype == torch.uint8
    channel_digits = s.images[:, :, 0, 0].long() // 20  # each channel's digit, read back
    assert torch.equal(stacked_label(channel_digits), s.labels)
    assert torch.equal(unstack_label(s.labels), channel_digits)
    assert int(s.labels.min()) >= 0 and int(s.labels.max()) < MODES
    # one pass per channel: every channel uses each digit class exactly as often as the source
    for c in range(3):
        assert torch.bincount(channel_digits[:, c], minlength=10).tolist() == [30] * 10


def test_stacked_channels_are_independent_and_seeded() -> None:
    # 10,000 images from 1,000 digits (10 passes): each of the 1,000 labels has probability
    # 1/1000, so its count is ≈ Binomial(10000, 0.001): mean 10, sd ≈ 3.2. A chi-square
    # of the histogram against uniform has 999 degrees of freedom (mean 999, sd ≈ 44.7):
    # within 5 sd of its mean unless the channels were dependent (e.g. the same permutation).
    src = _digits(100)
    s = stack_digits(src, 10_000, seed=0)
    counts = torch.bincount(s.labels, minlength=MODES).double()
    chi2 = float(((counts - 10.0) ** 2 / 10.0).sum())
    assert abs(chi2 - 999) < 5 * math.sqrt(2 * 999)
    assert int((counts > 0).sum()) > 990
    assert torch.equal(stack_digits(src, 500, seed=4).labels, stack_digits(src, 500, seed=4).labels)
    assert not torch.equal(stack_digits(src, 500, seed=4).labels, stack_digits(src, 500, seed=5).labels)
    # the same permutation in every channel would give only the 10 labels aaa
    same = stack_digits(src, seed=1).images[:, :, 0, 0]
    assert not torch.equal(same[:, 0], same[:, 1])


def test_stacked_refuses_bad_inputs() -> None:
    with pytest.raises(InvalidValue, match="1-channel"):
        stack_digits(D.ImageData(torch.zeros(4, 3, 4, 4, dtype=torch.uint8), torch.zeros(4).long()))
    with pytest.raises(InvalidValue, match=r"0\.\.9"):
        stack_digits(D.ImageData(torch.zeros(4, 1, 4, 4, dtype=torch.uint8), torch.full((4,), 12)))
    with pytest.raises(InvalidValue, match="at least 1"):
        stack_digits(_digits(2), 0)


def test_stacked_mnist_without_mnist_files_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(DataNotFound) as e:
        D.load_dataset("stacked-mnist", root=tmp_path, download=False)
    msg = str(e.value)
    assert "\n" not in msg and "stacked-mnist is built from MNIST" in msg
    assert str(tmp_path / "MNIST" / "raw") in msg


def test_stacked_mnist_from_shared(shared_dir: Path) -> None:
    b = D.load_dataset("stacked-mnist", root=shared_dir / "datasets", limit=50, download=False)
    assert b.name == "stacked-mnist" and b.in_shape == (3, 28, 28) and b.num_classes == 1000
    assert b.train.images.shape == (500, 3, 28, 28) and b.test.images.shape == (500, 3, 28, 28)
    mnist = D.load_dataset("mnist", root=shared_dir / "datasets", limit=50, download=False)
    # every test channel is one of MNIST's held-out test digits, with that digit's label
    lookup = {bytes(img.numpy().tobytes()): int(y) for img, y in zip(mnist.test.images[:, 0],
                                                                      mnist.test.labels)}
    train_set = {bytes(img.numpy().tobytes()) for img in mnist.train.images[:, 0]}
    for img, y in zip(b.test.images[:20], b.test.labels[:20]):
        digits = [lookup[bytes(img[c].numpy().tobytes())] for c in range(3)]
        assert 100 * digits[0] + 10 * digits[1] + digits[2] == int(y)
        assert all(bytes(img[c].numpy().tobytes()) not in train_set for c in range(3))


# -- 2-D mixtures ---------------------------------------------------------------------------


def test_ring_and_grid_geometry() -> None:
    r = toy2d.ring()
    assert r.modes == 8 and r.std == 0.01
    assert torch.allclose(r.means.norm(dim=1), torch.ones(8, dtype=torch.float64))
    angles = torch.atan2(r.means[:, 1], r.means[:, 0]).remainder(2 * math.pi)
    assert torch.allclose(angles.sort().values, torch.arange(8).double() * math.pi / 4, atol=1e-12)
    g = toy2d.grid()
    assert g.modes == 25 and g.std == 0.05
    assert sorted(set(g.means[:, 0].tolist())) == [-4.0, -2.0, 0.0, 2.0, 4.0]
    with pytest.raises(UnknownName, match="ring"):
        toy2d.mixture("spiral")


def test_mixture_samples_have_the_stated_spread() -> None:
    # Per coordinate the deviation from the mode's mean is N(0, σ²): with 16,000 values the
    # sample sd has relative standard error 1/√(2·16000) ≈ 0.56 %; 3 % is > 5 SE.
    d = toy2d.toy_data("grid", per_mode=320, test_per_mode=10, seed=0)
    mix = d.mixture
    dev = d.train.double() - mix.means[d.train_labels]
    assert dev.std().item() == pytest.approx(0.05, rel=0.03)
    assert torch.bincount(d.train_labels).tolist() == [320] * 25
    idx, _ = mix.nearest(d.train)
    assert torch.equal(idx, d.train_labels)  # 2 sd apart modes 40σ apart: never confused
    again = toy2d.toy_data("grid", per_mode=320, test_per_mode=10, seed=0)
    assert torch.equal(again.train, d.train) and not torch.equal(d.test[:10], d.train[:10])


def test_point_loader_shuffles_per_epoch_and_replays() -> None:
    pts = torch.arange(20.0).view(10, 2)
    labels = torch.arange(10)
    ld = toy2d.PointLoader(pts, labels, batch_size=4, seed=1, drop_last=True)
    assert len(ld) == 2
    ld.set_epoch(1)
    a = [y.tolist() for _, y in ld]
    ld.set_epoch(1)
    assert [y.tolist() for _, y in ld] == a
    ld.set_epoch(2)
    assert [y.tolist() for _, y in ld] != a
    for x, y in ld:
        assert torch.equal(x, pts[y])
    assert len(toy2d.PointLoader(pts, labels, batch_size=4)) == 3
    with pytest.raises(InvalidValue):
        toy2d.PointLoader(pts, labels[:3], batch_size=4)


# -- DiffAugment ----------------------------------------------------------------------------


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_policy_names() -> None:
    assert A.parse_policy("color, translation,cutout") == ["color", "translation", "cutout"]
    assert A.parse_policy(["colour"]) == ["color"] and A.parse_policy("") == []
    with pytest.raises(UnknownName) as e:
        A.parse_policy("color,rotate")
    msg = str(e.value)
    assert "\n" not in msg and "'rotate'" in msg and "translation" in msg and "cutout" in msg
    with pytest.raises(InvalidValue, match="twice"):
        A.parse_policy("cutout,cutout")


def test_translation_moves_pixels_and_fills_zeros() -> None:
    x = torch.rand(64, 2, 16, 16) + 1.0  # no zeros of its own
    y = A.translation(x, _gen())
    s = int(16 * 0.125 + 0.5)  # at most 2 pixels each way
    for i in range(64):
        nz = (y[i, 0] != 0).nonzero()
        h = int(nz[:, 0].max() - nz[:, 0].min() + 1)
        w = int(nz[:, 1].max() - nz[:, 1].min() + 1)
        assert 16 - s <= h <= 16 and 16 - s <= w <= 16
        # find the shift and check every kept pixel came from there
        r0, c0 = int(nz[:, 0].min()), int(nz[:, 1].min())
        ty = r0 if r0 > 0 else -(16 - h)
        tx = c0 if c0 > 0 else -(16 - w)
        assert abs(ty) <= s and abs(tx) <= s
        src = x[i, :, max(0, -ty):16 - max(0, ty), max(0, -tx):16 - max(0, tx)]
        assert torch.equal(y[i, :, max(0, ty):16 - max(0, -ty), max(0, tx):16 - max(0, -tx)], src)
    # differentiable: the gradient of the sum is 1 on the pixels that were kept
    xg = x.clone().requires_grad_(True)
    A.translation(xg, _gen()).sum().backward()
    assert set(xg.grad.unique().tolist()) <= {0.0, 1.0} and float(xg.grad.sum()) == float((y != 0).sum())


def test_cutout_zeroes_one_clipped_square() -> None:
    x = torch.ones(200, 1, 8, 8)
    y = A.cutout(x, _gen())
    side = 4
    holes = (y[:, 0] == 0)
    for h in holes:
        rows, cols = h.any(1).nonzero().flatten(), h.any(0).nonzero().flatten()
        assert len(rows) <= side and len(cols) <= side
        assert int(h.sum()) == len(rows) * len(cols)  # one rectangle
    # centres uniform over the image: the hole is often clipped, sometimes whole
    sizes = holes.flatten(1).sum(1)
    assert int(sizes.max()) == side * side and int(sizes.min()) < side * side
    assert torch.equal(y[holes.unsqueeze(1).logical_not()], x[holes.unsqueeze(1).logical_not()])


def test_color_on_grey_images_shifts_the_mean_and_scales_the_spread() -> None:
    # On 1 channel saturation is the identity, so color = contrast ∘ brightness: the image
    # mean moves by b ∈ [−0.5, 0.5] and deviations from it scale by c ∈ [0.5, 1.5].
    x = torch.rand(500, 1, 6, 6) * 2 - 1
    y = A.color(x, _gen(1))
    shift = (y.mean(dim=(1, 2, 3)) - x.mean(dim=(1, 2, 3)))
    dx = x - x.mean(dim=(1, 2, 3), keepdim=True)
    dy = y - y.mean(dim=(1, 2, 3), keepdim=True)
    scale = (dy.flatten(1).norm(dim=1) / dx.flatten(1).norm(dim=1))
    assert shift.min() >= -0.5 - 1e-6 and shift.max() <= 0.5 + 1e-6
    assert scale.min() >= 0.5 - 1e-5 and scale.max() <= 1.5 + 1e-5
    # uniform draws: mean shift 0 ± 0.29/√500·4 and mean scale 1 ± 0.29/√500·4
    assert abs(float(shift.mean())) < 0.06 and abs(float(scale.mean()) - 1) < 0.06
    assert torch.allclose(dy, dx * scale.view(-1, 1, 1, 1), atol=1e-5)
    # on colour images saturation moves the channels apart or together around their mean
    rgb = torch.rand(200, 3, 4, 4) * 2 - 1
    out = A.color(rgb, _gen(2))
    spread_in = (rgb - rgb.mean(1, keepdim=True)).flatten(1).norm(dim=1)
    spread_out = (out - out.mean(1, keepdim=True)).flatten(1).norm(dim=1)
    ratio = spread_out / spread_in
    assert ratio.min() < 0.5 and ratio.max() > 1.5


def test_diffaugment_is_seeded_and_refuses_points() -> None:
    x = torch.rand(8, 3, 16, 16)
    a = A.DiffAugment("color,translation,cutout", _gen(7))(x)
    b = A.DiffAugment("color,translation,cutout", _gen(7))(x)
    assert torch.equal(a, b) and not torch.equal(a, x)
    assert not A.DiffAugment(None, _gen())
    assert torch.equal(A.DiffAugment("", _gen())(x), x)
    with pytest.raises(InvalidValue, match="drop --diffaugment"):
        A.DiffAugment("cutout", _gen())(torch.rand(8, 2))
