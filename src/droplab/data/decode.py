"""The one image decoder: every image droplab reads passes through :func:`decode_image`.

Datasets (image folders, the CIFAR-10 JPEG tree), style-transfer inputs and server uploads
are untrusted bytes. Decoding them must never crash or exhaust the process, so:

1. **Header first.** PIL parses only the header (``Image.open``), restricted to
   :data:`ALLOWED_FORMATS`; anything else is :class:`UnsupportedImage` — the content is
   checked, never the file name.
2. **Pixel caps before any pixel is decoded.** A header declaring more than
   :func:`hard_pixel_limit` pixels (``PIL.Image.MAX_IMAGE_PIXELS``, 89.5 MP by default, so
   setting PIL's own knob moves it) is refused as :class:`ImageTooLarge`; the caller's
   ``max_pixels`` refuses (datasets, uploads) or downscales (style inputs; JPEGs through
   ``draft``, so the full image never lives in memory) what lies between.
3. **Truncated or corrupt files are refused** (PIL's ``LOAD_TRUNCATED_IMAGES`` stays off:
   nothing is silently padded), as one-line :class:`~droplab.errors.ImageReadError`. A
   malformed file can make PIL raise nearly any exception type, so every exception from the
   PIL calls becomes that one error; PIL's own warnings (corrupt EXIF, bomb warnings) are
   silenced while droplab decodes (:func:`quiet_decoders`).
4. **Every mode becomes 8-bit L or RGB** (:mod:`droplab.data.modes`): 16-bit (``I;16*``) is scaled by 1/257 (full
   range kept; PIL's ``convert`` would clip at 255), 32-bit ``I``/``F`` by their range,
   ``1``/``P``/``PA``/``LA``/``RGBA``/``CMYK``/``YCbCr``/``LAB``/``HSV`` converted, alpha
   composited over white, and the EXIF orientation applied (first frame only).

Never torchvision's ``decode_image``/``decode_png`` on untrusted bytes: a 68-byte PNG whose
header claims more data than it holds segfaulted it (libpng longjmp, exit 139). Image
folders may use torchvision's JPEG decoder as a fast path, but only for files that a strict
header walk (:func:`plain_jpeg_header`) accepts as complete plain 8-bit JPEGs; the fuzz test
(``tests/test_data_fuzz.py``) decodes thousands of mutated files through both paths in a
child process and fails on any crash.
"""

from __future__ import annotations

import io
import os
import re
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from PIL import Image, UnidentifiedImageError

from droplab.data.modes import Channels, to_8bit, to_tensor
from droplab.errors import DataNotFound, ImageReadError

__all__ = [
    "ALLOWED_FORMATS",
    "DecodedImage",
    "ImageTooLarge",
    "UnsupportedImage",
    "decode_image",
    "decode_many",
    "decode_tensor",
    "hard_pixel_limit",
    "plain_jpeg_header",
    "quiet_decoders",
    "to_8bit",
    "to_tensor",
]

#: Formats PIL may parse (``Image.open(formats=...)``). PIL's JPEG reader returns many
#: camera JPEGs as format "MPO"; PPM covers PGM/PBM.
ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM")

Source = bytes | bytearray | memoryview | str | os.PathLike[str]


class ImageTooLarge(ImageReadError):
    """An image whose header declares more pixels than the cap (refused before decoding)."""


class UnsupportedImage(ImageReadError):
    """Bytes that are not an image in one of :data:`ALLOWED_FORMATS` (or an empty file)."""


@dataclass
class DecodedImage:
    """A decoded image (8-bit ``L`` or ``RGB``) and what its header said."""

    image: Image.Image
    format: str
    width: int  #: as declared in the file, before EXIF rotation or downscaling
    height: int


def hard_pixel_limit() -> int | None:
    """Pixels above which nothing is decoded: ``PIL.Image.MAX_IMAGE_PIXELS`` (None: no limit)."""
    limit = Image.MAX_IMAGE_PIXELS
    return int(limit) if limit else None


# ----------------------------------------------------------------------------- warnings

_quiet_lock = threading.Lock()
_quiet_depth = 0
_quiet_ctx: warnings.catch_warnings | None = None


