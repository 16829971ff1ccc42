"""Shared pieces of the ``droplab serve`` tests: real tiny runs, image bytes, raw sockets.

The runs are real: a tiny digits MLP trained for one epoch and a tiny style network trained
for two steps, both through ``droplab.cli.main`` (:func:`make_runs`, once per session).
"""

from __future__ import annotations

import io
import os
import socket
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from droplab.cli import main

REPO = Path(__file__).resolve().parents[1]


def png_bytes(img: Image.Image, fmt: str = "PNG", **save: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def noise_png(side: int, seed: int = 0) -> bytes:
    """An RGB noise PNG of about 3·side² bytes (noise does not compress)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    return png_bytes(Image.fromarray(pixels), compress_level=1)


_RUNS: dict[str, Path] = {}


def make_runs(tmp_path_factory: pytest.TempPathFactory, style: bool = True) -> dict[str, Path]:
    """The tiny runs ``digits`` (and ``style`` unless ``style=False``) in a session
    temporary folder (``root``), each trained on its first request of the session; test
    modules wrap this in a ``runs`` fixture and must not write into these folders."""
    if "root" not in _RUNS:
        _RUNS["root"] = tmp_path_factory.mktemp("serve")
        os.environ["DROPLAB_PROGRESS"] = "0"
    root = _RUNS["root"]
    if "digits" not in _RUNS:
        assert main(["train", "--dataset", "digits", "--model", "mlp", "--widths", "32",
                     "--dropout", "0.3", "--epochs", "1", "--device", "cpu", "--out",
                     str(root / "digits")]) == 0
        _RUNS["digits"] = root / "digits"
    if style and "style" not in _RUNS:
        content = root / "content"
        content.mkdir()
        rng = np.random.default_rng(0)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
                            ).save(content / f"{i}.png")
        assert main(["style-train", "--style", "coffee", "--content-dir", str(content),
                     "--steps", "2", "--image-size", "32", "--batch-size", "2", "--width", "4",
                     "--n-residual", "1", "--encoder", "random", "--dropout", "0.3",
                     "--device", "cpu", "--out", str(root / "style")]) == 0
        _RUNS["style"] = root / "style"
    return dict(_RUNS)


def check_error(r: httpx.Response, status: int, *words: str) -> str:
    """A one-line JSON error with the expected status and no server internals."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"} and "\n" not in body["error"] and body["error"]
    assert "Traceback" not in r.text and 'File "' not in r.text
    for w in words:
        assert w in body["error"], body["error"]
    return body["error"]


def healthy(client: httpx.Client) -> dict:
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json()["ok"] is True
    return r.json()


# ------------------------------------------------------------------------------ raw sockets
def connect(url: str, timeout: float = 30.0) -> socket.socket:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=timeout)
    s.settimeout(timeout)
    return s


