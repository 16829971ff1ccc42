"""Mutated image files for fuzz tests: small valid seeds and reproducible mutations.

Used by ``tests/test_data_fuzz.py`` (the decoder) and meant for any other entry point that
takes untrusted image bytes (the server's upload path): build the seeds once with
:func:`seed_images`, then either iterate :func:`corpus` (a plain seeded generator) or draw
from the Hypothesis strategy :func:`mutated_images` (shrinks a failing file to a minimal
list of mutations).

Mutations (:func:`apply`), each described as a small tuple so that a failure can be
replayed: bit flips, byte overwrites with boundary values, truncations, deleted, inserted
and duplicated blocks, **header field edits** (width/height set to 0, 1, huge or random
values in the PNG IHDR — CRC fixed so the parser believes it —, JPEG SOF, TIFF IFD, GIF
screen, BMP header, WebP VP8/VP8L) and **chunk length lies** (PNG chunk and JPEG segment
lengths changed, with and without a recomputed CRC).
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image

Mutation = tuple[Any, ...]

# boundary values for bytes and for image dimensions
_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF)
_DIMS = (0, 1, 2, 255, 256, 4096, 50_000, 65_535, 65_536, 2**24, 2**31 - 1, 2**32 - 1)
KINDS = ("flip", "set", "truncate", "delete", "insert", "dup", "dims", "chunk_len")


# ----------------------------------------------------------------------------- seeds


def _save(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def lying_png(width: int = 64, height: int = 64) -> bytes:
    """A 68-byte PNG whose IHDR claims ``width × height`` RGB pixels but whose IDAT holds
    10 — the file that segfaulted torchvision's ``decode_image`` (libpng, exit 139)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\0" * 10)) + _png_chunk(b"IEND", b""))


def seed_images(w: int = 24, h: int = 16) -> dict[str, bytes]:
    """Small valid files covering the formats and modes the decoder meets."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    grey = rgb.convert("L")
    rgba = rgb.copy()
    rgba.putalpha(Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L"))
    deep = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    exif = Image.Exif()
    exif[0x0112] = 6
    return {
        "png-rgb": _save(rgb, "PNG"),
        "png-grey": _save(grey, "PNG"),
        "png-rgba": _save(rgba, "PNG"),
        "png-la": _save(rgba.convert("LA"), "PNG"),
        "png-16bit": _save(deep, "PNG"),
        "png-palette-transparent": _save(pal, "PNG", transparency=0),
        "png-optimized": _save(rgb, "PNG", optimize=True),
        "png-lying": lying_png(),
        "jpeg": _save(rgb, "JPEG", quality=90),
        "jpeg-progressive": _save(rgb, "JPEG", progressive=True),
        "jpeg-grey": _save(grey, "JPEG"),
        "jpeg-cmyk": _save(rgb.convert("CMYK"), "JPEG"),
        "jpeg-exif-rotated": _save(rgb, "JPEG", exif=exif),
        "tiff": _save(rgb, "TIFF"),
        "tiff-lzw": _save(rgb, "TIFF", compression="tiff_lzw"),
        "tiff-16bit": _save(deep, "TIFF"),
        "webp": _save(rgb, "WEBP", quality=80),
        "webp-lossless": _save(rgba, "WEBP", lossless=True),
        "gif": _save(pal, "GIF"),
        "bmp": _save(rgb, "BMP"),
    }


# ----------------------------------------------------------------------------- header fields


def _png_ihdr_dims(data: bytearray, w: int, h: int, fix_crc: bool = True) -> None:
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 33:
        data[16:24] = struct.pack(">II", w & 0xFFFFFFFF, h & 0xFFFFFFFF)
        if fix_crc:
            data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))


def _jpeg_segments(data: bytes) -> Iterator[tuple[int, int]]:
    """(offset of the marker, marker byte) of each JPEG segment before the scan data."""
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        yield i, marker
        if marker == 0xDA:
            return
        i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]


def _jpeg_dims(data: bytearray, w: int, h: int) -> None:
    for off, marker in _jpeg_segments(bytes(data)):
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and off + 9 <= len(data):
            data[off + 5:off + 9] = struct.pack(">HH", h & 0xFFFF, w & 0xFFFF)
            return


def _tiff_dims(data: bytearray, w: int, h: int) -> None:
    if data[:2] not in (b"II", b"MM") or len(data) < 8:
        return
    e = "<" if data[:2] == b"II" else ">"
    ifd = struct.unpack(e + "I", data[4:8])[0]
    if ifd + 2 > len(data):
        return
    for k in range(struct.unpack(e + "H", data[ifd:ifd + 2])[0]):
        off = ifd + 2 + 12 * k
        if off + 12 > len(data):
            return
        tag, typ = struct.unpack(e + "HH", data[off:off + 4])
        if tag in (256, 257):
            value = w if tag == 256 else h
            if typ == 3:  # SHORT
                data[off + 8:off + 10] = struct.pack(e + "H", value & 0xFFFF)
            else:
                data[off + 8:off + 12] = struct.pack(e + "I", value & 0xFFFFFFFF)


def _dims(data: bytearray, w: int, h: int) -> None:
    """Set the declared width/height in the format's header (a no-op for unknown bytes)."""
    if data[:4] == b"\x89PNG":
        _png_ihdr_dims(data, w, h)
    elif data[:2] == b"\xff\xd8":
        _jpeg_dims(data, w, h)
    elif data[:2] in (b"II", b"MM"):
        _tiff_dims(data, w, h)
    elif data[:3] == b"GIF" and len(data) >= 10:
        data[6:10] = struct.pack("<HH", w & 0xFFFF, h & 0xFFFF)
    elif data[:2] == b"BM" and len(data) >= 26:
        data[18:26] = struct.pack("<ii", min(w, 2**31 - 1), min(h, 2**31 - 1))
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        if data[12:16] == b"VP8 ":
            data[26:30] = struct.pack("<HH", w & 0x3FFF, h & 0x3FFF)
        elif data[12:16] == b"VP8L" and len(data) >= 25:
            bits = ((w - 1) & 0x3FFF) | (((h - 1) & 0x3FFF) << 14)
            data[21:25] = struct.pack("<I", bits | (struct.unpack("<I", data[21:25])[0] & ~0xFFFFFFF))