@contextmanager
def quiet_decoders() -> Iterator[None]:
    """Silence PIL's (and torchvision.io's) warnings while any thread decodes
    (thread-safe, re-entrant).

    ``warnings.catch_warnings`` saves and restores process-wide state, so concurrent
    decoders must share one: the first thread in installs the filters, the last one out
    restores the previous ones. Warnings that other threads' PIL calls raise meanwhile are
    silenced too.
    """
    global _quiet_depth, _quiet_ctx
    with _quiet_lock:
        if _quiet_depth == 0:
            ctx = warnings.catch_warnings()
            ctx.__enter__()
            warnings.filterwarnings("ignore", module=r"PIL(\.|$)")
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # torchvision 0.29 deprecates its image codecs (the fast JPEG path) on every call
            warnings.filterwarnings("ignore", category=DeprecationWarning,
                                    module=r"torchvision\.io")
            _quiet_ctx = ctx
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0 and _quiet_ctx is not None:
                _quiet_ctx.__exit__(None, None, None)
                _quiet_ctx = None


# ----------------------------------------------------------------------------- reading


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:200]
    return text or type(exc).__name__


def _read(source: Source, name: str) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    path = Path(source)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataNotFound(f"image {path} does not exist; check the path") from None
    except IsADirectoryError:
        raise ImageReadError(f"{path} is a folder, not an image file") from None
    except OSError as exc:
        raise ImageReadError(f"{name} cannot be read ({exc.strerror or _one_line(exc)})") from None


def _open_header(data: bytes, name: str) -> Image.Image:
    """PIL parses the header only (no pixel is decoded); allowed formats only."""
    if not data:
        raise UnsupportedImage(f"{name} is empty (0 bytes); it is not an image")
    try:
        return Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise UnsupportedImage(
            f"{name} is not an image droplab reads (the content was checked, not the name); "
            f"use {', '.join(ALLOWED_FORMATS)}"
        ) from None
    except Image.DecompressionBombError as exc:  # over 2× the limit: PIL's own check
        found = re.search(r"\((\d+) pixels\)", str(exc))
        count = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
        raise ImageTooLarge(f"{name} declares {count}, over the hard limit "
                            f"(PIL.Image.MAX_IMAGE_PIXELS = {hard_pixel_limit() or 0:,}); "
                            "downscale it first") from None
    except Exception as exc:  # malformed headers raise anything: one line, no traceback
        raise ImageReadError(f"{name}: the image header cannot be read ({_one_line(exc)}); "
                             "the file may be truncated or corrupt") from None


def _check_size(w: int, h: int, name: str, cap: int | None, what: str) -> None:
    if w < 1 or h < 1:
        raise ImageReadError(f"{name} has no pixels ({w}×{h})")
    if cap is not None and w * h > cap:
        raise ImageTooLarge(f"{name} is {w}×{h} = {w * h:,} pixels, over the {what} of "
                            f"{cap:,} pixels; downscale it first")


