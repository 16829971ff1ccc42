"""Every PIL image mode to 8-bit ``L`` or ``RGB``, the conversions of the one decoder.

- 16-bit greyscale (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``): scaled by 1/257 with
  rounding, so 0 → 0 and 65535 → 255 (PIL's ``convert`` would clip at 255);
- 32-bit ``I``: by 1/255 when within 0..255, 1/65535 within 0..65535, else its range;
  ``F``: by 255 when within [0, 1], else its range (NaN/inf → 0);
- ``1`` → L; ``P`` → RGB (RGBA when it has a transparent colour); ``PA``/``RGBa`` → RGBA;
  ``La`` → LA; ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``RGBX`` → RGB (PIL's conversions);
- alpha (straight) composited over white: ``c·a/255 + 255·(1 − a/255)``, rounded.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from PIL import Image

__all__ = ["Channels", "to_8bit", "to_tensor"]

Channels = Literal["auto", "L", "RGB"]


def _scale_to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """Deep greyscale → uint8: I;16 by 1/257 (exact ends); I and F by their range."""
    if mode.startswith("I;16"):
        return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    x = a.astype(np.float64)
    if mode == "F" and x.size and np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1:
        lo, hi = 0.0, 1.0
    elif mode != "F" and x.size and x.min() >= 0 and x.max() <= 255:
        lo, hi = 0.0, 255.0
    elif mode != "F" and x.size and x.min() >= 0 and x.max() <= 65535:
        lo, hi = 0.0, 65535.0
    else:
        x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 1.0)
    return np.round(np.clip((x - lo) / max(hi - lo, 1e-12), 0, 1) * 255).astype(np.uint8)


def _over_white(a: np.ndarray) -> np.ndarray:
    """(H, W, C+1) uint8 with straight alpha last → (H, W, C) composited over white."""
    colour, alpha = a[..., :-1].astype(np.uint32), a[..., -1:].astype(np.uint32)
    return ((colour * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


def to_8bit(img: Image.Image, channels: Channels = "RGB") -> Image.Image:
    """Any PIL mode → 8-bit ``L`` or ``RGB`` (``channels="auto"`` keeps greyscale as L).

    Alpha (``LA``, ``RGBA``, ``P`` with transparency, ``PA``, premultiplied ``La``/``RGBa``)
    is composited over white.
    """
    mode = img.mode
    if mode.startswith("I") or mode == "F":  # I;16, I;16B, I;16L, I;16N, I, I;32, F
        img = Image.fromarray(_scale_to_uint8(np.asarray(img), mode), "L")
    elif mode == "1":
        img = img.convert("L")
    elif mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode == "PA":
        img = img.convert("RGBA")
    elif mode == "La":
        img = img.convert("LA")
    elif mode == "RGBa":
        img = img.convert("RGBA")
    elif mode not in ("L", "LA", "RGB", "RGBA"):  # CMYK, YCbCr, LAB, HSV, RGBX, …
        img = img.convert("RGB")
    if img.mode in ("LA", "RGBA"):
        flat = _over_white(np.asarray(img))
        img = Image.fromarray(flat[..., 0], "L") if img.mode == "LA" else Image.fromarray(flat, "RGB")
    if channels == "RGB" and img.mode != "RGB":
        img = img.convert("RGB")
    elif channels == "L" and img.mode != "L":
        img = img.convert("L")  # ITU-R 601-2 luma
    return img


def to_tensor(img: Image.Image) -> torch.Tensor:
    """8-bit ``L``/``RGB`` PIL image → uint8 tensor ``(C, H, W)``."""
    t = torch.from_numpy(np.array(img))  # a writable copy (np.asarray would be read-only)
    return t[None] if t.dim() == 2 else t.permute(2, 0, 1).contiguous()
