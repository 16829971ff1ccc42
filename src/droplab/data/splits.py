"""Seeded splits (stratified holdout, stratified k-fold, a per-class label budget) and
class subsets of in-memory data."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from droplab.data.bundle import ImageData
from droplab.errors import InvalidValue, UnknownName

__all__ = ["kfold_splits", "limit_per_class", "resolve_classes", "select_classes",
           "stratified_split", "subsample_per_class"]


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
    from sklearn.model_selection import train_test_split  # heavy (≈ 1.4 s) import

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
    from sklearn.model_selection import StratifiedKFold  # heavy (≈ 1.4 s) import

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


def resolve_classes(requested: Sequence[str] | str | None, names: Sequence[str]) -> list[int] | None:
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


def select_classes(data: ImageData, keep: list[int] | None) -> ImageData:
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


def limit_per_class(data: ImageData, limit: int | None) -> ImageData:
    """The first ``limit`` images of each class (for tests and quick benchmarks)."""
    if limit is None:
        return data
    keep = torch.zeros(len(data), dtype=torch.bool)
    for c in torch.unique(data.labels).tolist():
        keep[torch.nonzero(data.labels == c).reshape(-1)[:limit]] = True
    return ImageData(data.images[keep].contiguous(), data.labels[keep].contiguous())