def read_until_closed(s: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when it closed
    (``time.monotonic()``)."""
    out = b""
    while True:
        try:
            data = s.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            return out, time.monotonic()
        out += data


def request_head(path: str, content_type: str, length: int) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, lower-cased headers and body of one raw HTTP/1.1 response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    return status, headers, body


# ------------------------------------------------------------------------------ mutations
# A small mutation generator for the upload fuzz (data14's tests/fuzzing.py replaces it once
# it lands). Seeds: small valid PNG / JPEG / TIFF / WebP files in several modes; mutations:
# bit flips, truncation, byte runs overwritten, slices deleted or duplicated, and header
# edits that lie — PNG IHDR dimensions and chunk lengths, JPEG SOF dimensions, TIFF
# width/height/strip tags, WebP RIFF and chunk sizes.
LIES = (0, 1, 255, 65535, 50_000, 2**31 - 1, 2**32 - 1)


def seed_images() -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    grey16 = Image.fromarray(rng.integers(0, 65535, (20, 20), dtype=np.uint16))
    out = [("PNG", png_bytes(im)) for im in
           (rgb, rgb.convert("L"), rgb.convert("P"), rgb.convert("RGBA"), grey16)]
    out += [("JPEG", png_bytes(rgb, "JPEG", quality=q, progressive=p))
            for q, p in ((90, False), (50, True))]
    out += [("JPEG", png_bytes(rgb.convert("CMYK"), "JPEG")),
            ("JPEG", png_bytes(rgb.convert("L"), "JPEG"))]
    out += [("TIFF", png_bytes(rgb, "TIFF", compression=c))
            for c in (None, "tiff_lzw", "tiff_adobe_deflate", "packbits")]
    out += [("WEBP", png_bytes(rgb, "WEBP", quality=80)),
            ("WEBP", png_bytes(rgb.convert("RGBA"), "WEBP", lossless=True))]
    return out


def _put(b: bytearray, at: int, value: int, size: int, order: str) -> None:
    if at >= 0 and at + size <= len(b):
        b[at:at + size] = (value % 256**size).to_bytes(size, order)  # type: ignore[arg-type]


def _header_lie(kind: str, b: bytearray, rng: np.random.Generator) -> None:
    lie = int(rng.choice(LIES))
    if kind == "PNG":  # IHDR width/height (offset 16/20; CRC fixed), or a chunk length
        if rng.random() < 0.5:
            _put(b, 16 + 4 * int(rng.integers(2)), lie, 4, "big")
            _put(b, 29, zlib.crc32(bytes(b[12:29])), 4, "big")
        else:
            pos, starts = 8, []
            while pos + 8 <= len(b):
                starts.append(pos)
                pos += 12 + int.from_bytes(b[pos:pos + 4], "big")
            _put(b, int(rng.choice(starts)), lie, 4, "big")
    elif kind == "JPEG":  # SOFn height/width (2 bytes each after the precision byte)
        sof = max(b.find(b"\xff\xc0"), b.find(b"\xff\xc2"))
        if sof > 0:
            _put(b, sof + 5 + 2 * int(rng.integers(2)), lie, 2, "big")
    elif kind == "TIFF":  # an IFD entry's value: width, height, strip offsets / byte counts
        ifd = int.from_bytes(b[4:8], "little")
        n = int.from_bytes(b[ifd:ifd + 2], "little") if ifd + 2 <= len(b) else 0
        entries = [ifd + 2 + 12 * i for i in range(n)
                   if int.from_bytes(b[ifd + 2 + 12 * i:ifd + 4 + 12 * i], "little")
                   in (256, 257, 273, 279)]
        if entries:
            _put(b, int(rng.choice(entries)) + 8, lie, 4, "little")
    else:  # WebP: the RIFF size (offset 4) or the first chunk's size (offset 16)
        _put(b, 4 if rng.random() < 0.5 else 16, lie, 4, "little")


def mutate(kind: str, data: bytes, rng: np.random.Generator) -> bytes:
    """One to three random mutations of ``data``."""
    b = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        op = int(rng.integers(6))
        n = len(b)
        if n < 2:
            break
        i = int(rng.integers(n))
        if op == 0:  # flip 1–8 bits
            for j in rng.integers(0, n, int(rng.integers(1, 9))):
                b[int(j)] ^= 1 << int(rng.integers(8))
        elif op == 1:  # truncate
            del b[max(1, i):]
        elif op == 2:  # overwrite a run with 0x00, 0xFF or noise
            k = int(rng.integers(1, 64))
            fill = [bytes(k), b"\xff" * k, rng.integers(0, 256, k, dtype=np.uint8).tobytes()]
            b[i:i + k] = fill[int(rng.integers(3))][: n - i]
        elif op == 3:  # delete a slice
            del b[i:i + int(rng.integers(1, 256))]
        elif op == 4:  # duplicate a slice somewhere else
            k = int(rng.integers(1, 256))
            b[int(rng.integers(n)):0] = b[i:i + k]
        else:
            _header_lie(kind, b, rng)
    return bytes(b)


def mutated_images(n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """``n`` mutated image files ``(format, bytes)``, cycling through :func:`seed_images`."""
    rng = np.random.default_rng(seed)
    seeds = seed_images()
    return [(kind, mutate(kind, data, rng)) for kind, data in
            (seeds[i % len(seeds)] for i in range(n))]