# EXIF orientation tag (0x0112) → the transpose that displays the image upright
_ORIENT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1 when absent or unreadable: broken EXIF is not a broken image)."""
    try:
        value = img.getexif().get(0x0112, 1)
        return int(value) if int(value) in _ORIENT else 1
    except Exception:  # corrupt EXIF raises anything
        return 1


# ----------------------------------------------------------------------------- decoding


def _opened(data: bytes, name: str, max_pixels: int | None, refuse: bool) -> Image.Image:
    """The header, checked against the hard limit and (when ``refuse``) ``max_pixels``."""
    img = _open_header(data, name)
    w, h = img.size
    _check_size(w, h, name, hard_pixel_limit(), "hard limit (PIL.Image.MAX_IMAGE_PIXELS)")
    if refuse:
        _check_size(w, h, name, max_pixels, "pixel cap")
    return img


def _finish(img: Image.Image, name: str, max_pixels: int | None, channels: Channels) -> Image.Image:
    """Decode the pixels of an opened header, rotate, convert (downscale when over the cap)."""
    fmt, (w, h) = str(img.format), img.size
    shrink = max_pixels is not None and w * h > max_pixels
    try:
        if shrink and fmt in ("JPEG", "MPO"):  # libjpeg decodes at 1/2, 1/4 or 1/8 scale
            scale = (max_pixels / (w * h)) ** 0.5
            img.draft("RGB", (max(1, int(w * scale)), max(1, int(h * scale))))
        img.load()
        if img.size[0] * img.size[1] > w * h:  # a GIF frame larger than its screen
            _check_size(*img.size, name, hard_pixel_limit(), "hard limit")
        orient = _orientation(img)
        if orient != 1:
            img = img.transpose(_ORIENT[orient])
        img = to_8bit(img, channels)
    except ImageReadError:
        raise
    except Exception as exc:  # see the module docstring: one line for any PIL failure
        raise ImageReadError(f"{name} cannot be decoded as {fmt} ({_one_line(exc)}); the file "
                             "may be truncated or corrupt") from None
    if shrink and max_pixels is not None and img.size[0] * img.size[1] > max_pixels:
        iw, ih = img.size
        scale = (max_pixels / (iw * ih)) ** 0.5
        img = img.resize((max(1, int(iw * scale)), max(1, int(ih * scale))),
                         Image.Resampling.LANCZOS)
    return img


def decode_image(
    source: Source,
    *,
    max_pixels: int | None = None,
    too_large: Literal["refuse", "downscale"] = "refuse",
    channels: Channels = "RGB",
    name: str | None = None,
) -> DecodedImage:
    """Decode untrusted bytes or a file into an 8-bit ``L``/``RGB`` image, or raise one line.

    ``max_pixels`` caps the pixels decoded: above it the image is refused
    (:class:`ImageTooLarge`) or, with ``too_large="downscale"``, scaled down to fit
    (returned images then have at most ``max_pixels`` pixels). Above
    :func:`hard_pixel_limit` it is always refused. ``channels``: ``"RGB"``, ``"L"`` or
    ``"auto"`` (greyscale stays L). ``name`` is how messages call the image (default: its
    path, or "the image" for bytes). Raises :class:`UnsupportedImage`,
    :class:`ImageTooLarge`, :class:`~droplab.errors.ImageReadError` (corrupt, truncated) or
    :class:`~droplab.errors.DataNotFound` (no such file) — never anything else.
    """
    if too_large not in ("refuse", "downscale"):
        raise ValueError(f"too_large must be 'refuse' or 'downscale', got {too_large!r}")
    if name is None:
        name = "the image" if isinstance(source, bytes | bytearray | memoryview) else str(source)
    data = _read(source, name)
    with quiet_decoders():
        img = _opened(data, name, max_pixels, refuse=too_large == "refuse")
        fmt, (w, h) = str(img.format), img.size
        img = _finish(img, name, max_pixels, channels)
    return DecodedImage(img, fmt, w, h)


def decode_tensor(
    source: Source, *, max_pixels: int | None = None, channels: Channels = "auto",
    name: str | None = None,
) -> torch.Tensor:
    """:func:`decode_image` (refusing images over ``max_pixels``) → uint8 ``(C, H, W)``,
    C = 1 for greyscale (with ``channels="auto"``) else 3."""
    return to_tensor(decode_image(source, max_pixels=max_pixels, channels=channels,
                                  name=name).image)


# ----------------------------------------------------------------------------- many files


# SOF markers the fast path takes: baseline, extended and progressive Huffman JPEG
_PLAIN_SOF = (0xC0, 0xC1, 0xC2)
# markers that send a file to PIL: other SOFs (lossless, hierarchical, arithmetic), DAC,
# RSTn/SOI/EOI out of place, DNL, DHP, EXP, APP1 (EXIF orientation, XMP), APP14 (Adobe
# colour transform: CMYK/YCCK, RGB), JPGn extensions
_PIL_MARKERS = frozenset({*range(0xC3, 0xDA), 0xDC, 0xDE, 0xDF, 0xE1, 0xEE, *range(0xF0, 0xFE)}
                         ) - {0xC4}


def plain_jpeg_header(data: bytes) -> tuple[int, int, int] | None:
    """``(width, height, channels)`` when ``data`` may go to torchvision's JPEG decoder,
    else None (the file then takes the PIL path, which decides whether it is readable).

    A strict walk over the marker segments up to the scan (a few µs; PIL's ``Image.open``
    costs ≈ 10× more): SOI first, every segment length inside the file, exactly one
    baseline/extended/progressive Huffman SOF with 8-bit samples, 1 or 3 components and
    non-zero dimensions, no EXIF/XMP (APP1: orientation) or Adobe (APP14: CMYK/YCCK)
    segment, an SOS after the SOF, and the EOI marker ``FFD9`` last (a cut file is not
    padded). Both paths then accept the same files and give the same pixels (within JPEG
    IDCT rounding).
    """
    n = len(data)
    if n < 8 or data[:3] != b"\xff\xd8\xff" or data[-2:] != b"\xff\xd9":
        return None
    i, sof = 2, None
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _PIL_MARKERS or marker < 0xC0:
            return None
        length = (data[i + 2] << 8) | data[i + 3]
        if length < 2 or i + 2 + length > n:
            return None
        if marker == 0xDA:  # start of scan: the header is complete
            return sof
        if marker in _PLAIN_SOF:
            channels = data[i + 9] if i + 10 <= n else 0
            if sof is not None or data[i + 4] != 8 or channels not in (1, 3) \
                    or length != 8 + 3 * channels:
                return None
            h, w = (data[i + 5] << 8) | data[i + 6], (data[i + 7] << 8) | data[i + 8]
            if w == 0 or h == 0:
                return None
            sof = (w, h, channels)
        i += 2 + length
    return None


def _tv_jpeg(blobs: list[bytes]) -> list[torch.Tensor] | None:
    """torchvision's (libjpeg-turbo) decoder on validated JPEGs; None when it refuses."""
    try:  # heavy (torchvision imports in ≈ 1.5 s): only image folders need it
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:  # a torchvision without its (deprecated) codecs: PIL decodes
        return None
    try:
        return list(decode_jpeg([torch.frombuffer(bytearray(b), dtype=torch.uint8)
                                 for b in blobs], mode=ImageReadMode.UNCHANGED))
    except RuntimeError:
        return None


