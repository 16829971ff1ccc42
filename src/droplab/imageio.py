"""Robust image reading and writing shared by style transfer and the web server.

Every image enters droplab through :func:`load_image`, which turns whatever a user hands
over into an RGB ``PIL.Image`` or raises one one-line :class:`~droplab.errors.UserError`:

- a missing path → :class:`~droplab.errors.DataNotFound`;
- an unreadable, truncated or non-image file → :class:`~droplab.errors.ImageReadError`;
- a decompression bomb (more than :data:`BOMB_PIXELS` pixels declared in the header) →
  :class:`~droplab.errors.ImageReadError` before any pixel is decoded;
- an image above ``max_pixels`` is downscaled (JPEG decoding uses ``draft`` so the full
  image never lives in memory) with one note on stderr;
- EXIF orientation is applied (:func:`PIL.ImageOps.exif_transpose`);
- CMYK, greyscale, palette, RGBA/LA (composited over white) and 16-bit / 32-bit integer
  or float images become 8-bit RGB with their full range kept (PIL's own ``convert``
  clips 16-bit values at 255).

Names of scikit-image's embedded sample images (``astronaut``, ``coffee``, …,
:data:`SAMPLE_NAMES`) are accepted wherever a path is, and need no download.
"""

from __future__ import annotations

import io
import sys
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from droplab.errors import DataNotFound, ImageReadError, InvalidValue
from droplab.fileio import atomic_write_bytes

#: scikit-image sample images shipped inside the package (``skimage.data.<name>()``).
SAMPLE_NAMES: tuple[str, ...] = (
    "astronaut", "brick", "camera", "cat", "chelsea", "checkerboard", "clock", "coffee",
    "coins", "colorwheel", "grass", "gravel", "horse", "hubble_deep_field",
    "immunohistochemistry", "logo", "moon", "page", "retina", "rocket", "text",
)
#: File suffixes treated as images when a folder is scanned.
IMAGE_SUFFIXES: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
)
#: Default cap on decoded pixels (4096 × 4096); larger images are downscaled with a note.
DEFAULT_MAX_PIXELS = 4096 * 4096
#: Header sizes above this are refused outright as decompression bombs.
BOMB_PIXELS = 20_000 * 20_000


def _note(msg: str) -> None:
    print(f"droplab: note: {msg}", file=sys.stderr)


def is_sample_name(spec: str) -> bool:
    return spec in SAMPLE_NAMES and not Path(spec).exists()


def load_sample(name: str) -> Image.Image:
    """One of scikit-image's embedded sample images as an RGB ``PIL.Image``."""
    import skimage.data

    if name not in SAMPLE_NAMES:
        from droplab.errors import unknown_name

        raise unknown_name("sample image", name, SAMPLE_NAMES)
    arr = np.asarray(getattr(skimage.data, name)())
    return _array_to_rgb(arr)


