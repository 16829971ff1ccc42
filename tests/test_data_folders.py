"""droplab.data.folders: image folders decoded once; unreadable and oversized files skipped,
counted and reported in one warning; the size and channel rules; ``droplab train`` and
``droplab evaluate --ood`` on a hostile folder end to end."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from droplab import data as D
from droplab.errors import DataNotFound, InvalidValue
from fuzzing import lying_png

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "DROPLAB_PROGRESS": "0"}


def one_line(e: pytest.ExceptionInfo[BaseException]) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


def _png(path: Path, size: tuple[int, int], mode: str = "RGB", value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)


def header_png(w: int, h: int) -> bytes:
    """A PNG whose IHDR (with a valid CRC) declares w×h; the pixel data is missing."""
    data = bytearray(lying_png(8, 8))
    data[16:24] = struct.pack(">II", w, h)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def ours(rec: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in rec if issubclass(w.category, D.UnreadableImagesWarning)]


def hostile_folder(root: Path, per_class: int = 6) -> Path:
    """Two classes of 12×10 RGB PNGs, plus every kind of file issue 14 lists."""
    for i in range(per_class):
        _png(root / "cat" / f"{i}.png", (12, 10), value=i)
        _png(root / "dog" / f"{i}.png", (12, 10), value=10 + i)
    (root / "cat" / "lying.png").write_bytes(lying_png())  # 68 bytes, header claims 64×64
    (root / "cat" / "notes.png").write_text("a text file named .png")
    (root / "cat" / "empty.jpg").write_bytes(b"")
    (root / "dog" / "bomb.png").write_bytes(header_png(50_000, 50_000))
    (root / "dog" / "huge.png").write_bytes(header_png(12_000, 12_000))
    ramp = np.linspace(0, 65535, 120).round().reshape(10, 12).astype(np.uint16)
    Image.fromarray(ramp).save(root / "dog" / "deep.png")  # 16-bit: readable, converted
    return root


# ----------------------------------------------------------------------------- skipping


def test_imagefolder_skips_unreadable_files_with_one_warning(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    for i in range(5):
        _png(root / "cat" / f"{i}.png", (12, 10), value=i)
        _png(root / "dog" / f"{i}.jpg", (12, 10), value=10 + i)
    (root / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "dog" / "notes.txt").write_text("hello")
    (root / "dog" / ".DS_Store").write_bytes(b"\0\1")  # hidden: ignored, not counted
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        b = D.load_dataset(f"imagefolder:{root}", holdout=0.4)
    msgs = ours(rec)
    assert len(msgs) == 1 and len(rec) == 1  # nothing else escapes (no PIL warnings)
    msg = msgs[0]
    assert "\n" not in msg and "skipped 2 of 12 files: 2 not readable images" in msg
    assert "broken.jpg" in msg
    assert b.classes == ["cat", "dog"] and b.in_shape == (3, 10, 12)  # common size kept
    assert len(b.train) + len(b.test) == 10 and len(b.test) == 4
    assert sorted(s.path.name for s in b.skipped) == ["broken.jpg", "notes.txt"]
    # the decoded pixels are the PNG's
    ref = np.array(Image.open(root / "cat" / "0.png"))
    all_imgs = torch.cat([b.train.images, b.test.images])
    assert any(torch.equal(img.permute(1, 2, 0), torch.from_numpy(ref)) for img in all_imgs)


def test_hostile_folder_every_bad_file_skipped_and_counted_once(tmp_path: Path) -> None:
    root = hostile_folder(tmp_path / "hostile")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        b = D.load_dataset(f"imagefolder:{root}", holdout=0.25)
    msgs = ours(rec)
    assert len(msgs) == 1 and len(rec) == 1
    msg = msgs[0]
    assert msg.startswith("skipped 5 of 18 files: 3 not readable images (first: ")
    assert "2 over the pixel cap (first: " in msg and "bomb.png" in msg
    reasons = {s.path.name: s for s in b.skipped}
    assert set(reasons) == {"lying.png", "notes.png", "empty.jpg", "bomb.png", "huge.png"}
    assert reasons["huge.png"].too_large and "12000×12000" in reasons["huge.png"].reason
    assert reasons["bomb.png"].too_large and not reasons["lying.png"].too_large
    assert "truncated or corrupt" in reasons["lying.png"].reason
    assert "0 bytes" in reasons["empty.jpg"].reason
    # 12 PNGs + the 16-bit one, whose grey ramp arrives scaled by 1/257 in all 3 channels
    assert len(b.train) + len(b.test) == 13 and b.in_shape == (3, 10, 12)
    ramp = np.linspace(0, 65535, 120).round().reshape(10, 12).astype(np.int64)
    deep = torch.from_numpy((ramp * 255 + 32767) // 65535).to(torch.uint8).expand(3, -1, -1)
    assert any(torch.equal(img, deep) for img in torch.cat([b.train.images, b.test.images]))


def test_pixel_cap_skips_real_images_and_is_configurable(tmp_path: Path) -> None:
    root = tmp_path / "caps"
    for i in range(4):
        _png(root / "a" / f"{i}.png", (8, 8), value=i)
        _png(root / "b" / f"{i}.png", (8, 8), value=9 + i)
    _png(root / "b" / "big.png", (100, 60), value=99)  # a real, valid image of 6,000 pixels
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        b = D.load_dataset(f"imagefolder:{root}", max_pixels=5000, holdout=0.5)
    assert "1 over the pixel cap" in ours(rec)[0] and "100×60 = 6,000 pixels" in ours(rec)[0]
    assert len(b.train) + len(b.test) == 8 and [s.path.name for s in b.skipped] == ["big.png"]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        b = D.load_dataset(f"imagefolder:{root}", max_pixels=None, holdout=0.5)
    assert ours(rec) == [] and len(b.train) + len(b.test) == 9 and b.in_shape == (3, 64, 64)
    for bad in (0, -5, 2.5):
        with pytest.raises(InvalidValue):
            D.load_dataset(f"imagefolder:{root}", max_pixels=bad)


def test_folder_of_only_bad_files_is_one_line_error(tmp_path: Path) -> None:
    for name, data in (("a/x.png", lying_png()), ("a/y.png", b""), ("b/z.png", b"junk")):
        (tmp_path / "bad" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "bad" / name).write_bytes(data)
    with pytest.raises(DataNotFound) as e:
        D.load_dataset(f"imagefolder:{tmp_path / 'bad'}")
    msg = one_line(e)
    assert "none of the 3 files" in msg and "x.png" in msg  # names the first reason


def test_imagefolder_sizes_grey_and_train_test(tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    for i in range(3):
        _png(root / "a" / f"{i}.png", (20 + i, 30), mode="L", value=i)
        _png(root / "b" / f"{i}.png", (40, 16), mode="L", value=5 + i)
    b = D.load_dataset(f"imagefolder:{root}", holdout=0.34)
    assert b.in_shape == (1, 64, 64)  # all grey → L; sizes differ → 64
    b = D.load_dataset(f"imagefolder:{root}", image_size=24, holdout=0.34)
    assert b.in_shape == (1, 24, 24)
    split = tmp_path / "split"
    for part in ("train", "test"):
        for i in range(2):
            _png(split / part / "x" / f"{i}.png", (16, 16), value=i)
            _png(split / part / "y" / f"{i}.png", (16, 16), mode="L", value=3 + i)
    b = D.load_dataset(f"imagefolder:{split}")
    assert b.in_shape == (3, 16, 16) and len(b.train) == 4 and len(b.test) == 4


def test_large_common_size_goes_to_default_size(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    for i in range(2):  # all 300×300 (90,000 px > 256² kept at most): resized to 64
        _png(root / "a" / f"{i}.png", (300, 300), value=i)
        _png(root / "b" / f"{i}.png", (300, 300), value=4 + i)
    b = D.load_dataset(f"imagefolder:{root}", holdout=0.5)
    assert b.in_shape == (3, D.DEFAULT_FOLDER_SIZE, D.DEFAULT_FOLDER_SIZE)
    # resizing on decode equals resizing afterwards (same antialiased resize + centre crop)
    from droplab.data.folders import fit_size

    raw = torch.from_numpy(np.array(Image.open(root / "a" / "0.png"))).permute(2, 0, 1)
    expect = fit_size(raw[None], (64, 64))[0]
    assert any(torch.equal(img, expect) for img in torch.cat([b.train.images, b.test.images]))
    b = D.load_dataset(f"imagefolder:{root}", holdout=0.5, image_size=300)
    assert b.in_shape == (3, 300, 300)  # an explicit size is honoured


def test_imagefolder_empty_or_flat_folder_is_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFound) as e:
        D.load_dataset(f"imagefolder:{tmp_path / 'empty'}")
    assert "no class subfolders" in one_line(e)
    _png(tmp_path / "flat" / "a.png", (8, 8))
    with pytest.raises(DataNotFound):
        D.load_dataset(f"imagefolder:{tmp_path / 'flat'}")
    with pytest.raises(DataNotFound) as e:
        D.load_dataset(f"imagefolder:{tmp_path / 'missing'}")
    assert "does not exist" in one_line(e)
    (tmp_path / "junk" / "a").mkdir(parents=True)
    (tmp_path / "junk" / "a" / "x.txt").write_text("x")
    with pytest.raises(DataNotFound) as e:
        D.load_dataset(f"imagefolder:{tmp_path / 'junk'}")
    assert "readable image" in one_line(e)
    (tmp_path / "nofiles" / "a").mkdir(parents=True)
    with pytest.raises(DataNotFound, match="hold no files"):
        D.load_dataset(f"imagefolder:{tmp_path / 'nofiles'}")
    with pytest.raises(InvalidValue, match="needs a path"):
        D.load_dataset("imagefolder:")


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_train_and_evaluate_ood_on_hostile_folder(tmp_path: Path) -> None:
    root = hostile_folder(tmp_path / "hostile", per_class=8)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "droplab", "train", "--dataset", f"imagefolder:{root}",
           "--model", "mlp", "--widths", "16", "--epochs", "1", "--batch-size", "8",
           "--device", "cpu", "--out", str(out), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(proc.stdout.strip().splitlines()) == 1  # exactly one JSON object on stdout
    summary = json.loads(proc.stdout)
    assert summary["in_shape"] == [3, 10, 12] and summary["classes"] == ["cat", "dog"]
    assert proc.stderr.count("skipped 5 of 22 files") == 1 and "Traceback" not in proc.stderr
    # the same folder as the OOD set of a digits run: converted, skipped and counted, no crash
    drun = tmp_path / "digits"
    subprocess.run([sys.executable, "-m", "droplab", "train", "--dataset", "digits", "--model",
                    "mlp", "--widths", "16", "--epochs", "1", "--device", "cpu", "--out",
                    str(drun), "--json"], capture_output=True, text=True, timeout=300, env=ENV,
                   check=True)
    proc = subprocess.run([sys.executable, "-m", "droplab", "evaluate", str(drun), "--ood",
                           f"imagefolder:{root}", "--device", "cpu", "--json"],
                          capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ev = json.loads(proc.stdout)
    assert ev["ood_images"] > 0 and 0 <= ev["ood_auroc_max_prob"] <= 1
    assert "skipped 5 of" in proc.stderr and "Traceback" not in proc.stderr
