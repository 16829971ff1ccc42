"""Named datasets loaded into memory as uint8 tensors (:func:`load_dataset`).

- ``digits``: scikit-learn's bundled 8×8 handwritten digits (1,797 images, no download).
  Pixel values 0..16 are scaled to 0..255. There is no official test split, so a fixed,
  seeded, stratified ``holdout`` fraction is the test set.
- ``mnist``, ``fashion-mnist``, ``cifar10``: torchvision's loaders under ``root`` (the
  argument, else ``$DROPLAB_DATA``, else ``~/.cache/droplab/data``), downloaded when
  ``download=True`` and the machine is online. ``cifar10`` also accepts an ImageFolder tree
  of JPEG/PNG files: ``root/cifar10-jpg/{train,test}/<class>/`` or ``root/{train,test}/<class>/``.
- ``stacked-mnist``: three MNIST digits as the RGB channels (1,000 modes; Metz et al. 2017),
  train and test stacked separately from MNIST's parts (:mod:`droplab.data.stacked`);
  ``limit`` cuts the MNIST digits per class before stacking.
- ``imagefolder:PATH``: any ImageFolder tree (``PATH/<class>/<image>``), with ``train/`` and
  ``test/`` subfolders or else a seeded stratified ``holdout`` fraction as the test set
  (:mod:`droplab.data.folders`: what is skipped and counted, the pixel cap, the size rule).

Everything is decoded once into ``uint8`` tensors of shape ``(N, C, H, W)``; the
:class:`~droplab.data.loader.Loader` then indexes, moves, converts, normalises and augments
whole batches, so no per-sample Python work happens during training.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from droplab.data.bundle import DatasetBundle, ImageData, make_bundle
from droplab.data.folders import FOLDER_MAX_PIXELS, class_dirs, fit_size, load_folder
from droplab.data.splits import (
    limit_per_class,
    resolve_classes,
    select_classes,
    stratified_split,
)
from droplab.data.stacked import STACKED_NAMES, stack_digits
from droplab.errors import DataNotFound, InvalidValue, unknown_name

__all__ = ["DATASETS", "default_root", "load_dataset"]

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "stacked-mnist", "imagefolder:PATH")
_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar-10": "cifar10",
            "stacked_mnist": "stacked-mnist", "stackedmnist": "stacked-mnist"}


def default_root(root: str | os.PathLike[str] | None = None) -> Path:
    """``root``, else ``$DROPLAB_DATA``, else ``~/.cache/droplab/data``."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("DROPLAB_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "droplab" / "data"



def _digits(holdout: float, seed: int) -> tuple[ImageData, ImageData, list[str]]:
    from sklearn.datasets import load_digits  # heavy (≈ 1.4 s): only this dataset needs it

    x, y = load_digits(return_X_y=True)
    images = torch.from_numpy(np.round(x * (255.0 / 16.0)).astype(np.uint8)).reshape(-1, 1, 8, 8)
    labels = torch.from_numpy(y.astype(np.int64))
    data = ImageData(images.contiguous(), labels)
    tr, te = stratified_split(labels, holdout, seed)
    return data.subset(tr), data.subset(te), [str(i) for i in range(10)]


_TV = {
    "mnist": ("MNIST", "MNIST/raw"),
    "fashion-mnist": ("FashionMNIST", "FashionMNIST/raw"),
    "cifar10": ("CIFAR10", "cifar-10-batches-py"),
}


def _torchvision_set(name: str, root: Path, download: bool) -> tuple[ImageData, ImageData, list[str]]:
    """Load a torchvision dataset's train and test parts; download if allowed and needed."""
    import torchvision.datasets as tvd  # heavy (≈ 1.5 s): only these datasets need it

    cls_name, where = _TV[name]
    cls = getattr(tvd, cls_name)
    parts = []
    for train in (True, False):
        try:
            ds = cls(str(root), train=train, download=False)
        except RuntimeError:
            ds = None
        if ds is None and download:
            try:  # torchvision prints its download progress on stdout: keep stdout clean
                with contextlib.redirect_stdout(sys.stderr):
                    ds = cls(str(root), train=train, download=True)
            except (OSError, RuntimeError, ValueError) as e:  # URLError is an OSError
                reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
                raise DataNotFound(
                    f"{name} is not in {root / where} and downloading it failed ({reason}); "
                    f"download it on a machine with network access into {root} (torchvision "
                    f"layout) or pass --data-root / set DROPLAB_DATA"
                ) from None
        if ds is None:
            raise DataNotFound(
                f"{name} is not in {root / where}; allow downloading, or put the files there "
                f"(torchvision layout), or pass --data-root / set DROPLAB_DATA"
            )
        data = ds.data
        images = torch.as_tensor(np.asarray(data)) if not isinstance(data, Tensor) else data
        images = images.permute(0, 3, 1, 2) if images.dim() == 4 else images[:, None]
        labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
        parts.append(ImageData(images.contiguous(), labels))
        names = list(ds.classes)
    if name in ("mnist",):
        names = [n.split(" - ")[0] for n in names]
    return parts[0], parts[1], names