def _chunk_len(data: bytearray, index: int, value: int, fix_crc: bool) -> None:
    """Lie about the length of the ``index``-th PNG chunk or JPEG segment."""
    if data[:4] == b"\x89PNG":
        off, k = 8, 0
        while off + 8 <= len(data):
            n = struct.unpack(">I", data[off:off + 4])[0]
            if k == index % 4:
                data[off:off + 4] = struct.pack(">I", value & 0xFFFFFFFF)
                end = off + 8 + (value & 0xFFFFFFFF)
                if fix_crc and end + 4 <= len(data):
                    data[end:end + 4] = struct.pack(">I", zlib.crc32(bytes(data[off + 4:end])))
                return
            off, k = off + 12 + n, k + 1
    elif data[:2] == b"\xff\xd8":
        segs = list(_jpeg_segments(bytes(data)))
        if segs:
            off = segs[index % len(segs)][0]
            if off + 4 <= len(data):
                data[off + 2:off + 4] = struct.pack(">H", value & 0xFFFF)


# ----------------------------------------------------------------------------- mutations


def apply(data: bytes, mutations: Sequence[Mutation]) -> bytes:
    """Apply ``mutations`` in order (positions are fractions of the current length)."""
    b = bytearray(data)
    for m in mutations:
        kind = m[0]
        pos = min(int(m[1] * len(b)), max(len(b) - 1, 0)) if len(m) > 1 and isinstance(m[1], float) else 0
        if kind == "flip" and b:
            b[pos] ^= 1 << (m[2] % 8)
        elif kind == "set" and b:
            b[pos] = m[2] & 0xFF
        elif kind == "truncate":
            del b[pos:]
        elif kind == "delete":
            del b[pos:pos + m[2]]
        elif kind == "insert":
            b[pos:pos] = bytes(m[2])
        elif kind == "dup":
            b[pos:pos] = b[pos:pos + m[2]]
        elif kind == "dims":
            _dims(b, m[2], m[3])
        elif kind == "chunk_len":
            _chunk_len(b, m[2], m[3], m[4])
    return bytes(b)


def random_mutation(rng: random.Random) -> Mutation:
    """One mutation drawn from ``rng`` (header edits and boundary values favoured)."""
    kind = rng.choice((*KINDS, "flip", "dims", "chunk_len"))
    pos = rng.random()
    if kind == "flip":
        return ("flip", pos, rng.randrange(8))
    if kind == "set":
        return ("set", pos, rng.choice(_BYTES) if rng.random() < 0.7 else rng.randrange(256))
    if kind == "truncate":
        return ("truncate", pos)
    if kind in ("delete", "dup"):
        return (kind, pos, rng.randint(1, 64))
    if kind == "insert":
        return ("insert", pos, tuple(rng.randrange(256) for _ in range(rng.randint(1, 16))))
    if kind == "dims":
        def dim() -> int:
            return rng.choice(_DIMS) if rng.random() < 0.8 else rng.randrange(1, 70_000)
        return ("dims", pos, dim(), dim())
    value = rng.choice((0, 1, 13, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF)) if rng.random() < 0.6 \
        else rng.randrange(0, 5000)
    return ("chunk_len", pos, rng.randrange(8), value, rng.random() < 0.5)


def corpus(n: int, seed: int = 0, seeds: dict[str, bytes] | None = None,
           ) -> Iterator[tuple[str, bytes]]:
    """``n`` mutated files ``(label, bytes)``: a seed file with 1–3 random mutations.

    The label names the seed and the mutations, so a failure can be replayed with
    :func:`apply`.
    """
    seeds = seeds or seed_images()
    names = sorted(seeds)
    rng = random.Random(seed)
    for _ in range(n):
        name = rng.choice(names)
        muts = [random_mutation(rng) for _ in range(rng.randint(1, 3))]
        yield f"{name} {muts!r}", apply(seeds[name], muts)


def mutated_images(seeds: dict[str, bytes] | None = None) -> Any:
    """A Hypothesis strategy of ``(label, bytes)`` like :func:`corpus`'s, which shrinks a
    failing file towards fewer and simpler mutations."""
    from hypothesis import strategies as st  # the plain generator above needs no Hypothesis

    seeds = seeds or seed_images()

    @st.composite
    def draw(d: Any) -> tuple[str, bytes]:
        name = d(st.sampled_from(sorted(seeds)))
        muts = d(st.lists(st.randoms(use_true_random=False).map(random_mutation),
                          min_size=1, max_size=3))
        return f"{name} {muts!r}", apply(seeds[name], muts)

    return draw()
