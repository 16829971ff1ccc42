"""Image folders: ``PATH/<class>/<file>`` trees decoded once into uint8 tensors.

Every file whose name does not start with ``.`` is decoded by :mod:`droplab.data.decode`
(the content decides, not the suffix). A file that is not a readable image (corrupt,
truncated, text, empty, unreadable) or that declares more than ``max_pixels`` pixels
(:data:`FOLDER_MAX_PIXELS`, 8192 × 8192, by default) is **skipped and counted**: one
:class:`UnreadableImagesWarning` per dataset names how many of each kind and the first one,
and :attr:`DatasetBundle.skipped` lists them all. A folder without class subfolders, without
files, or with no readable image at all is a one-line :class:`~droplab.errors.DataNotFound`.

Images are greyscale (``L``) when every image is, else RGB (alpha composited over white).
With ``image_size=None`` they keep their size when all share one of at most
:data:`KEEP_MAX_PIXELS` (256 × 256) pixels; otherwise every image goes to
:data:`DEFAULT_FOLDER_SIZE` (64): the shorter side is scaled to the size and the centre
cropped. Large images are resized as soon as they are decoded, so memory stays bounded by
the final tensor plus a few files in flight (at most :data:`_BATCH_BYTES` of encoded bytes
per decoding thread).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import Tensor

from droplab.data.bundle import DatasetBundle, ImageData, Skipped, make_bundle
from droplab.data.decode import ImageTooLarge, decode_many
from droplab.data.splits import resolve_classes, stratified_split
from droplab.errors import DataNotFound, ImageReadError

__all__ = [
    "DEFAULT_FOLDER_SIZE",
    "FOLDER_MAX_PIXELS",
    "KEEP_MAX_PIXELS",
    "UnreadableImagesWarning",
    "class_dirs",
    "decode_files",
    "fit_size",
    "list_files",
    "load_folder",
    "report_skipped",
]

#: size (square) for image folders whose images differ in size or are large
DEFAULT_FOLDER_SIZE = 64
#: images whose header declares more pixels are skipped (and counted), never decoded
FOLDER_MAX_PIXELS = 8192 * 8192
#: with ``image_size=None`` a common size is kept only up to this many pixels
KEEP_MAX_PIXELS = 256 * 256
_CHUNK = 256  # files per task of the thread pool
_BATCH_BYTES = 32 << 20  # encoded bytes decoded in one go by one thread


class UnreadableImagesWarning(UserWarning):
    """Some files of an image folder were skipped (unreadable, or over the pixel cap)."""


def class_dirs(path: Path) -> list[Path]:
    """The class subfolders of ``path`` (sorted; hidden ones ignored)."""
    with os.scandir(path) as it:
        return sorted(Path(e.path) for e in it if e.is_dir() and not e.name.startswith("."))


def list_files(d: Path) -> list[Path]:
    """The regular files of ``d`` (sorted; hidden ones ignored)."""
    # os.scandir reads file types from the directory itself: no stat per file
    with os.scandir(d) as it:
        return sorted(Path(e.path) for e in it if e.is_file() and not e.name.startswith("."))


def fit_size(batch: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize uint8 (N, C, H, W) so the shorter side fits, then centre-crop to ``size``."""
    # heavy (torchvision imports in ≈ 1.5 s): only needed when sizes differ
    from torchvision.transforms.v2 import functional as F

    if tuple(batch.shape[-2:]) == size:
        return batch
    h, w = batch.shape[-2:]
    scale = max(size[0] / h, size[1] / w)
    new = (max(size[0], round(h * scale)), max(size[1], round(w * scale)))
    batch = F.resize(batch, list(new), antialias=True)
    return F.center_crop(batch, list(size))


