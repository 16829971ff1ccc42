"""droplab.data.decode: the one decoder — every mode to exact 8-bit L/RGB, every hostile file
refused in one line before any pixel is decoded, and the JPEG fast path equal to PIL's."""

from __future__ import annotations

import io
import struct
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile, ImageOps

import droplab.data.decode as dec
from droplab.data.decode import (
    ImageTooLarge,
    UnsupportedImage,
    decode_image,
    decode_many,
    decode_tensor,
    plain_jpeg_header,
    quiet_decoders,
    to_8bit,
)
from droplab.errors import DataNotFound, ImageReadError
from fuzzing import lying_png


def save(img: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def arr(img: Image.Image) -> np.ndarray:
    return np.asarray(img).astype(np.int64)


def rgb_noise(w: int = 24, h: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def one_line(e: pytest.ExceptionInfo[BaseException]) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg
    return msg


def png_with_header(w: int, h: int) -> bytes:
    """A PNG whose IHDR (CRC valid) declares w×h while its IDAT holds almost nothing."""
    data = bytearray(lying_png(8, 8))
    data[16:24] = struct.pack(">II", w, h)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


# ----------------------------------------------------------------------------- modes


def test_rgb_and_grey_exact() -> None:
    a = rgb_noise()
    d = decode_image(save(Image.fromarray(a)))
    assert d.image.mode == "RGB" and d.format == "PNG" and (d.width, d.height) == (24, 16)
    assert np.array_equal(np.asarray(d.image), a)  # PNG is lossless
    g = a[..., 0]
    t = decode_tensor(save(Image.fromarray(g, "L")))
    assert t.shape == (1, 16, 24) and t.dtype == torch.uint8 and np.array_equal(t[0].numpy(), g)
    rgb = decode_image(save(Image.fromarray(g, "L"))).image  # channels="RGB" (default)
    assert np.array_equal(np.asarray(rgb), np.repeat(g[..., None], 3, -1))
    lum = decode_image(save(Image.fromarray(a)), channels="L").image
    assert lum.mode == "L" and np.array_equal(np.asarray(lum), np.asarray(Image.fromarray(a).convert("L")))


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16bit_scaled_by_1_over_257_with_full_range(fmt: str) -> None:
    # a ramp 0…65535: PIL's convert("L") would clip everything above 255 to white
    ramp = np.linspace(0, 65535, 64 * 8).round().reshape(8, 64).astype(np.uint16)
    img = Image.fromarray(ramp)
    assert img.mode.startswith("I;16")
    t = decode_tensor(save(img, fmt))
    expect = (ramp.astype(np.int64) * 255 + 32767) // 65535  # round(v / 257)
    assert np.array_equal(t[0].numpy(), expect)
    assert int(t.min()) == 0 and int(t.max()) == 255
    assert np.abs(expect - ramp / 257.0).max() <= 0.5  # the rounding is to the nearest level


def test_big_endian_16bit_and_32bit_int_and_float() -> None:
    ramp = np.linspace(0, 65535, 40).round().reshape(5, 8).astype(np.uint16)
    be = Image.frombytes("I;16B", (8, 5), ramp.astype(">u2").tobytes())
    assert np.array_equal(arr(to_8bit(be, "auto")), (ramp.astype(np.int64) * 255 + 32767) // 65535)
    ints = Image.fromarray(ramp.astype(np.int32), "I")  # 32-bit ints within 0..65535
    assert np.abs(arr(to_8bit(ints, "auto")) - ramp / 65535 * 255).max() <= 0.5
    unit = np.linspace(0, 1, 40, dtype=np.float32).reshape(5, 8)
    f = Image.fromarray(unit, "F")  # floats in [0, 1]: scaled by 255
    assert np.abs(arr(to_8bit(f, "auto")) - unit * 255).max() <= 0.5
    wide = Image.fromarray((unit * 1000 - 500).astype(np.float32), "F")  # any other range: min–max
    out = arr(to_8bit(wide, "auto"))
    assert out.min() == 0 and out.max() == 255


def test_alpha_composited_over_white_exactly() -> None:
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (16, 24, 4), dtype=np.uint8)
    out = arr(decode_image(save(Image.fromarray(rgba, "RGBA"))).image)
    c, a = rgba[..., :3].astype(np.int64), rgba[..., 3:].astype(np.int64)
    assert np.abs(out - (c * a + 255 * (255 - a)) / 255).max() <= 0.5
    la = rgba[..., [0, 3]]
    t = decode_tensor(save(Image.fromarray(la, "LA")))
    g, a1 = la[..., 0].astype(np.int64), la[..., 1].astype(np.int64)
    assert t.shape[0] == 1 and np.abs(t[0].numpy() - (g * a1 + 255 * (255 - a1)) / 255).max() <= 0.5
    # fully transparent → white, opaque → the colour itself
    edge = np.zeros((2, 2, 4), np.uint8)
    edge[0, :, :3], edge[0, :, 3] = (10, 20, 30), 255
    assert arr(decode_image(save(Image.fromarray(edge, "RGBA"))).image).tolist() == \
        [[[10, 20, 30]] * 2, [[255, 255, 255]] * 2]


def test_palette_with_and_without_transparency() -> None:
    pal = Image.fromarray(rgb_noise()).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    expect = np.asarray(pal.convert("RGB"))
    assert np.array_equal(np.asarray(decode_image(save(pal)).image), expect)
    idx = np.asarray(pal)
    t_index = int(idx[0, 0])
    out = np.asarray(decode_image(save(pal, transparency=t_index)).image)
    assert (out[idx == t_index] == 255).all()  # the transparent colour became white
    assert np.array_equal(out[idx != t_index], expect[idx != t_index])


def test_one_bit_cmyk_and_other_colour_spaces() -> None:
    bits = Image.fromarray(rgb_noise()[..., 0] > 127)
    assert bits.mode == "1"
    t = decode_tensor(save(bits))
    assert set(t.unique().tolist()) <= {0, 255} and t.shape[0] == 1
    cmyk = Image.fromarray(rgb_noise()).convert("CMYK")
    assert np.array_equal(np.asarray(decode_image(save(cmyk, "TIFF")).image),
                          np.asarray(cmyk.convert("RGB")))  # lossless TIFF: PIL's conversion
    jpeg = decode_image(save(cmyk, "JPEG", quality=95)).image  # CMYK JPEG (Adobe APP14)
    assert jpeg.mode == "RGB" and np.abs(arr(jpeg) - arr(cmyk.convert("RGB"))).mean() < 8
    for mode in ("YCbCr", "LAB", "HSV", "RGBX"):
        img = Image.fromarray(rgb_noise()).convert(mode)
        assert np.array_equal(np.asarray(to_8bit(img)), np.asarray(img.convert("RGB")))
    premul = Image.fromarray(np.full((2, 2, 4), 255, np.uint8), "RGBA").convert("RGBa")
    assert to_8bit(premul).mode == "RGB"
    assert to_8bit(Image.new("La", (2, 2)), "auto").mode == "L"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil(orientation: int) -> None:
    a = rgb_noise(6, 4)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = save(Image.fromarray(a), "PNG", exif=exif)  # lossless, with an eXIf chunk
    got = np.asarray(decode_image(data).image)
    with Image.open(io.BytesIO(data)) as im:
        ref = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    assert np.array_equal(got, ref)
    if orientation == 6:  # "rotate 90° clockwise to display" (EXIF 2.3, tag 0x0112)
        assert np.array_equal(got, np.rot90(a, -1))
    if orientation == 8:
        assert np.array_equal(got, np.rot90(a, 1))
    d = decode_image(data)
    assert (d.width, d.height) == (6, 4)  # declared size, before rotation


def test_broken_exif_is_not_a_broken_image() -> None:
    data = save(Image.fromarray(rgb_noise()), "JPEG", exif=b"Exif\x00\x00MM\x00*garbage")
    assert decode_image(data).image.size == (24, 16)


# ----------------------------------------------------------------------------- hostile input


def test_lying_png_refused_in_one_line() -> None:
    data = lying_png()
    assert len(data) == 68
    with pytest.raises(ImageReadError) as e:
        decode_image(data, name="x.png")
    msg = one_line(e)
    assert "x.png" in msg and "truncated or corrupt" in msg
    assert not isinstance(e.value, ImageTooLarge | UnsupportedImage)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF", "WEBP", "GIF", "BMP"])
def test_truncated_files_refused_not_padded(fmt: str) -> None:
    data = save(Image.fromarray(rgb_noise(64, 64)).convert("P") if fmt == "GIF"
                else Image.fromarray(rgb_noise(64, 64)), fmt)
    for cut in (len(data) // 2, len(data) * 9 // 10):  # inside the pixel data
        with pytest.raises(ImageReadError) as e:
            decode_image(data[:cut])
        one_line(e)


def test_empty_text_and_other_formats_unsupported(tmp_path: Path) -> None:
    for data in (b"", b"hello, not a PNG", b"\x89PNG"):
        with pytest.raises(UnsupportedImage) as e:
            decode_image(data)
        one_line(e)
    ico = save(Image.fromarray(rgb_noise(16, 16)), "ICO")  # a real image, not on the list
    with pytest.raises(UnsupportedImage) as e:
        decode_image(ico, name="favicon.png")
    assert "content was checked" in one_line(e) and "favicon.png" in one_line(e)
    with pytest.raises(DataNotFound):
        decode_image(tmp_path / "missing.png")
    with pytest.raises(ImageReadError, match="is a folder"):
        decode_image(tmp_path)


def test_huge_header_refused_before_any_pixel_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[object] = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load",
                        lambda self: loads.append(self) or real_load(self))
    with pytest.raises(ImageTooLarge) as e:
        decode_image(png_with_header(50_000, 50_000))
    msg = one_line(e)
    assert "2,500,000,000 pixels" in msg and "MAX_IMAGE_PIXELS" in msg
    with pytest.raises(ImageTooLarge) as e:  # PIL only warns (silenced); droplab refuses
        decode_image(png_with_header(10_000, 10_000))
    assert "10000×10000 = 100,000,000 pixels" in one_line(e)
    with pytest.raises(ImageTooLarge) as e:  # under PIL's limit, over the caller's cap
        decode_image(png_with_header(3000, 3000), max_pixels=1_000_000)
    assert "3000×3000" in one_line(e) and "pixel cap of 1,000,000" in one_line(e)
    assert loads == []  # neither reached decoding
    with pytest.raises(ImageReadError):  # under both: decoded, and the lie found
        decode_image(png_with_header(3000, 3000))
    assert len(loads) == 1


def test_hard_limit_follows_pil_and_no_bomb_warning_escapes(monkeypatch: pytest.MonkeyPatch) -> None:
    data = save(Image.fromarray(rgb_noise(100, 100)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # 10,000 px: PIL warns (< 2× limit)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any escaping warning would raise here
        with pytest.raises(ImageTooLarge, match="MAX_IMAGE_PIXELS"):
            decode_image(data, too_large="downscale")  # the hard limit is never downscaled
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # 10,000 px: PIL's bomb error
        with pytest.raises(ImageTooLarge):
            decode_image(data)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # PIL's knob off: only our caps
    assert decode_image(data).image.size == (100, 100)


def test_downscale_keeps_aspect_and_uses_jpeg_draft() -> None:
    png = save(Image.fromarray(rgb_noise(200, 100)))
    with pytest.raises(ImageTooLarge):
        decode_image(png, max_pixels=5000)
    d = decode_image(png, max_pixels=5000, too_large="downscale")
    w, h = d.image.size
    assert w * h <= 5000 and w / h == pytest.approx(2, rel=0.05) and (d.width, d.height) == (200, 100)
    jpg = decode_image(save(Image.fromarray(rgb_noise(400, 200)), "JPEG"), max_pixels=5000,
                       too_large="downscale")
    assert jpg.image.size[0] * jpg.image.size[1] <= 5000
    with pytest.raises(ValueError):
        decode_image(png, too_large="crop")  # a programming error, not a user error


def test_quiet_decoders_is_thread_safe_and_restores_filters() -> None:
    before = list(warnings.filters)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            barrier.wait()
            for _ in range(20):
                with quiet_decoders():
                    warnings.warn("noise", Image.DecompressionBombWarning, stacklevel=1)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and warnings.filters == before


# ----------------------------------------------------------------------------- many files


def test_decode_many_fast_path_equals_pil_and_keeps_order() -> None:
    rgb, grey = Image.fromarray(rgb_noise(32, 32)), Image.fromarray(rgb_noise(32, 32)[..., 1])
    files = {
        "a.jpg": save(rgb, "JPEG", quality=90),
        "b.jpg": save(rgb, "JPEG", progressive=True),
        "c.jpg": save(grey, "JPEG"),
        "bad.png": lying_png(),
        "d.png": save(rgb),
        "e.jpg": save(rgb, "JPEG")[:-200],  # truncated: no EOI, PIL path, refused
        "big.png": png_with_header(5000, 5000),
    }
    names, blobs = list(files), list(files.values())
    fast = decode_many(blobs, names, max_pixels=1_000_000)
    slow = decode_many(blobs, names, max_pixels=1_000_000, fast=False)
    kinds = [type(r).__name__ for r in fast]
    assert kinds == ["Tensor", "Tensor", "Tensor", "ImageReadError", "Tensor", "ImageReadError",
                     "ImageTooLarge"]
    assert [type(r) for r in slow] == [type(r) for r in fast]
    for f, s in zip(fast, slow):
        if isinstance(f, torch.Tensor):
            assert f.shape == s.shape
            # both are libjpeg-turbo with the same IDCT; allow 2 levels for build differences
            assert int((f.int() - s.int()).abs().max()) <= 2
    assert fast[2].shape == (1, 32, 32)  # greyscale stays one channel
    assert "big.png" in str(fast[6]) and "bad.png" in str(fast[3])


def test_fast_path_only_for_complete_plain_jpegs() -> None:
    rgb = Image.fromarray(rgb_noise(16, 16))
    exif = Image.Exif()
    exif[0x0112] = 6

    def ok(data: bytes) -> bool:
        return plain_jpeg_header(data) is not None

    plain = save(rgb, "JPEG")
    assert plain_jpeg_header(plain) == (16, 16, 3)
    assert plain_jpeg_header(save(Image.fromarray(rgb_noise(20, 12)).convert("L"), "JPEG")) == (20, 12, 1)
    assert ok(save(rgb, "JPEG", progressive=True)) and ok(save(rgb, "JPEG", optimize=True))
    assert not ok(plain[:-2])  # no EOI marker: maybe truncated
    assert not ok(plain[: len(plain) // 2] + b"\xff\xd9")  # cut inside a header segment
    assert not ok(save(rgb.convert("CMYK"), "JPEG"))  # 4 components, Adobe APP14
    assert not ok(save(rgb, "JPEG", exif=exif))  # rotation needs the PIL path
    sof = plain.index(b"\xff\xc0")
    twelve = bytearray(plain)
    twelve[sof + 4] = 12  # 12-bit samples
    assert not ok(bytes(twelve))
    zero = bytearray(plain)
    zero[sof + 5:sof + 9] = b"\0\0\0\0"  # 0×0: PIL's answer, not the fast path's
    assert not ok(bytes(zero))
    for data in (b"", b"\xff\xd8\xff\xd9", b"\x89PNG\r\n\x1a\n" + plain):
        assert not ok(data)
    # every file the fast path takes, PIL reads with the same size and channels
    for data in (plain, save(rgb, "JPEG", progressive=True)):
        with Image.open(io.BytesIO(data)) as im:
            w, h, c = plain_jpeg_header(data)
            assert (im.size, im.mode) == ((w, h), "RGB" if c == 3 else "L")


def test_fast_path_falls_back_to_pil_when_torchvision_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    data = save(Image.fromarray(rgb_noise(16, 16)), "JPEG")
    monkeypatch.setattr(dec, "_tv_jpeg", lambda blobs: None)  # e.g. codecs removed
    out = decode_many([data, data], ["a", "b"])
    assert all(isinstance(t, torch.Tensor) and t.shape == (3, 16, 16) for t in out)
