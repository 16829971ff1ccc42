"""droplab.data.datasets: named datasets (digits, MNIST, CIFAR-10 trees) and class subsets."""

from __future__ import annotations

import gzip
import hashlib
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from droplab import data as D
from droplab.errors import DataNotFound, InvalidValue, UnknownName


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
