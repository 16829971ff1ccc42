"""Which images the page shows (``droplab.report.images``): sequences, thinning, and the
check every image passes before its bytes are embedded."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import droplab.report.images as I
from droplab.report.images import Embedded, image_sequences, read_embeddable, select_images, thin
from droplab.report.skipped import Skipped
from report_runs import png


def _encoded(fmt: str, size: tuple[int, int] = (20, 12)) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and an IHDR claiming ``width × height``, and no pixel data at all."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr
    chunk += struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return b"\x89PNG\r\n\x1a\n" + chunk


@pytest.mark.parametrize(("fmt", "mime"), [("PNG", "image/png"), ("JPEG", "image/jpeg"),
                                           ("GIF", "image/gif"), ("WEBP", "image/webp")])
def test_browser_formats_are_embedded_with_the_mime_of_their_bytes(
    fmt: str, mime: str, tmp_path: Path
) -> None:
    data = _encoded(fmt)
    # the file name says .png whatever it holds: the MIME type comes from the bytes
    path = tmp_path / "img.png"
    path.write_bytes(data)
    got = read_embeddable(path, "img.png")
    assert isinstance(got, Embedded) and got.mime == mime and got.data == data
    assert got.uri.startswith(f"data:{mime};base64,")


# the decoder's own wording (None here) belongs to the decoder; the report only relays it
@pytest.mark.parametrize(("name", "make", "needle"), [
    ("truncated", lambda: _encoded("PNG")[:60], None),
    ("truncated jpeg", lambda: _encoded("JPEG", (64, 64))[:300], None),
    ("text", lambda: b"hello, not an image", "not a PNG, JPEG, GIF or WebP"),
    ("empty", lambda: b"", "not a PNG, JPEG, GIF or WebP"),
    ("tiff named png", lambda: _encoded("TIFF"), "not a PNG, JPEG, GIF or WebP"),
    ("header only, 68 bytes", lambda: _png_header_only(32, 32), None),
    ("50000 x 50000 header", lambda: _png_header_only(50_000, 50_000), None),
])
def test_broken_images_are_refused_with_a_reason(
    name: str, make: object, needle: str | None, tmp_path: Path
) -> None:
    path = tmp_path / "bad.png"
    path.write_bytes(make())  # type: ignore[operator]
    got = read_embeddable(path, "bad.png")
    assert isinstance(got, Skipped) and got.kind == "broken image", got
    assert got.path == str(path) and got.reason and "\n" not in got.reason
    assert needle is None or needle in got.reason
    assert str(path) not in got.reason  # the path is said once, in front of the reason


def test_oversized_and_vanished_files_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.png"
    path.write_bytes(_encoded("PNG", (64, 64)))
    monkeypatch.setattr(I, "MAX_IMAGE_BYTES", 100)
    got = read_embeddable(path, "big.png")
    assert isinstance(got, Skipped) and "over the" in got.reason
    monkeypatch.setattr(I, "MAX_IMAGE_BYTES", 2**20)
    monkeypatch.setattr(I, "MAX_PIXELS", 64 * 64 - 1)  # refused from the header, one pixel over
    got = read_embeddable(path, "big.png")
    assert isinstance(got, Skipped) and got.kind == "broken image"
    monkeypatch.setattr(I, "MAX_PIXELS", 64 * 64)
    assert isinstance(read_embeddable(path, "big.png"), Embedded)
    got = read_embeddable(tmp_path / "gone.png", "gone.png")
    assert isinstance(got, Skipped) and got.kind == "missing file"


def test_image_sequences_of_gan_and_style_runs(tmp_path: Path) -> None:
    # gan: samples_epoch_XXX.png; stylize: step-XXXXX.png beside stylized.png
    names = ["samples_epoch_002.png", "samples_epoch_010.png", "samples_epoch_001.png",
             "step-00050.png", "step-00100.png", "stylized.png", "samples.png"]
    for i, n in enumerate(names):
        png(tmp_path / n, i, 8)
    seqs, singles = image_sequences(sorted(tmp_path.iterdir()), tmp_path)
    assert {k: [n for n, _ in v] for k, v in seqs.items()} == {
        "samples (epoch)": [1, 2, 10], "steps": [50, 100]}
    assert sorted(p.name for p in singles) == ["samples.png", "stylized.png"]


def test_thin_keeps_first_and_last() -> None:
    frames = list(range(37))
    t = thin(frames, 10)
    assert len(t) == 10 and t[0] == 0 and t[-1] == 36 and t == sorted(set(t))
    assert thin(frames[:4], 10) == frames[:4]


def test_a_broken_frame_leaves_the_rest_of_its_sequence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for e in range(1, 6):
        png(tmp_path / f"samples_epoch_{e}.png", e, 8)
    (tmp_path / "samples_epoch_3.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    for i in range(5):
        png(tmp_path / f"single_{chr(97 + i)}.png", 10 + i, 8)
    (tmp_path / "single_b.png").write_text("no image")
    monkeypatch.setattr(I, "MAX_IMAGES", 3)
    skipped: list[Skipped] = []
    images = sorted(tmp_path.iterdir())
    seqs, gallery, n_singles = select_images(images, tmp_path, skipped)
    assert [f.name for f in seqs[0].frames] == [f"samples_epoch_{e}.png" for e in (1, 2, 4, 5)]
    assert seqs[0].total == 5
    # the gallery fills its 3 places from the readable images, in order
    assert [g.name for g in gallery] == ["single_a.png", "single_c.png", "single_d.png"]
    assert n_singles == 5
    assert sorted(Path(s.path).name for s in skipped) == ["samples_epoch_3.png", "single_b.png"]
