"""Images in, uint8 tensors out: the one image decoder, datasets, splits and the Loader.

Modules (each one job; see their docstrings):

- :mod:`~droplab.data.decode`: **the one image decoder** for every image droplab reads
  (datasets, style inputs, server uploads): header and pixel caps checked before decoding,
  every mode to 8-bit L/RGB (:mod:`~droplab.data.modes`), one-line errors, never a crash.
- :mod:`~droplab.data.images`: single images for style transfer and serving (paths or sample
  names, tensors, resizing, encoding).
- :mod:`~droplab.data.folders`: ``PATH/<class>/<image>`` trees; unreadable or oversized
  files skipped, counted and reported once.
- :mod:`~droplab.data.datasets`: :func:`load_dataset` (digits, MNIST, Fashion-MNIST,
  CIFAR-10, image folders).
- :mod:`~droplab.data.splits`: stratified holdout, k-fold, per-class label budgets.
- :mod:`~droplab.data.bundle`: :class:`ImageData`, :class:`DatasetBundle`, statistics.
- :mod:`~droplab.data.loader`: the :class:`Loader` (normalised, augmented, sharded batches).
"""

from droplab.data.bundle import DatasetBundle, ImageData, Skipped, channel_stats, make_bundle
from droplab.data.datasets import DATASETS, default_root, load_dataset
from droplab.data.decode import (
    ALLOWED_FORMATS,
    DecodedImage,
    ImageTooLarge,
    UnsupportedImage,
    decode_image,
    decode_tensor,
    hard_pixel_limit,
)
from droplab.data.folders import (
    DEFAULT_FOLDER_SIZE,
    FOLDER_MAX_PIXELS,
    UnreadableImagesWarning,
)
from droplab.data.loader import Loader
from droplab.data.splits import kfold_splits, stratified_split, subsample_per_class

__all__ = [
    "ALLOWED_FORMATS",
    "DATASETS",
    "DEFAULT_FOLDER_SIZE",
    "FOLDER_MAX_PIXELS",
    "DatasetBundle",
    "DecodedImage",
    "ImageData",
    "ImageTooLarge",
    "Loader",
    "Skipped",
    "UnreadableImagesWarning",
    "UnsupportedImage",
    "channel_stats",
    "decode_image",
    "decode_tensor",
    "default_root",
    "hard_pixel_limit",
    "kfold_splits",
    "load_dataset",
    "make_bundle",
    "stratified_split",
    "subsample_per_class",
]
