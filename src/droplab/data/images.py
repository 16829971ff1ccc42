"""Single images for style transfer and the server: paths or sample names in, RGB out.

:func:`load_image` turns whatever a user names into an 8-bit RGB ``PIL.Image`` through the
one decoder (:func:`droplab.data.decode.decode_image`), or raises one one-line
:class:`~droplab.errors.UserError`:

- a missing path → :class:`~droplab.errors.DataNotFound`;
- an unreadable, truncated or non-image file → :class:`~droplab.errors.ImageReadError`;
- a header declaring more than PIL's ``Image.MAX_IMAGE_PIXELS`` → ``ImageTooLarge`` before
  any pixel is decoded;
- an image above ``max_pixels`` (:data:`DEFAULT_MAX_PIXELS`) is downscaled (JPEGs decode
  at a reduced scale through ``draft``) with one note on stderr;
- EXIF orientation, CMYK, greyscale, palette, alpha (over white) and 16-bit images are
  handled by the decoder.

Names of scikit-image's embedded sample images (``astronaut``, ``coffee``, …,
:data:`SAMPLE_NAMES`) are accepted wherever a path is, and need no download.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from droplab.data.decode import decode_image, to_8bit
from droplab.errors import DataNotFound, ImageReadError, InvalidValue, unknown_name
from droplab.fileio import atomic_write_bytes

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

#: scikit-image sample images shipped inside the package (``skimage.data.<name>()``).
SAMPLE_NAMES: tuple[str, ...] = (
    "astronaut", "brick", "camera", "cat", "chelsea", "checkerboard", "clock", "coffee",
    "coins", "colorwheel", "grass", "gravel", "horse", "hubble_deep_field",
    "immunohistochemistry", "logo", "moon", "page", "retina", "rocket", "text",
)
#: File suffixes treated as images when a folder of inputs is listed (style inputs).
IMAGE_SUFFIXES: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
)
#: Default cap on decoded pixels (4096 × 4096); larger images are downscaled with a note.
DEFAULT_MAX_PIXELS = 4096 * 4096
_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF",
            ".tiff": "TIFF", ".png": "PNG"}


def _note(msg: str) -> None:
    print(f"droplab: note: {msg}", file=sys.stderr)


def is_sample_name(spec: str) -> bool:
    return spec in SAMPLE_NAMES and not Path(spec).exists()


def load_sample(name: str) -> Image.Image:
    """One of scikit-image's embedded sample images as an RGB ``PIL.Image``."""
    import skimage.data  # heavy (≈ 1 s): only sample names need it

    if name not in SAMPLE_NAMES:
        raise unknown_name("sample image", name, SAMPLE_NAMES)
    a = np.asarray(getattr(skimage.data, name)())
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise ImageReadError(f"sample {name!r} has an unexpected shape {a.shape} / {a.dtype}")
    return to_8bit(Image.fromarray(np.ascontiguousarray(a)), "RGB")


def _downscale(img: Image.Image, max_pixels: int | None) -> Image.Image:
    w, h = img.size
    if not max_pixels or w * h <= max_pixels:
        return img
    scale = (max_pixels / (w * h)) ** 0.5
    return img.resize((max(1, int(w * scale)), max(1, int(h * scale))), Image.Resampling.LANCZOS)


def load_image(spec: str | Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read ``spec`` (a path or a sample name) as an 8-bit RGB ``PIL.Image``.

    See the module docstring for what is handled and what becomes a ``UserError``.
    """
    spec_s = str(spec)
    if is_sample_name(spec_s):
        img = load_sample(spec_s)
        out = _downscale(img, max_pixels)
        if out.size != img.size:
            _note(f"{spec_s} downscaled from {img.size[0]}×{img.size[1]} to "
                  f"{out.size[0]}×{out.size[1]}")
        return out
    path = Path(spec)
    if not path.exists():
        hint = f"; or use a sample image name such as {', '.join(SAMPLE_NAMES[:4])}"
        raise DataNotFound(f"image {path} does not exist; check the path{hint}")
    decoded = decode_image(path, max_pixels=max_pixels, too_large="downscale")
    if max_pixels and decoded.width * decoded.height > max_pixels:
        _note(f"{path} is {decoded.width}×{decoded.height}; downscaled to "
              f"{decoded.image.size[0]}×{decoded.image.size[1]} (pixel cap {max_pixels:,})")
    return decoded.image


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


def image_format(path: str | Path) -> str:
    """The PIL format a file name's suffix asks for (PNG when unknown)."""
    return _FORMATS.get(Path(path).suffix.lower(), "PNG")


def encode_image(x: torch.Tensor | Image.Image, fmt: str = "PNG") -> bytes:
    """Encode an image tensor or ``PIL.Image`` as PNG/JPEG/… bytes."""
    img = x if isinstance(x, Image.Image) else tensor_to_pil(x)
    buf = io.BytesIO()
    kwargs = {"quality": 95} if fmt.upper() in ("JPEG", "JPG") else {}
    img.save(buf, format="JPEG" if fmt.upper() == "JPG" else fmt.upper(), **kwargs)
    return buf.getvalue()


def save_image(x: torch.Tensor | Image.Image, path: str | Path) -> Path:
    """Write an image atomically (:mod:`droplab.fileio`); the format follows the suffix
    (PNG when unknown)."""
    path = Path(path)
    atomic_write_bytes(path, encode_image(x, image_format(path)))
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