def _stacked_mnist(root: Path, download: bool, limit: int | None,
                   seed: int) -> tuple[ImageData, ImageData, list[str]]:
    """MNIST's train and test digits (``limit`` per class), each part stacked on its own."""
    try:
        train, test, _ = _torchvision_set("mnist", root, download)
    except DataNotFound as e:
        raise DataNotFound(f"stacked-mnist is built from MNIST: {e}") from None
    train, test = limit_per_class(train, limit), limit_per_class(test, limit)
    return (stack_digits(train, seed=seed), stack_digits(test, seed=seed + 1),
            list(STACKED_NAMES))


def _cifar_jpeg_root(root: Path) -> Path | None:
    for cand in (root / "cifar10-jpg", root):
        if (cand / "train").is_dir() and (cand / "test").is_dir() and class_dirs(cand / "train"):
            return cand
    return None


def load_dataset(
    name: str,
    root: str | os.PathLike[str] | None = None,
    classes: Sequence[str] | str | None = None,
    *,
    download: bool = True,
    image_size: int | None = None,
    holdout: float = 0.2,
    seed: int = 0,
    limit: int | None = None,
    max_pixels: int | None = FOLDER_MAX_PIXELS,
) -> DatasetBundle:
    """Load a named dataset into memory (see the module docstring for the names).

    ``classes`` keeps a subset, given as names or index strings (``"0"``, ``"3"``), and
    relabels them ``0..k-1`` in the given order. ``holdout`` is the stratified test
    fraction for datasets without a test split (``digits``, image folders without
    ``train/``/``test/``), drawn with ``seed``. ``limit`` keeps the first ``limit`` images of
    each class in each part (tests and quick benchmarks; for image folders only those files
    are decoded). ``max_pixels``: image-folder files declaring more pixels are skipped and
    counted (:data:`~droplab.data.folders.FOLDER_MAX_PIXELS` by default; ``None`` leaves only
    PIL's ``Image.MAX_IMAGE_PIXELS``). ``mean``/``std`` are computed on the training part
    that is returned.
    """
    raw = str(name)
    key = _ALIASES.get(raw.lower(), raw.lower())
    if limit is not None and (int(limit) != limit or limit < 1):
        raise InvalidValue(f"limit must be a positive number of images per class, got {limit!r}")
    if image_size is not None and (int(image_size) != image_size or image_size < 1):
        raise InvalidValue(f"image size must be a positive integer, got {image_size!r}")
    if max_pixels is not None and (int(max_pixels) != max_pixels or max_pixels < 1):
        raise InvalidValue(f"max_pixels must be a positive integer or None, got {max_pixels!r}")
    if key.startswith("imagefolder:"):
        spec = raw.split(":", 1)[1]
        if not spec.strip():
            raise InvalidValue("imagefolder needs a path: --dataset imagefolder:PATH")
        path = Path(spec).expanduser()
        return load_folder(path.resolve(), classes, image_size, holdout, seed, limit,
                           f"imagefolder:{path}", max_pixels)
    if key == "digits":
        train, test, names = _digits(holdout, seed)
    elif key == "stacked-mnist":
        train, test, names = _stacked_mnist(default_root(root), download, limit, seed)
        limit = None  # already applied to the digits
    elif key in _TV:
        base = default_root(root)
        jpg = _cifar_jpeg_root(base) if key == "cifar10" else None
        if jpg is not None:
            bundle = load_folder(jpg, classes, image_size, holdout, seed, limit, "cifar10",
                                 max_pixels)
            bundle.name = "cifar10"
            return bundle
        train, test, names = _torchvision_set(key, base, download)
    else:
        raise unknown_name("dataset", raw, DATASETS)
    keep = resolve_classes(classes, names)
    train, test = select_classes(train, keep), select_classes(test, keep)
    if keep is not None:
        names = [names[i] for i in keep]
    train, test = limit_per_class(train, limit), limit_per_class(test, limit)
    if image_size is not None and image_size != train.images.shape[-1]:
        size = (image_size, image_size)
        train = ImageData(fit_size(train.images, size).contiguous(), train.labels)
        test = ImageData(fit_size(test.images, size).contiguous(), test.labels)
    return make_bundle(key, train, test, names)
