"""Training images for ``style-train``: a folder read once into uint8 tensors, and seeded
random crops (with horizontal flips) drawn from them every step."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from droplab.data.images import list_images, load_image
from droplab.errors import DataNotFound, ImageReadError

#: Images are stored with their shorter side this much larger than the crop, so crops
#: move in both directions (a mild scale and position augmentation).
CROP_MARGIN = 1.15


def load_folder(folder: str | Path, short_side: int, max_images: int | None = None, *,
                flag: str = "--content-dir") -> list[torch.Tensor]:
    """Every readable image in ``folder`` as uint8 (3, H, W), shorter side ``short_side``.

    Unreadable files are skipped with one note; a folder with no readable image is a
    one-line error naming ``flag``.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataNotFound(f"{flag} {root} is not a folder of images")
    try:
        paths = list_images(root)
    except DataNotFound:
        raise DataNotFound(f"{flag} {root} holds no images (.jpg, .png, …)") from None
    if max_images:
        paths = paths[:max_images]
    images, bad = [], []
    for p in paths:
        try:
            img = load_image(p)
        except (ImageReadError, DataNotFound):
            bad.append(p.name)
            continue
        w, h = img.size
        s = short_side / min(w, h)
        img = img.resize((max(short_side, round(w * s)), max(short_side, round(h * s))),
                         Image.Resampling.BILINEAR)
        images.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).contiguous())
    if bad and images:  # with none readable the error below says it all, in one line
        print(f"droplab: note: skipped {len(bad)} unreadable image(s) in {root}: "
              f"{', '.join(bad[:3])}{' …' if len(bad) > 3 else ''}", file=sys.stderr)
    if not images:
        raise DataNotFound(f"{flag} {root} holds no readable image ({len(bad)} unreadable); "
                           "add .jpg or .png files that open")
    return images


def crop_short_side(size: int) -> int:
    return math.ceil(size * CROP_MARGIN)


def random_crops(images: list[torch.Tensor], n: int, size: int, gen: torch.Generator
                 ) -> torch.Tensor:
    """``n`` random ``size``×``size`` crops (float in [0, 1]), half of them mirrored."""
    idx = torch.randint(0, len(images), (n,), generator=gen).tolist()
    out = torch.empty(n, 3, size, size)
    for k, i in enumerate(idx):
        img = images[i]
        h, w = img.shape[-2:]
        top = int(torch.randint(0, h - size + 1, (1,), generator=gen))
        left = int(torch.randint(0, w - size + 1, (1,), generator=gen))
        crop = img[:, top:top + size, left:left + size].float().div_(255)
        if bool(torch.rand(1, generator=gen) < 0.5):
            crop = crop.flip(-1)
        out[k] = crop
    return out
