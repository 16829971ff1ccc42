"""Compatibility names for image reading and writing; the code lives in :mod:`droplab.data`.

``droplab.imageio`` predates the one decoder (:mod:`droplab.data.decode`); style transfer,
the server and the report import from here until they move to :mod:`droplab.data.images`
(paths, sample names, tensors, :func:`save_image`) and :mod:`droplab.data.decode` (bytes).
"""

from __future__ import annotations

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
    save_image,
    tensor_to_pil,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_SUFFIXES",
    "SAMPLE_NAMES",
    "encode_image",
    "image_format",
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
