"""Named image datasets kept in memory as uint8 tensors, splits, and a lean batch loader.

Datasets (:func:`load_dataset`):

- ``digits``: scikit-learn's bundled 8×8 handwritten digits (1,797 images, no download).
  Pixel values 0..16 are scaled to 0..255. There is no official test split, so a fixed,
  seeded, stratified ``holdout`` fraction is the test set.
- ``mnist``, ``fashion-mnist``, ``cifar10``: torchvision's loaders under ``root`` (the
  argument, else ``$DROPLAB_DATA``, else ``~/.cache/droplab/data``), downloaded when
  ``download=True`` and the machine is online. ``cifar10`` also accepts an ImageFolder tree
  of JPEG/PNG files: ``root/cifar10-jpg/{train,test}/<class>/`` or ``root/{train,test}/<class>/``.
- ``imagefolder:PATH``: any ImageFolder tree (``PATH/<class>/<image>``), with ``train/`` and
  ``test/`` subfolders or else a seeded stratified ``holdout`` fraction as the test set.

Everything is decoded once into ``uint8`` tensors of shape ``(N, C, H, W)``; the
:class:`Loader` then indexes, moves, converts, normalises and augments whole batches, so
no per-sample Python work happens during training.

Image folders: files whose names start with ``.`` are ignored; every other file is
decoded (torchvision's decoders, PIL as a fallback for other formats). Files that cannot
be decoded (corrupt images, text files, …) are skipped and counted, and one
:class:`UnreadableImagesWarning` names how many and the first one. Images are converted
to greyscale (``L``) when every image is greyscale and to RGB otherwise (alpha dropped).
With ``image_size=None`` images keep their size when all share one, else they are resized
to 64; resizing scales the shorter side to the size and centre-crops a square.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from droplab.errors import DataNotFound, InvalidValue, UnknownName, unknown_name

__all__ = [
    "DATASETS",
    "DatasetBundle",
    "ImageData",
    "Loader",
    "UnreadableImagesWarning",
    "channel_stats",
    "default_root",
    "kfold_splits",
    "load_dataset",
    "stratified_split",
    "subsample_per_class",
]

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "imagefolder:PATH")
_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar-10": "cifar10"}
#: default size for image folders whose images differ in size
DEFAULT_FOLDER_SIZE = 64
_CHUNK = 512  # files decoded per task of the thread pool


class UnreadableImagesWarning(UserWarning):
    """Some files of an image folder could not be decoded and were skipped."""


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


@dataclass
class DatasetBundle:
    """A dataset's train and test parts plus what a model and a loader need to know.

    ``mean``/``std`` are per-channel statistics of the training images on the 0..1 scale.
    """

    name: str
    train: ImageData
    test: ImageData
    classes: list[str]
    in_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# ----------------------------------------------------------------------------- roots


def default_root(root: str | os.PathLike[str] | None = None) -> Path:
    """``root``, else ``$DROPLAB_DATA``, else ``~/.cache/droplab/data``."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("DROPLAB_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "droplab" / "data"


# ----------------------------------------------------------------------------- statistics


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


# ----------------------------------------------------------------------------- splits


def _labels_np(labels: Tensor | Sequence[int] | np.ndarray) -> np.ndarray:
    return torch.as_tensor(labels).reshape(-1).cpu().numpy()


