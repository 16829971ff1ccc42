"""droplab.data.images (and the droplab.imageio shim): every awkward image a user names
becomes RGB or one clean UserError."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import droplab.imageio
from droplab.data import images
from droplab.data.decode import ImageTooLarge
from droplab.data.images import (
    list_images,
    load_image,
    read_image,
    resize_to,
    save_image,
    tensor_to_pil,
)
from droplab.errors import DataNotFound, ImageReadError, UserError


def _gradient(w: int = 40, h: int = 30) -> np.ndarray:
    """A distinct RGB image: red ramps left→right, green top→bottom, blue constant 50."""
    x = np.linspace(0, 255, w)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h)[:, None].repeat(w, 1)
    return np.stack([x, y, np.full((h, w), 50.0)], -1).round().astype(np.uint8)


def test_rgb_png_roundtrip(tmp_path: Path) -> None:
    arr = _gradient()
    Image.fromarray(arr).save(tmp_path / "a.png")
    x = read_image(tmp_path / "a.png")
    assert x.shape == (1, 3, 30, 40) and x.dtype == torch.float32
    # PNG is lossless: exact values back, /255
    assert np.array_equal((x[0].permute(1, 2, 0) * 255).round().byte().numpy(), arr)
    save_image(x, tmp_path / "b.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b.png")), arr)


def test_sample_names_need_no_file() -> None:
    img = load_image("astronaut")
    assert img.mode == "RGB" and img.size == (512, 512)
    assert load_image("camera").mode == "RGB"  # a greyscale sample becomes RGB


def test_missing_file_is_data_not_found(tmp_path: Path) -> None:
    with pytest.raises(DataNotFound, match="does not exist"):
        load_image(tmp_path / "nope.jpg")


def test_not_an_image(tmp_path: Path) -> None:
    p = tmp_path / "notes.png"
    p.write_text("hello, not a PNG")
    with pytest.raises(ImageReadError, match="not an image") as info:
        load_image(p)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("fmt,suffix", [("JPEG", ".jpg"), ("PNG", ".png")])
def test_truncated_file(tmp_path: Path, fmt: str, suffix: str) -> None:
    p = tmp_path / f"cut{suffix}"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(p, fmt)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="truncated") as info:
        load_image(p)
    assert "\n" not in str(info.value)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    p = tmp_path / "cmyk.jpg"
    Image.fromarray(_gradient()).convert("CMYK").save(p, quality=95)
    img = load_image(p)
    assert img.mode == "RGB"
    # CMYK round trip + JPEG: colours within a few levels of the original gradient
    diff = np.abs(np.asarray(img, dtype=int) - _gradient().astype(int))
    assert diff.mean() < 6


def test_greyscale_and_palette(tmp_path: Path) -> None:
    Image.fromarray(_gradient()[..., 0]).save(tmp_path / "g.png")
    g = np.asarray(load_image(tmp_path / "g.png"))
    assert g.shape == (30, 40, 3) and np.array_equal(g[..., 0], g[..., 2])
    Image.fromarray(_gradient()).convert("P").save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png").mode == "RGB"


def test_rgba_composited_over_white(tmp_path: Path) -> None:
    arr = np.zeros((10, 10, 4), np.uint8)
    arr[..., 0] = 255  # red
    arr[:, :5, 3] = 255  # left half opaque, right half fully transparent
    Image.fromarray(arr, "RGBA").save(tmp_path / "a.png")
    out = np.asarray(load_image(tmp_path / "a.png"))
    assert (out[:, :5] == [255, 0, 0]).all()
    assert (out[:, 5:] == [255, 255, 255]).all()


def test_16bit_keeps_full_range(tmp_path: Path) -> None:
    # a 16-bit ramp 0…65535: PIL's convert("RGB") would clip everything above 255 to white
    ramp = np.linspace(0, 65535, 64 * 8).reshape(8, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    out = np.asarray(load_image(tmp_path / "deep.png"))[..., 0].astype(int)
    expected = np.round(ramp / 65535 * 255).astype(int)
    assert np.abs(out - expected).max() <= 1
    assert out.min() == 0 and out.max() == 255


def test_exif_rotation_is_applied(tmp_path: Path) -> None:
    img = Image.fromarray(_gradient(40, 20))  # landscape 40×20
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    img.save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg").size == (20, 40)


def test_pixel_cap_downscales_with_a_note(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    Image.fromarray(_gradient(200, 100)).save(tmp_path / "big.png")
    img = load_image(tmp_path / "big.png", max_pixels=5000)
    assert img.size[0] * img.size[1] <= 5000 and img.size[0] / img.size[1] == pytest.approx(2, rel=0.05)
    assert "downscaled" in capsys.readouterr().err
    # JPEG takes the draft (reduced decoding) path
    Image.fromarray(_gradient(400, 200)).save(tmp_path / "big.jpg")
    assert load_image(tmp_path / "big.jpg", max_pixels=5000).size[0] <= 100


def test_decompression_bomb_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.fromarray(_gradient(100, 100)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # pretend 100×100 is a bomb header
    with pytest.raises(ImageTooLarge, match="hard limit") as info:
        load_image(tmp_path / "bomb.png")  # refused, not downscaled like a merely large image
    assert "\n" not in str(info.value)


def test_pil_bomb_error_becomes_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.fromarray(_gradient(100, 100)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL raises above 2× this
    with pytest.raises(UserError):
        load_image(tmp_path / "bomb.png")


def test_list_images_and_resize(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    for name in ("b.png", "sub/a.jpg"):
        Image.fromarray(_gradient()).save(tmp_path / name)
    (tmp_path / "readme.txt").write_text("x")
    found = list_images(tmp_path)
    assert [p.name for p in found] == ["b.png", "a.jpg"]
    with pytest.raises(DataNotFound):
        list_images(tmp_path / "sub" / "missing")
    img = resize_to(load_image(found[0]), 20)
    assert max(img.size) == 20
    assert tensor_to_pil(read_image(found[0], 16)).size == (16, 12)


def test_imageio_shim_reexports_and_saves_atomically(tmp_path: Path) -> None:
    for name in droplab.imageio.__all__:
        assert getattr(droplab.imageio, name) is getattr(images, name), name
    out = save_image(read_image("astronaut", 32), tmp_path / "sub" / "a.jpg")
    assert Image.open(out).format == "JPEG" and Image.open(out).size == (32, 32)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["a.jpg"]  # no temp file left
    assert droplab.imageio._to_rgb(Image.new("LA", (2, 2))).mode == "RGB"  # serve's import