def _decode_chunk(paths: Sequence[Path], max_pixels: int | None,
                  size: tuple[int, int], resize_all: bool) -> list[Tensor | Skipped]:
    """Read and decode ``paths`` a few MiB at a time. Images are resized to ``size`` as soon
    as they are decoded when ``resize_all`` (a requested size) or when they are too large to
    keep their own (over :data:`KEEP_MAX_PIXELS`)."""
    out: list[Tensor | Skipped] = []
    max_bytes = 8 * max_pixels + (1 << 20) if max_pixels else None  # 16-bit RGBA, raw
    batch: list[bytes] = []
    names: list[str] = []
    pending = 0

    def flush() -> None:
        nonlocal pending
        for path, r in zip(paths[len(out):], decode_many(batch, names, max_pixels=max_pixels)):
            if isinstance(r, ImageReadError):
                out.append(Skipped(path, str(r), isinstance(r, ImageTooLarge)))
            elif resize_all or r.shape[-2] * r.shape[-1] > KEEP_MAX_PIXELS:
                out.append(fit_size(r[None], size)[0])
            else:
                out.append(r)
        batch.clear()
        names.clear()
        pending = 0

    for path in paths:
        try:
            with open(path, "rb", buffering=0) as fh:
                nbytes = os.fstat(fh.fileno()).st_size  # the size of what was opened
                if max_bytes is None or nbytes <= max_bytes:
                    data = fh.readall()
        except OSError as exc:
            flush()
            out.append(Skipped(path, f"{path} cannot be read ({exc.strerror or exc})"))
            continue
        if max_bytes is not None and (nbytes > max_bytes or len(data) > max_bytes):
            flush()
            out.append(Skipped(path, f"{path} is {nbytes:,} bytes, more than any image under "
                                     "the pixel cap needs; downscale it", True))
            continue
        if batch and pending + len(data) > _BATCH_BYTES:
            flush()
        batch.append(data)
        names.append(str(path))
        pending += len(data)
    flush()
    return out


def decode_files(
    files: Sequence[Path], image_size: int | None, *, max_pixels: int | None = FOLDER_MAX_PIXELS,
) -> tuple[Tensor, Tensor, list[Skipped]]:
    """Decode ``files`` into uint8 (N, C, H, W); return (images, kept mask, skipped files).

    See the module docstring for the size and channel rules and what is skipped.
    """
    target: tuple[int, int] | None = (image_size, image_size) if image_size else None
    early = target or (DEFAULT_FOLDER_SIZE, DEFAULT_FOLDER_SIZE)
    resize_all = target is not None
    common: tuple[int, int] | None = None
    kept: list[Tensor] = []  # one stacked batch per chunk, all at one size
    ok = [False] * len(files)
    skipped: list[Skipped] = []
    chunks = [list(range(s, min(s + _CHUNK, len(files)))) for s in range(0, len(files), _CHUNK)]
    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as ex:
        results = ex.map(lambda ids: _decode_chunk([files[i] for i in ids], max_pixels, early,
                                                     resize_all),
                         chunks)
        for ids, decoded in zip(chunks, results):
            ims: list[Tensor] = []
            for i, t in zip(ids, decoded):
                if isinstance(t, Skipped):
                    skipped.append(t)
                    continue
                ok[i] = True
                ims.append(t)
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
                    kept = [fit_size(b, target) for b in kept]
            if target is not None:
                ims = [fit_size(t[None], target)[0] for t in ims]
            if len({t.shape[0] for t in ims}) > 1:
                ims = [t.expand(3, -1, -1) if t.shape[0] == 1 else t for t in ims]
            kept.append(torch.stack(ims))
    mask = torch.tensor(ok, dtype=torch.bool)
    if not kept:
        return torch.zeros(0, 3, 1, 1, dtype=torch.uint8), mask, skipped
    return _cat_rgb(kept), mask, skipped


def _cat_rgb(batches: list[Tensor]) -> Tensor:
    """Concatenate batches, promoting greyscale batches to RGB if any batch is colour."""
    if any(b.shape[1] == 3 for b in batches):
        batches = [b.expand(-1, 3, -1, -1) if b.shape[1] == 1 else b for b in batches]
    return torch.cat(batches).contiguous()


