"""droplab.data: named datasets, image folders, class subsets, splits and the Loader."""

from __future__ import annotations

import gzip
import hashlib
import struct
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from droplab import data as D
from droplab.errors import DataNotFound, InvalidValue, UnknownName, UserError


def one_line(e: pytest.ExceptionInfo[BaseException]) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


# ----------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits() -> D.DatasetBundle:
    return D.load_dataset("digits")


def test_digits_embedded_with_fixed_stratified_holdout(digits: D.DatasetBundle) -> None:
    b = digits
    assert b.in_shape == (1, 8, 8) and b.classes == [str(i) for i in range(10)]
    assert b.train.images.dtype == torch.uint8 and b.train.labels.dtype == torch.int64
    assert len(b.train) + len(b.test) == 1797
    assert len(b.test) == 360  # ceil(0.2 * 1797)
    # 0..16 scaled to 0..255: both ends occur
    assert int(b.train.images.max()) == 255 and int(b.train.images.min()) == 0
    # stratified: each class's test share is within one image of 20 %
    tr, te = torch.bincount(b.train.labels), torch.bincount(b.test.labels)
    assert ((te.float() - 0.2 * (tr + te).float()).abs() <= 1.0).all()
    # the same seed gives the same split; another seed another one
    again = D.load_dataset("digits")
    assert torch.equal(again.test.images, b.test.images)
    other = D.load_dataset("digits", seed=1)
    assert not torch.equal(other.test.images, b.test.images)
    # mean/std are the exact statistics of the training images
    x = b.train.images.double() / 255
    assert b.mean[0] == pytest.approx(float(x.mean()), abs=1e-9)
    assert b.std[0] == pytest.approx(float(x.std(unbiased=False)), abs=1e-9)


def test_class_subset_relabels_in_given_order(digits: D.DatasetBundle) -> None:
    b = D.load_dataset("digits", classes=["7", "2"])
    assert b.classes == ["7", "2"]
    assert set(b.train.labels.tolist()) == {0, 1}
    n7 = int((digits.train.labels == 7).sum())
    assert int((b.train.labels == 0).sum()) == n7
    # the images relabelled 0 are the digit-7 images
    sevens = digits.train.images[digits.train.labels == 7]
    assert torch.equal(b.train.images[b.train.labels == 0], sevens)


def test_unknown_class_and_dataset_errors_are_one_line() -> None:
    with pytest.raises(UnknownName) as e:
        D.load_dataset("digits", classes=["3", "eleven"])
    assert "eleven" in one_line(e) and "0..9" in one_line(e)
    with pytest.raises(UnknownName) as e:
        D.load_dataset("svhn")
    msg = one_line(e)
    assert "svhn" in msg and "cifar10" in msg and "imagefolder:PATH" in msg
    with pytest.raises(InvalidValue):
        D.load_dataset("digits", classes=["3"])  # one class is no classifier


# ----------------------------------------------------------------------------- torchvision sets


def test_mnist_from_shared(shared_dir: Path) -> None:
    b = D.load_dataset("mnist", root=shared_dir / "datasets", download=False, limit=5,
                       classes=["1", "0"])
    assert b.in_shape == (1, 28, 28) and b.classes == ["1", "0"]
    assert b.train.images.shape == (10, 1, 28, 28) and b.test.images.shape == (10, 1, 28, 28)
    assert torch.bincount(b.train.labels).tolist() == [5, 5]


