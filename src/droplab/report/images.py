"""The images of a run folder as the page shows them: sequences, a gallery, each one checked.

The page embeds an image's own bytes as a ``data:`` URI, so an image is shown only when
its bytes are a PNG, JPEG, GIF or WebP file (by signature, not by file name) of at most
:data:`MAX_PIXELS` pixels that the project's one image decoder reads completely; anything
else — a truncated PNG, a text file named ``.jpg``, a decompression bomb, a dangling link
— is left out and noted once.

Numbered files (``samples_epoch_003.png``, ``step-00100.png``) form sequences shown as a
timeline, thinned to :data:`MAX_FRAMES` evenly spaced frames that keep the first and the
last; the other images form a gallery of at most :data:`MAX_IMAGES`.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from droplab.data.decode import decode_image
from droplab.errors import UserError
from droplab.report.skipped import Skipped

#: File suffixes looked at, and the MIME type each one is expected to hold.
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
               ".gif": "image/gif", ".webp": "image/webp"}
#: Most single images embedded per run folder.
MAX_IMAGES = 48
#: Most frames of one sequence embedded.
MAX_FRAMES = 10
#: Largest image file embedded (the page carries it base64-encoded).
MAX_IMAGE_BYTES = 16 * 2**20
#: Most pixels an embedded image may declare (refused before decoding above this).
MAX_PIXELS = 40_000_000

_SEQ = re.compile(r"^(?P<stem>.*?)[_-]?(?P<unit>epoch|step|iter|it|e)[_-]?(?P<n>\d+)$", re.I)


@dataclass(frozen=True)
class Embedded:
    """An image checked and ready to embed: its name (relative to the run), bytes, MIME type."""

    name: str
    data: bytes
    mime: str

    @property
    def uri(self) -> str:
        return data_uri(self.data, self.mime)


@dataclass
class ImageSequence:
    """A numbered image series: ``total`` frames found, ``frames`` the thinned readable ones."""

    name: str
    total: int
    frames: list[Embedded] = field(default_factory=list)


def data_uri(data: bytes, mime: str = "image/png") -> str:
    """``data:<mime>;base64,…`` for embedding ``data`` in the page."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def sniff_mime(data: bytes) -> str | None:
    """The MIME type of a PNG, JPEG, GIF or WebP file from its first bytes, else ``None``."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def decode_problem(data: bytes, path: Path) -> str | None:
    """Why the project's one image decoder (:func:`droplab.data.decode.decode_image`) cannot
    read ``data`` completely, or ``None``.

    The header and :data:`MAX_PIXELS` are checked before any pixel is decoded, truncation is
    refused, so the report trusts exactly what datasets and serve trust.
    """
    try:
        decode_image(data, max_pixels=MAX_PIXELS, channels="auto", name=str(path))
    except UserError as exc:
        text = str(exc)
        return text.removeprefix(str(path)).lstrip(" :") or text
    return None


def read_embeddable(path: Path, name: str) -> Embedded | Skipped:
    """The image at ``path`` (shown as ``name``) ready to embed, or why it cannot be."""
    try:
        size = path.stat().st_size
        if size > MAX_IMAGE_BYTES:
            return Skipped(str(path), "broken image",
                           f"is {size / 2**20:.0f} MiB, over the {MAX_IMAGE_BYTES // 2**20} MiB "
                           "an embedded image may take")
        data = path.read_bytes()
    except FileNotFoundError:
        return Skipped(str(path), "missing file", "disappeared or is a dangling link")
    except OSError as exc:
        return Skipped(str(path), "broken image", f"cannot be read ({exc.strerror or exc})")
    mime = sniff_mime(data)
    if mime is None:
        return Skipped(str(path), "broken image", "is not a PNG, JPEG, GIF or WebP file")
    problem = decode_problem(data, path)
    if problem is not None:
        return Skipped(str(path), "broken image", problem)
    return Embedded(name, data, mime)


def image_sequences(images: Sequence[Path], root: Path) -> tuple[dict[str, list[tuple[int, Path]]], list[Path]]:
    """Split images into numbered sequences (``samples_epoch_003.png``) and single images."""
    seqs: dict[str, list[tuple[int, Path]]] = {}
    for img in images:
        m = _SEQ.match(img.stem)
        if m:
            name = f"{m['stem']} ({m['unit']})" if m["stem"] else f"{m['unit']}s"
            key = str(img.parent.relative_to(root) / name)
            seqs.setdefault(key, []).append((int(m["n"]), img))
    seqs = {k: sorted(v) for k, v in seqs.items() if len(v) >= 2}
    in_seq = {p for v in seqs.values() for _, p in v}
    return seqs, [p for p in images if p not in in_seq]


def thin(frames: list[Any], k: int = MAX_FRAMES) -> list[Any]:
    """At most ``k`` evenly spaced items, always keeping the first and the last."""
    if len(frames) <= k:
        return list(frames)
    idx = sorted({round(i * (len(frames) - 1) / (k - 1)) for i in range(k)})
    return [frames[i] for i in idx]


def select_images(
    images: Sequence[Path], root: Path, skipped: list[Skipped]
) -> tuple[list[ImageSequence], list[Embedded], int]:
    """The sequences (thinned) and gallery images to show, read and checked.

    Returns ``(sequences, gallery, number of single images found)``; each image that
    cannot be shown is appended to ``skipped``. Only the images shown are read.
    """

    def read(path: Path, name: str) -> Embedded | None:
        got = read_embeddable(path, name)
        if isinstance(got, Embedded):
            return got
        skipped.append(got)
        return None

    seqs, singles = image_sequences(images, root)
    sequences = []
    for name, frames in seqs.items():
        shown = [e for _n, p in thin(frames) if (e := read(p, p.name)) is not None]
        sequences.append(ImageSequence(name, len(frames), shown))
    gallery: list[Embedded] = []
    for p in singles:
        if len(gallery) == MAX_IMAGES:
            break
        if (e := read(p, str(p.relative_to(root)))) is not None:
            gallery.append(e)
    return sequences, gallery, len(singles)
