"""Compatibility names for image reading and writing; the code lives in :mod:`droplab.data`.

``droplab.imageio`` predates the one decoder (:mod:`droplab.data.decode`); style transfer
and the server import from here until they move to :mod:`droplab.data.images` and
:mod:`droplab.data.decode`. Only :func:`save_image` is defined here, because it writes a file
atomically through :mod:`droplab.runs`, a layer above :mod:`droplab.data` (tasks should
write through their ``RunDir`` with :func:`~droplab.data.images.encode_image` instead).
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from droplab.data.decode import to_8bit
from droplab.data.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_SUFFIXES,
    SAMPLE_NAMES,
    encode_image,
    image_format,
    is_image_path,
    is_sample_name,
    list_images,
    load_image,
    load_sample,
    pil_to_tensor,
    read_image,
    resize_to,
    tensor_to_pil,
)
from droplab.fileio import atomic_write_bytes

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "SAMPLE_NAMES",
    "encode_image",
    "is_image_path",
    "is_sample_name",
    "list_images",
    "load_image",
    "load_sample",
    "pil_to_tensor",
    "read_image",
    "resize_to",
    "save_image",
    "tensor_to_pil",
]


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode → 8-bit RGB (the server's current import; use ``data.decode.to_8bit``)."""
    return to_8bit(img, "RGB")


def save_image(x: torch.Tensor | Image.Image, path: str | Path) -> Path:
    """Write an image atomically; the format follows the suffix (PNG when unknown)."""
    path = Path(path)
    atomic_write_bytes(path, encode_image(x, image_format(path)))
    return path