def _idx(path: Path, arr: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


@pytest.fixture
def fake_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A local HTTP MNIST mirror with 20 tiny images per part (tests the download path)."""
    import functools
    import http.server
    import threading

    import torchvision.datasets as tvd

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    rng = np.random.default_rng(0)
    resources = []
    for prefix in ("train", "t10k"):
        imgs = rng.integers(0, 256, (20, 28, 28))
        labs = np.arange(20) % 10
        for kind, arr in (("images-idx3-ubyte", imgs), ("labels-idx1-ubyte", labs)):
            name = f"{prefix}-{kind}.gz"
            _idx(mirror / name, arr)
            resources.append((name, hashlib.md5((mirror / name).read_bytes()).hexdigest()))

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(mirror)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    monkeypatch.setattr(tvd.MNIST, "mirrors", [url])
    monkeypatch.setattr(tvd.MNIST, "resources", resources)
    yield url
    server.shutdown()
    server.server_close()


def test_mnist_download_path_and_clean_failure(tmp_path: Path, fake_mirror: str,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    import torchvision.datasets as tvd

    root = tmp_path / "data"
    with pytest.raises(DataNotFound) as e:
        D.load_dataset("mnist", root=root, download=False)
    assert str(root / "MNIST" / "raw") in one_line(e)
    b = D.load_dataset("mnist", root=root)  # downloads from the local mirror
    assert b.train.images.shape == (20, 1, 28, 28) and len(b.test) == 20
    assert capsys.readouterr().out == ""  # download chatter stays off stdout
    # DROPLAB_DATA is the default root
    monkeypatch.setenv("DROPLAB_DATA", str(root))
    assert len(D.load_dataset("mnist", download=False).train) == 20
    # an unreachable mirror: one line naming where the files were looked for
    monkeypatch.setattr(tvd.MNIST, "mirrors", [fake_mirror + "nowhere/"])  # HTTP 404
    with pytest.raises(DataNotFound) as e:
        D.load_dataset("mnist", root=tmp_path / "empty")
    msg = one_line(e)
    assert "downloading it failed" in msg and str(tmp_path / "empty") in msg


def test_cifar10_jpeg_tree_from_shared(shared_dir: Path) -> None:
    b = D.load_dataset("cifar10", root=shared_dir / "datasets", classes=["cat", "0"], limit=4)
    assert b.name == "cifar10" and b.classes == ["cat", "airplane"]
    assert b.in_shape == (3, 32, 32)
    assert b.train.images.shape == (8, 3, 32, 32) and b.test.images.shape == (8, 3, 32, 32)
    ref = np.array(Image.open(sorted((shared_dir / "datasets/cifar10-jpg/train/cat").iterdir())[0]))
    # torchvision's libjpeg and PIL's may differ by rounding in the IDCT: within 2 levels
    diff = (b.train.images[0].permute(1, 2, 0).int() - torch.from_numpy(ref).int()).abs()
    assert int(diff.max()) <= 2


# ----------------------------------------------------------------------------- image folders


def _png(path: Path, size: tuple[int, int], mode: str = "RGB", value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)


def test_imagefolder_skips_unreadable_files_with_one_warning(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    for i in range(5):
        _png(root / "cat" / f"{i}.png", (12, 10), value=i)
        _png(root / "dog" / f"{i}.jpg", (12, 10), value=10 + i)
    (root / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "dog" / "notes.txt").write_text("hello")
    (root / "dog" / ".DS_Store").write_bytes(b"\0\1")  # hidden: ignored, not counted
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        b = D.load_dataset(f"imagefolder:{root}", holdout=0.4)
    ours = [w for w in rec if issubclass(w.category, D.UnreadableImagesWarning)]
    assert len(ours) == 1
    msg = str(ours[0].message)
    assert "\n" not in msg and "skipped 2 of 12" in msg and "broken.jpg" in msg
    assert b.classes == ["cat", "dog"] and b.in_shape == (3, 10, 12)  # common size kept
    assert len(b.train) + len(b.test) == 10 and len(b.test) == 4
    # the decoded pixels are the PNG's
    ref = np.array(Image.open(root / "cat" / "0.png"))
    all_imgs = torch.cat([b.train.images, b.test.images])
    assert any(torch.equal(img.permute(1, 2, 0), torch.from_numpy(ref)) for img in all_imgs)


def test_imagefolder_sizes_grey_and_train_test(tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    for i in range(3):
        _png(root / "a" / f"{i}.png", (20 + i, 30), mode="L", value=i)
        _png(root / "b" / f"{i}.png", (40, 16), mode="L", value=5 + i)
    b = D.load_dataset(f"imagefolder:{root}", holdout=0.34)
    assert b.in_shape == (1, 64, 64)  # all grey → L; sizes differ → 64
    b = D.load_dataset(f"imagefolder:{root}", image_size=24, holdout=0.34)
    assert b.in_shape == (1, 24, 24)
    split = tmp_path / "split"
    for part in ("train", "test"):
        for i in range(2):
            _png(split / part / "x" / f"{i}.png", (16, 16), value=i)
            _png(split / part / "y" / f"{i}.png", (16, 16), mode="L", value=3 + i)
    b = D.load_dataset(f"imagefolder:{split}")
    assert b.in_shape == (3, 16, 16) and len(b.train) == 4 and len(b.test) == 4


def test_imagefolder_empty_or_flat_folder_is_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFound) as e:
        D.load_dataset(f"imagefolder:{tmp_path / 'empty'}")
    assert "no class subfolders" in one_line(e)
    _png(tmp_path / "flat" / "a.png", (8, 8))
    with pytest.raises(DataNotFound):
        D.load_dataset(f"imagefolder:{tmp_path / 'flat'}")
    with pytest.raises(DataNotFound) as e:
        D.load_dataset(f"imagefolder:{tmp_path / 'missing'}")
    assert "does not exist" in one_line(e)
    (tmp_path / "junk" / "a").mkdir(parents=True)
    (tmp_path / "junk" / "a" / "x.txt").write_text("x")
    with pytest.raises(DataNotFound) as e:
        D.load_dataset(f"imagefolder:{tmp_path / 'junk'}")
    assert "readable image" in one_line(e)


# ----------------------------------------------------------------------------- splits


def test_stratified_split_disjoint_and_stratified() -> None:
    y = torch.arange(300) % 3
    tr, va = D.stratified_split(y, 0.2, seed=0)
    assert len(set(tr.tolist()) & set(va.tolist())) == 0
    assert sorted(tr.tolist() + va.tolist()) == list(range(300))
    assert torch.bincount(y[va]).tolist() == [20, 20, 20]
    _, va2 = D.stratified_split(y, 0.2, seed=0)
    assert torch.equal(va, va2)
    with pytest.raises(InvalidValue):
        D.stratified_split(y, 1.5, seed=0)


def test_kfold_partition_and_error() -> None:
    y = torch.tensor([0] * 10 + [1] * 6)
    folds = D.kfold_splits(y, 3, seed=0)
    vals = torch.cat([va for _, va in folds])
    assert sorted(vals.tolist()) == list(range(16))  # every index validated exactly once
    for tr, va in folds:
        assert not set(tr.tolist()) & set(va.tolist())
        assert int((y[va] == 1).sum()) == 2  # 6 of class 1 over 3 folds
    with pytest.raises(InvalidValue) as e:
        D.kfold_splits(y, 7, seed=0)
    assert "smallest class has 6" in one_line(e)


def test_subsample_per_class_balanced_and_error() -> None:
    y = torch.tensor([0] * 10 + [1] * 4 + [2] * 7)
    idx = D.subsample_per_class(y, 3, seed=1)
    assert torch.bincount(y[idx]).tolist() == [3, 3, 3]
    assert torch.equal(idx, D.subsample_per_class(y, 3, seed=1))
    with pytest.raises(InvalidValue) as e:
        D.subsample_per_class(y, 5, seed=0)
    assert "class 1 has only 4" in one_line(e)


# ----------------------------------------------------------------------------- loader


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