def report_skipped(skipped: Sequence[Skipped], total: int, stacklevel: int = 3) -> None:
    """One :class:`UnreadableImagesWarning` counting the skipped files by kind."""
    if not skipped:
        return
    parts = []
    for large, what in ((False, "not readable images"), (True, "over the pixel cap")):
        these = [s for s in skipped if s.too_large == large]
        if these:
            parts.append(f"{len(these)} {what} (first: {these[0].reason})")
    warnings.warn(f"skipped {len(skipped)} of {total} files: {'; '.join(parts)}",
                  UnreadableImagesWarning, stacklevel=stacklevel)


def _scan_tree(path: Path, keep: Sequence[str] | str | None, limit: int | None,
               image_size: int | None, what: str, max_pixels: int | None,
               ) -> tuple[list[str], ImageData, list[Skipped], int]:
    """Decode one ``path/<class>/<file>`` tree; returns names, data, skipped, file count."""
    dirs = class_dirs(path)
    if not dirs:
        raise DataNotFound(
            f"{what}: no class subfolders in {path}; expected {path}/<class>/<image files>"
        )
    names = [d.name for d in dirs]
    sel = resolve_classes(keep, names)
    use = sel if sel is not None else list(range(len(dirs)))
    files: list[Path] = []
    labels: list[int] = []
    for new, old in enumerate(use):
        fs = list_files(dirs[old])
        if limit is not None:
            fs = fs[:limit]
        files += fs
        labels += [new] * len(fs)
    if not files:
        raise DataNotFound(f"{what}: the class folders under {path} hold no files")
    images, ok, skipped = decode_files(files, image_size, max_pixels=max_pixels)
    y = torch.tensor(labels, dtype=torch.int64)[ok]
    if y.numel() == 0:
        first = skipped[0].reason if skipped else "no files"
        raise DataNotFound(f"{what}: none of the {len(files)} files under {path} is a readable "
                           f"image (first: {first})")
    return [names[i] for i in use], ImageData(images, y), skipped, len(files)


def load_folder(path: Path, classes: Sequence[str] | str | None, image_size: int | None,
                holdout: float, seed: int, limit: int | None, name: str,
                max_pixels: int | None = FOLDER_MAX_PIXELS) -> DatasetBundle:
    """An ImageFolder tree with ``train/`` + ``test/`` subfolders or a stratified holdout."""
    if not path.is_dir():
        raise DataNotFound(f"{name}: folder {path} does not exist; pass an ImageFolder tree "
                           "PATH/<class>/<image>")
    train_dir, test_dir = path / "train", path / "test"
    if train_dir.is_dir() and test_dir.is_dir() and class_dirs(train_dir):
        names, train, bad_tr, n_tr = _scan_tree(train_dir, classes, limit, image_size, name,
                                                max_pixels)
        h, w = (int(s) for s in train.images.shape[-2:])
        names_te, test, bad_te, n_te = _scan_tree(
            test_dir, names, limit, image_size or (h if h == w else None), name, max_pixels
        )
        if names_te != names:
            raise DataNotFound(f"{name}: train/ and test/ under {path} have different class "
                               "folders")
        if tuple(test.images.shape[-2:]) != tuple(train.images.shape[-2:]):
            test = ImageData(fit_size(test.images, (h, w)), test.labels)
        if test.images.shape[1] != train.images.shape[1]:
            if train.images.shape[1] == 1:
                train = ImageData(train.images.expand(-1, 3, -1, -1).contiguous(), train.labels)
            else:
                test = ImageData(test.images.expand(-1, 3, -1, -1).contiguous(), test.labels)
        skipped, total = bad_tr + bad_te, n_tr + n_te
    else:
        names, data, skipped, total = _scan_tree(path, classes, limit, image_size, name,
                                                 max_pixels)
        tr, te = stratified_split(data.labels, holdout, seed)
        train, test = data.subset(tr), data.subset(te)
    report_skipped(skipped, total, stacklevel=4)
    return make_bundle(name, train, test, names, skipped)