def _class_counts(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.unique(y, return_counts=True)


def stratified_split(
    labels: Tensor | Sequence[int], val_fraction: float, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Seeded stratified split into ``(train_indices, val_indices)`` (sorted, disjoint).

    Every class keeps (about) the same share in both parts; uses scikit-learn's
    ``train_test_split(stratify=labels)``.
    """
    from sklearn.model_selection import train_test_split

    y = _labels_np(labels)
    if not 0.0 < float(val_fraction) < 1.0:
        raise InvalidValue(f"validation/holdout fraction must be in (0, 1), got {val_fraction!r}")
    classes, counts = _class_counts(y)
    n_val = math.ceil(float(val_fraction) * len(y))
    if counts.size and (counts.min() < 2 or n_val < len(classes) or len(y) - n_val < len(classes)):
        raise InvalidValue(
            f"cannot split {len(y)} images of {len(classes)} classes (smallest class "
            f"{counts.min()}) with fraction {val_fraction:g} so every class is in both parts; "
            "use more data or another fraction"
        )
    idx = np.arange(len(y))
    tr, va = train_test_split(idx, test_size=float(val_fraction), random_state=seed, stratify=y)
    return torch.from_numpy(np.sort(tr)), torch.from_numpy(np.sort(va))


def kfold_splits(labels: Tensor | Sequence[int], k: int, seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    """``k`` stratified folds ``[(train_indices, val_indices), ...]`` (scikit-learn's
    ``StratifiedKFold(shuffle=True, random_state=seed)``); each index is in exactly one
    validation fold."""
    from sklearn.model_selection import StratifiedKFold

    y = _labels_np(labels)
    if int(k) != k or k < 2:
        raise InvalidValue(f"k-fold needs k >= 2 folds, got {k!r}")
    _, counts = _class_counts(y)
    if counts.size == 0 or counts.min() < k:
        smallest = int(counts.min()) if counts.size else 0
        raise InvalidValue(
            f"{k} folds need at least {k} images in every class, but the smallest class has "
            f"{smallest}; use --folds {max(2, smallest)} or fewer, or more data"
        )
    skf = StratifiedKFold(n_splits=int(k), shuffle=True, random_state=seed)
    return [
        (torch.from_numpy(np.sort(tr)), torch.from_numpy(np.sort(va)))
        for tr, va in skf.split(np.zeros(len(y)), y)
    ]


def subsample_per_class(labels: Tensor | Sequence[int], k: int, seed: int = 0) -> Tensor:
    """A balanced label budget: ``k`` seeded random indices of every class (sorted)."""
    y = torch.as_tensor(labels).reshape(-1)
    if int(k) != k or k < 1:
        raise InvalidValue(f"images per class must be a positive integer, got {k!r}")
    gen = torch.Generator().manual_seed(int(seed))
    out = []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).reshape(-1)
        if idx.numel() < k:
            raise InvalidValue(
                f"class {c} has only {idx.numel()} images, fewer than the {k} per class asked "
                f"for; use at most {idx.numel()} per class"
            )
        out.append(idx[torch.randperm(idx.numel(), generator=gen)[:k]])
    return torch.sort(torch.cat(out)).values


# ----------------------------------------------------------------------------- class subsets


def _resolve_classes(requested: Sequence[str] | str | None, names: Sequence[str]) -> list[int] | None:
    """Indices (in the requested order) of ``requested`` class names or index strings."""
    if requested is None:
        return None
    if isinstance(requested, str):
        requested = [s for s in requested.split(",") if s.strip()]
    lookup = {n: i for i, n in enumerate(names)}
    out: list[int] = []
    for item in requested:
        key = str(item).strip()
        if key in lookup:
            i = lookup[key]
        elif key.isdigit() and int(key) < len(names):
            i = int(key)
        else:
            valid = ", ".join(names)
            raise UnknownName(
                f"unknown class {key!r}; choose names or indices 0..{len(names) - 1} of: {valid}"
            )
        if i in out:
            raise InvalidValue(f"class {key!r} is listed twice in the class subset")
        out.append(i)
    if len(out) < 2:
        raise InvalidValue("a class subset needs at least 2 classes")
    return out


def _select(data: ImageData, keep: list[int] | None) -> ImageData:
    """Keep the classes ``keep`` and relabel them 0..k-1 in that order."""
    if keep is None:
        return data
    remap = torch.full((int(data.labels.max()) + 1 if len(data) else 1,), -1, dtype=torch.int64)
    for new, old in enumerate(keep):
        if old < remap.numel():
            remap[old] = new
    new_labels = remap[data.labels]
    mask = new_labels >= 0
    return ImageData(data.images[mask].contiguous(), new_labels[mask].contiguous())


def _limit_per_class(data: ImageData, limit: int | None) -> ImageData:
    """The first ``limit`` images of each class (for tests and quick benchmarks)."""
    if limit is None:
        return data
    keep = torch.zeros(len(data), dtype=torch.bool)
    for c in torch.unique(data.labels).tolist():
        keep[torch.nonzero(data.labels == c).reshape(-1)[:limit]] = True
    return ImageData(data.images[keep].contiguous(), data.labels[keep].contiguous())


# ----------------------------------------------------------------------------- image folders


def _class_dirs(path: Path) -> list[Path]:
    with os.scandir(path) as it:
        return sorted(Path(e.path) for e in it if e.is_dir() and not e.name.startswith("."))


def _list_files(d: Path) -> list[Path]:
    # os.scandir reads file types from the directory itself: no stat per file
    with os.scandir(d) as it:
        return sorted(Path(e.path) for e in it if e.is_file() and not e.name.startswith("."))


def _decode_one(data: bytes, path: Path) -> Tensor | None:
    """Decode to uint8 (C, H, W) with C in {1, 2, 3, 4}; None when not an image."""
    from torchvision.io import decode_image

    try:
        return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    except (RuntimeError, ValueError):
        pass
    try:  # formats torchvision does not decode (BMP, TIFF, …)
        from PIL import Image

        with Image.open(path) as im:
            im.load()
            if im.mode not in ("L", "LA", "RGB", "RGBA"):
                im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
            arr = np.asarray(im)
        t = torch.from_numpy(arr.copy())
        return t[None] if t.dim() == 2 else t.permute(2, 0, 1).contiguous()
    except Exception:
        return None


def _decode_chunk(paths: Sequence[Path]) -> list[Tensor | None]:
    """Decode files; JPEGs in one batched torchvision call (≈ 10× faster than PIL)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    blobs = []
    for p in paths:
        try:
            blobs.append(p.read_bytes())
        except OSError:
            blobs.append(b"")
    out: list[Tensor | None] = [None] * len(paths)
    jpeg_idx = [i for i, b in enumerate(blobs) if b[:3] == b"\xff\xd8\xff"]
    if jpeg_idx:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                decoded = decode_jpeg(
                    [torch.frombuffer(bytearray(blobs[i]), dtype=torch.uint8) for i in jpeg_idx],
                    mode=ImageReadMode.UNCHANGED,
                )
            for i, t in zip(jpeg_idx, decoded):
                out[i] = t
        except RuntimeError:  # one bad JPEG fails the batch: fall back to one by one
            pass
    for i, p in enumerate(paths):
        if out[i] is None and blobs[i]:
            out[i] = _decode_one(blobs[i], p)
    return out


def _fit_size(batch: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize uint8 (N, C, H, W) so the shorter side fits, then centre-crop to ``size``."""
    from torchvision.transforms.v2 import functional as F

    if tuple(batch.shape[-2:]) == size:
        return batch
    h, w = batch.shape[-2:]
    scale = max(size[0] / h, size[1] / w)
    new = (max(size[0], round(h * scale)), max(size[1], round(w * scale)))
    batch = F.resize(batch, list(new), antialias=True)
    return F.center_crop(batch, list(size))


def _decode_files(
    files: Sequence[Path], image_size: int | None
) -> tuple[Tensor, Tensor, list[Path]]:
    """Decode ``files`` into uint8 (N, C, H, W); return (images, kept mask, bad paths).

    With ``image_size=None`` images keep their common size, or all go to
    :data:`DEFAULT_FOLDER_SIZE` as soon as two sizes differ (so memory stays bounded by
    the final tensor, never by all images at full size).
    """
    target: tuple[int, int] | None = (image_size, image_size) if image_size else None
    common: tuple[int, int] | None = None
    kept: list[Tensor] = []  # one stacked batch per chunk, all at one size
    ok = torch.zeros(len(files), dtype=torch.bool)
    bad: list[Path] = []
    chunks = [list(range(s, min(s + _CHUNK, len(files)))) for s in range(0, len(files), _CHUNK)]
    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as ex:
        results = ex.map(lambda ids: _decode_chunk([files[i] for i in ids]), chunks)
        for ids, decoded in zip(chunks, results):
            ims: list[Tensor] = []
            for i, t in zip(ids, decoded):
                if t is None or t.dim() != 3 or min(t.shape) == 0:
                    bad.append(files[i])
                    continue
                ok[i] = True
                ims.append(t[:1] if t.shape[0] == 2 else t[:3])  # drop alpha
            if not ims:
                continue
            if target is None:
                sizes = {(int(t.shape[-2]), int(t.shape[-1])) for t in ims}
                if common is not None:
                    sizes.add(common)
                if len(sizes) == 1:
                    common = sizes.pop()
                else:
                    target = (DEFAULT_FOLDER_SIZE, DEFAULT_FOLDER_SIZE)
                    kept = [_fit_size(b, target) for b in kept]
            if target is not None:
                ims = [_fit_size(t[None], target)[0] for t in ims]
            if len({t.shape[0] for t in ims}) > 1:
                ims = [t.expand(3, -1, -1) if t.shape[0] == 1 else t for t in ims]
            kept.append(torch.stack(ims))
    if not kept:
        return torch.zeros(0, 3, 1, 1, dtype=torch.uint8), ok, bad
    return _cat_rgb(kept), ok, bad


def _cat_rgb(batches: list[Tensor]) -> Tensor:
    """Concatenate batches, promoting greyscale batches to RGB if any batch is colour."""
    if any(b.shape[1] == 3 for b in batches):
        batches = [b.expand(-1, 3, -1, -1) if b.shape[1] == 1 else b for b in batches]
    return torch.cat(batches).contiguous()


def _warn_unreadable(bad: list[Path], total: int) -> None:
    if bad:
        warnings.warn(
            f"skipped {len(bad)} of {total} files that are not readable images "
            f"(first: {bad[0]})",
            UnreadableImagesWarning,
            stacklevel=3,
        )


def _scan_tree(path: Path, keep: Sequence[str] | str | None, limit: int | None, image_size: int | None,
               what: str) -> tuple[list[str], ImageData, list[Path], int]:
    """Decode one ``path/<class>/<file>`` tree; returns names, data, bad files, file count."""
    dirs = _class_dirs(path)
    if not dirs:
        raise DataNotFound(
            f"{what}: no class subfolders in {path}; expected {path}/<class>/<image files>"
        )
    names = [d.name for d in dirs]
    sel = _resolve_classes(keep, names)
    use = sel if sel is not None else list(range(len(dirs)))
    files: list[Path] = []
    labels: list[int] = []
    for new, old in enumerate(use):
        fs = _list_files(dirs[old])
        if limit is not None:
            fs = fs[:limit]
        files += fs
        labels += [new] * len(fs)
    if not files:
        raise DataNotFound(f"{what}: the class folders under {path} hold no files")
    images, ok, bad = _decode_files(files, image_size)
    y = torch.tensor(labels, dtype=torch.int64)[ok]
    if y.numel() == 0:
        raise DataNotFound(f"{what}: none of the {len(files)} files under {path} is a readable image")
    return [names[i] for i in use], ImageData(images, y), bad, len(files)


def _load_folder(path: Path, classes: Sequence[str] | str | None, image_size: int | None,
                 holdout: float, seed: int, limit: int | None, name: str) -> DatasetBundle:
    """An ImageFolder tree with ``train/`` + ``test/`` subfolders or a stratified holdout."""
    if not path.is_dir():
        raise DataNotFound(f"{name}: folder {path} does not exist; pass an ImageFolder tree PATH/<class>/<image>")
    train_dir, test_dir = path / "train", path / "test"
    if train_dir.is_dir() and test_dir.is_dir() and _class_dirs(train_dir):
        names, train, bad_tr, n_tr = _scan_tree(train_dir, classes, limit, image_size, name)
        h, w = (int(s) for s in train.images.shape[-2:])
        names_te, test, bad_te, n_te = _scan_tree(
            test_dir, names, limit, image_size or (h if h == w else None), name
        )
        if names_te != names:
            raise DataNotFound(f"{name}: train/ and test/ under {path} have different class folders")
        if tuple(test.images.shape[-2:]) != tuple(train.images.shape[-2:]):
            test = ImageData(_fit_size(test.images, tuple(train.images.shape[-2:])), test.labels)
        if test.images.shape[1] != train.images.shape[1]:
            if train.images.shape[1] == 1:
                train = ImageData(train.images.expand(-1, 3, -1, -1).contiguous(), train.labels)
            else:
                test = ImageData(test.images.expand(-1, 3, -1, -1).contiguous(), test.labels)
        _warn_unreadable(bad_tr + bad_te, n_tr + n_te)
    else:
        names, data, bad, n = _scan_tree(path, classes, limit, image_size, name)
        _warn_unreadable(bad, n)
        tr, te = stratified_split(data.labels, holdout, seed)
        train, test = data.subset(tr), data.subset(te)
    return _bundle(name, train, test, names)


# ----------------------------------------------------------------------------- named sets


def _bundle(name: str, train: ImageData, test: ImageData, names: list[str]) -> DatasetBundle:
    mean, std = channel_stats(train.images)
    c, h, w = train.images.shape[1:]
    return DatasetBundle(name, train, test, list(names), (int(c), int(h), int(w)), mean, std)


def _digits(holdout: float, seed: int) -> tuple[ImageData, ImageData, list[str]]:
    from sklearn.datasets import load_digits

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
    import torchvision.datasets as tvd

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


def _cifar_jpeg_root(root: Path) -> Path | None:
    for cand in (root / "cifar10-jpg", root):
        if (cand / "train").is_dir() and (cand / "test").is_dir() and _class_dirs(cand / "train"):
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
) -> DatasetBundle:
    """Load a named dataset into memory (see the module docstring for the names).

    ``classes`` keeps a subset, given as names or index strings (``"0"``, ``"3"``), and
    relabels them ``0..k-1`` in the given order. ``holdout`` is the stratified test
    fraction for datasets without a test split (``digits``, image folders without
    ``train/``/``test/``), drawn with ``seed``. ``limit`` keeps the first ``limit`` images of
    each class in each part (tests and quick benchmarks; for image folders only those files
    are decoded). ``mean``/``std`` are computed on the training part that is returned.
    """
    raw = str(name)
    key = _ALIASES.get(raw.lower(), raw.lower())
    if limit is not None and (int(limit) != limit or limit < 1):
        raise InvalidValue(f"limit must be a positive number of images per class, got {limit!r}")
    if image_size is not None and (int(image_size) != image_size or image_size < 1):
        raise InvalidValue(f"image size must be a positive integer, got {image_size!r}")
    if key.startswith("imagefolder:"):
        path = Path(raw.split(":", 1)[1]).expanduser()
        if not str(path):
            raise InvalidValue("imagefolder needs a path: imagefolder:PATH")
        return _load_folder(path.resolve(), classes, image_size, holdout, seed, limit,
                            f"imagefolder:{path}")
    if key == "digits":
        train, test, names = _digits(holdout, seed)
    elif key in _TV:
        base = default_root(root)
        jpg = _cifar_jpeg_root(base) if key == "cifar10" else None
        if jpg is not None:
            bundle = _load_folder(jpg, classes, image_size, holdout, seed, limit, "cifar10")
            bundle.name = "cifar10"
            return bundle
        train, test, names = _torchvision_set(key, base, download)
    else:
        raise unknown_name("dataset", raw, DATASETS)
    keep = _resolve_classes(classes, names)
    train, test = _select(train, keep), _select(test, keep)
    if keep is not None:
        names = [names[i] for i in keep]
    train, test = _limit_per_class(train, limit), _limit_per_class(test, limit)
    if image_size is not None and image_size != train.images.shape[-1]:
        size = (image_size, image_size)
        train = ImageData(_fit_size(train.images, size).contiguous(), train.labels)
        test = ImageData(_fit_size(test.images, size).contiguous(), test.labels)
    return _bundle(key, train, test, names)


# ----------------------------------------------------------------------------- loader


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