def decode_many(
    blobs: list[bytes], names: list[str], *, max_pixels: int | None = None, fast: bool = True,
) -> list[torch.Tensor | ImageReadError]:
    """Decode many files: uint8 ``(C, H, W)`` (greyscale kept as C = 1, else RGB) or the
    :class:`~droplab.errors.ImageReadError` that :func:`decode_image` would raise (images
    over ``max_pixels`` are refused). JPEGs that pass :func:`plain_jpeg_header` are decoded
    by libjpeg-turbo in one call (≈ 3× faster than PIL on CIFAR-sized images); a file it
    refuses, or whose decoded shape disagrees with its header, goes through PIL.

    Call from one thread per batch; several threads may run batches concurrently.
    """
    out: list[torch.Tensor | ImageReadError | None] = [None] * len(blobs)
    fast_idx: list[int] = []
    shapes: dict[int, tuple[int, int, int]] = {}
    with quiet_decoders():
        for i, (data, name) in enumerate(zip(blobs, names)):
            try:
                plain = plain_jpeg_header(data) if fast else None
                if plain is not None:
                    w, h, c = plain
                    _check_size(w, h, name, hard_pixel_limit(),
                                "hard limit (PIL.Image.MAX_IMAGE_PIXELS)")
                    _check_size(w, h, name, max_pixels, "pixel cap")
                    fast_idx.append(i)
                    shapes[i] = (c, h, w)
                else:
                    img = _opened(data, name, max_pixels, refuse=True)
                    out[i] = to_tensor(_finish(img, name, max_pixels, "auto"))
            except ImageReadError as exc:
                out[i] = exc
        if fast_idx:
            decoded = _tv_jpeg([blobs[i] for i in fast_idx])
            for k, i in enumerate(fast_idx):
                t = decoded[k] if decoded is not None else None
                if t is None and decoded is None:  # one bad file fails the batch: retry alone
                    one = _tv_jpeg([blobs[i]])
                    t = one[0] if one else None
                if t is not None and tuple(t.shape) == shapes[i]:
                    out[i] = t
                else:
                    try:
                        out[i] = decode_tensor(blobs[i], max_pixels=max_pixels, name=names[i])
                    except ImageReadError as exc:
                        out[i] = exc
    return [o if o is not None else ImageReadError(f"{n}: not decoded") for o, n in zip(out, names)]
