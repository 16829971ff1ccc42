"""Arbitrary style (AdaIN), net sizes, the onnxruntime path, videos and frame folders: the
issue-17 commands end to end at tiny sizes, and their bad inputs (one line, no output)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from droplab.cli import main
from droplab.models.style import (
    AdaINNet,
    TransformerNet,
    adain,
    cifar_encoder,
    mean_std,
    net_options,
)
from style_helpers import offline, run_cli


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    offline(monkeypatch, tmp_path)


def _photo(name: str, size: tuple[int, int]) -> Image.Image:
    from skimage import data

    return Image.fromarray(getattr(data, name)()).convert("RGB").resize(size)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The bundled scikit-image photos as content, two of them (recoloured) as styles."""
    root = tmp_path_factory.mktemp("arb")
    content, style, bad = root / "content", root / "style", root / "bad-style"
    for d in (content, style, bad):
        d.mkdir()
    for name in ("astronaut", "chelsea", "rocket"):
        _photo(name, (48, 40)).save(content / f"{name}.jpg")
    stripes = np.zeros((64, 64, 3), np.uint8)
    stripes[:, ::8] = (250, 200, 20)
    stripes[::8] = (20, 40, 200)
    Image.fromarray(stripes).save(style / "stripes.png")
    _photo("coffee", (64, 48)).save(style / "coffee.jpg")
    (bad / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    (bad / "notes.png").write_bytes(b"")
    return {"root": root, "content": content, "style": style, "bad": bad}


@pytest.fixture(scope="module")
def arbitrary_run(folders: dict[str, Path]) -> Path:
    run = folders["root"] / "adain"
    code = main(["style-train", "--arbitrary", "--content-dir", str(folders["content"]),
                 "--style-dir", str(folders["style"]), "--steps", "3", "--image-size", "32",
                 "--batch-size", "2", "--dropout", "0.1", "--out", str(run), "--device", "cpu"])
    assert code == 0
    return run


def test_adain_moments_strength_and_mix() -> None:
    f, s = torch.randn(2, 8, 6, 5) * 3 + 1, torch.randn(1, 8, 7, 7) * 0.5 - 2
    m, sd = mean_std(s)
    t = adain(f, m, sd)
    tm, ts = mean_std(t)
    assert torch.allclose(tm, m.expand(2, -1), atol=1e-4)
    assert torch.allclose(ts, sd.expand(2, -1), rtol=1e-3, atol=1e-3)
    assert torch.allclose(adain(f, m, sd, alpha=0.0), f, atol=1e-4)  # α = 0: the content
    net = AdaINNet.from_encoder(cifar_encoder(), depth=2)
    a, b = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    (ma, sa), (mb, sb) = net.style_stats(a), net.style_stats(b)
    mm, sm = net.mixed_stats([a, b], [0.25, 0.75])
    assert torch.allclose(mm, 0.25 * ma + 0.75 * mb, atol=1e-5)
    assert torch.allclose(sm, 0.25 * sa + 0.75 * sb, atol=1e-5)
    assert net(torch.rand(1, 3, 21, 19), a).shape == (1, 3, 21, 19)


def test_net_sizes() -> None:
    fast = TransformerNet(**net_options("fast"))
    old = TransformerNet(**net_options("johnson"))
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(fast) < n(old) / 4
    assert fast(torch.rand(1, 3, 20, 24)).shape == (1, 3, 20, 24)


def test_done_when_train_and_apply(arbitrary_run: Path, folders: dict[str, Path], tmp_path: Path,
                                   capsys: pytest.CaptureFixture) -> None:
    s = json.loads((arbitrary_run / "summary.json").read_text())
    assert s["arbitrary"] and s["styles"] == 2 and s["steps"] == 3
    assert (arbitrary_run / "checkpoint.pt").is_file() and (arbitrary_run / "sample.png").is_file()
    photo, style = folders["content"] / "astronaut.jpg", folders["style"] / "stripes.png"
    out = tmp_path / "x.png"
    code, s, err = run_cli(["style-apply", str(arbitrary_run), str(photo), "--style", str(style),
                            "--strength", "0.7", "--out", str(out)], capsys)
    assert code == 0, err
    assert s["outputs"] == [str(out)] and Image.open(out).size == (48, 40)
    # torch and onnxruntime agree; strength 0 gives (nearly) the decoder's content image
    ref = tmp_path / "torch.png"
    code, _, err = run_cli(["style-apply", str(arbitrary_run), str(photo), "--style", str(style),
                            "--strength", "0.7", "--engine", "torch", "--out", str(ref)], capsys)
    assert code == 0, err
    a, b = (np.asarray(Image.open(p)).astype(int) for p in (out, ref))
    assert np.abs(a - b).max() <= 2
    # a weighted mix with the content's colours kept, and dynamic int8
    mix = tmp_path / "mix.png"
    code, s, err = run_cli(["style-apply", str(arbitrary_run), str(photo), "--style",
                            f"{style}:0.3", f"{folders['style'] / 'coffee.jpg'}:0.7",
                            "--preserve-color", "--quantize", "dynamic", "--out", str(mix)],
                           capsys)
    assert code == 0, err
    assert "int8" in s["engine"] and Image.open(mix).size == (48, 40)


def test_frame_folder_and_video(arbitrary_run: Path, folders: dict[str, Path], tmp_path: Path,
                                capsys: pytest.CaptureFixture) -> None:
    iio = pytest.importorskip("imageio.v2")
    pytest.importorskip("imageio_ffmpeg")
    frames = tmp_path / "frames"
    frames.mkdir()
    base = np.asarray(_photo("astronaut", (80, 64)))
    for i in range(4):  # a small camera pan
        Image.fromarray(np.roll(base, 2 * i, axis=1)).save(frames / f"f{i:03d}.png")
    style = str(folders["style"] / "stripes.png")
    code, s, err = run_cli(["style-apply", str(arbitrary_run), str(frames), "--frames",
                            "--style", style, "--smooth", "0.3", "--out",
                            str(tmp_path / "pan.mp4")], capsys)
    assert code == 0, err
    seq = s["sequences"][0]
    assert seq["frames"] == 4 and seq["frames_per_s"] > 0 and "temporal_change_ratio" in seq
    assert len(iio.mimread(tmp_path / "pan.mp4")) == 4
    # a video file in, a run folder out
    code, s, err = run_cli(["style-apply", str(arbitrary_run), str(tmp_path / "pan.mp4"),
                            "--style", style, "--out", str(tmp_path / "vid")], capsys)
    assert code == 0, err
    assert s["sequences"][0]["frames"] == 4 and (tmp_path / "vid" / "pan.mp4").is_file()


def test_bad_inputs_are_one_line_and_write_nothing(
        arbitrary_run: Path, folders: dict[str, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture) -> None:
    photo = str(folders["content"] / "astronaut.jpg")
    style = str(folders["style"] / "stripes.png")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for i, size in enumerate([(32, 32), (32, 32), (40, 32)]):
        _photo("astronaut", size).save(mixed / f"f{i}.png")
    (tmp_path / "bad.mp4").write_bytes(b"not a video" * 50)
    cases = [
        (["style-train", "--arbitrary", "--content-dir", str(folders["content"]), "--style-dir",
          str(folders["bad"]), "--steps", "2", "--image-size", "32"], "no readable image"),
        (["style-apply", str(arbitrary_run), photo], "give --style"),
        (["style-apply", str(arbitrary_run), str(mixed), "--frames", "--style", style],
         "mixes frame sizes"),
        (["style-apply", str(arbitrary_run), str(tmp_path / "bad.mp4"), "--style", style],
         "cannot read video"),
    ]
    for k, (argv, match) in enumerate(cases):
        if "cannot read video" in match:
            pytest.importorskip("imageio_ffmpeg")
        out = tmp_path / f"out{k}"
        target = out / "x.png" if argv[0] == "style-apply" and k == 1 else out
        code = main([*argv, "--out", str(target), "--device", "cpu"])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and match in lines[0], (argv, err)
        assert not out.exists(), argv  # no half-written output


def test_serve_refuses_arbitrary_runs_in_one_line(arbitrary_run: Path) -> None:
    from droplab.errors import UserError
    from droplab.serve.registry import load_models

    with pytest.raises(UserError, match="arbitrary-style"):
        load_models([str(arbitrary_run)], "cpu")