def load_image(spec: str | Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read ``spec`` (a path or a sample name) as an 8-bit RGB ``PIL.Image``.

    See the module docstring for what is handled and what becomes a ``UserError``.
    """
    spec_s = str(spec)
    if is_sample_name(spec_s):
        img = load_sample(spec_s)
        return _cap_pixels(img, max_pixels, spec_s)
    path = Path(spec)
    if not path.exists():
        hint = f"; or use a sample image name such as {', '.join(SAMPLE_NAMES[:4])}"
        raise DataNotFound(f"image {path} does not exist; check the path{hint}")
    if path.is_dir():
        raise ImageReadError(f"{path} is a folder, not an image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                w, h = opened.size
                if w * h > BOMB_PIXELS:
                    raise ImageReadError(
                        f"{path} declares {w}×{h} pixels (a decompression bomb?); "
                        f"refusing images over {BOMB_PIXELS:,} pixels"
                    )
                if max_pixels and w * h > max_pixels and opened.format == "JPEG":
                    scale = (max_pixels / (w * h)) ** 0.5
                    opened.draft("RGB", (max(1, int(w * scale)), max(1, int(h * scale))))
                opened.load()
                img = ImageOps.exif_transpose(opened)
                img = _to_rgb(img)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"{path} is too large to decode safely ({exc})") from None
    except UnidentifiedImageError:
        raise ImageReadError(
            f"{path} is not an image PIL can read; convert it to PNG or JPEG"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageReadError(
            f"{path} cannot be decoded ({reason}); the file may be truncated or corrupt"
        ) from None
    return _cap_pixels(img, max_pixels, str(path), declared=(w, h))


def _cap_pixels(
    img: Image.Image, max_pixels: int | None, name: str, declared: tuple[int, int] | None = None
) -> Image.Image:
    w, h = img.size
    if max_pixels and w * h > max_pixels:
        scale = (max_pixels / (w * h)) ** 0.5
        size = (max(1, int(w * scale)), max(1, int(h * scale)))
        img = img.resize(size, Image.Resampling.LANCZOS)
    if declared is not None and declared[0] * declared[1] > (max_pixels or np.inf):
        _note(f"{name} is {declared[0]}×{declared[1]}; downscaled to {img.size[0]}×{img.size[1]} "
              f"(pixel cap {max_pixels:,})")
    elif declared is None and (w, h) != img.size:
        _note(f"{name} downscaled from {w}×{h} to {img.size[0]}×{img.size[1]}")
    return img


def _array_to_rgb(arr: np.ndarray) -> Image.Image:
    """Any-depth numpy image (H, W), (H, W, 1|2|3|4) → 8-bit RGB, full range kept."""
    a = np.asarray(arr)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.dtype != np.uint8:
        a = a.astype(np.float64)
        if np.issubdtype(arr.dtype, np.floating):
            lo, hi = (0.0, 1.0) if a.size and a.min() >= 0 and a.max() <= 1 else (a.min(), a.max())
        elif a.size and a.max() > 255:
            lo, hi = 0.0, 65535.0 if a.max() <= 65535 else float(a.max())
        else:
            lo, hi = 0.0, 255.0
        a = np.clip((a - lo) / max(hi - lo, 1e-12), 0, 1)
        a = np.round(a * 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    elif a.ndim == 3 and a.shape[-1] in (1, 2):
        alpha = a[..., 1:2].astype(np.float32) / 255 if a.shape[-1] == 2 else None
        grey = a[..., :1].astype(np.float32)
        if alpha is not None:
            grey = grey * alpha + 255 * (1 - alpha)
        a = np.repeat(np.round(grey).astype(np.uint8), 3, axis=-1)
    elif a.ndim == 3 and a.shape[-1] == 4:
        rgb = a[..., :3].astype(np.float32)
        alpha = a[..., 3:4].astype(np.float32) / 255
        a = np.round(rgb * alpha + 255 * (1 - alpha)).astype(np.uint8)
    elif not (a.ndim == 3 and a.shape[-1] == 3):
        raise ImageReadError(f"unsupported image array shape {tuple(a.shape)}; expected H×W×3")
    return Image.fromarray(np.ascontiguousarray(a), "RGB")


def _to_rgb(img: Image.Image) -> Image.Image:
    """PIL image of any mode → 8-bit RGB (alpha composited over white)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _array_to_rgb(np.asarray(img))
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # CMYK, L, 1, YCbCr, LAB, HSV


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB ``PIL.Image`` → float tensor (3, H, W) in [0, 1]."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def tensor_to_pil(x: torch.Tensor) -> Image.Image:
    """Float tensor (3, H, W) or (1, 3, H, W) in [0, 1] → RGB ``PIL.Image`` (clamped)."""
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of {x.shape[0]}")
        x = x[0]
    arr = (x.detach().float().clamp(0, 1).cpu().permute(1, 2, 0).numpy() * 255.0).round()
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def resize_to(img: Image.Image, size: int | None) -> Image.Image:
    """Scale so the longer side is ``size`` pixels (``None`` keeps the image)."""
    if size is None:
        return img
    if size < 1:
        raise InvalidValue(f"image size must be a positive number of pixels, got {size}")
    w, h = img.size
    scale = size / max(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    return img if new == (w, h) else img.resize(new, Image.Resampling.LANCZOS)


def read_image(
    spec: str | Path, size: int | None = None, *, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> torch.Tensor:
    """:func:`load_image` → longer side ``size`` → float tensor (1, 3, H, W) in [0, 1]."""
    return pil_to_tensor(resize_to(load_image(spec, max_pixels=max_pixels), size)).unsqueeze(0)


def encode_image(x: torch.Tensor | Image.Image, fmt: str = "PNG") -> bytes:
    """Encode an image tensor or ``PIL.Image`` as PNG/JPEG/… bytes."""
    img = x if isinstance(x, Image.Image) else tensor_to_pil(x)
    buf = io.BytesIO()
    kwargs = {"quality": 95} if fmt.upper() in ("JPEG", "JPG") else {}
    img.save(buf, format="JPEG" if fmt.upper() == "JPG" else fmt.upper(), **kwargs)
    return buf.getvalue()


def save_image(x: torch.Tensor | Image.Image, path: str | Path) -> Path:
    """Write an image atomically; the format follows the suffix (PNG when unknown)."""
    path = Path(path)
    suffix = path.suffix.lower()
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP",
           ".tif": "TIFF", ".tiff": "TIFF"}.get(suffix, "PNG")
    atomic_write_bytes(path, encode_image(x, fmt))
    return path


def list_images(inputs: Iterable[str | Path] | str | Path) -> list[Path]:
    """Expand files and folders (recursively) into a sorted list of image files."""
    if isinstance(inputs, str | Path):
        inputs = [inputs]
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES
                           and q.is_file() and not q.name.startswith("."))
            if not found:
                raise DataNotFound(f"folder {p} holds no images ({', '.join(IMAGE_SUFFIXES[:4])}, …)")
            out.extend(found)
        elif p.exists() or is_sample_name(str(p)):
            out.append(p)
        else:
            raise DataNotFound(f"image or folder {p} does not exist")
    return out


def is_image_path(path: str | Path, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> bool:
    """True when ``path`` names an image file by its suffix (used to tell files from folders)."""
    return Path(path).suffix.lower() in suffixes
