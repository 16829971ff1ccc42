"""Style transfer: losses, encoders, weights loading, the three CLI commands, metrics."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from droplab.cli import main
from droplab.errors import InvalidValue, WeightsUnavailable
from droplab.evaluate.style import color_distance, diversity, ssim
from droplab.models.style import (
    RandomEncoder,
    TransformerNet,
    build_encoder,
    content_loss,
    gram,
    load_vgg19_features,
    style_loss,
    vgg19_weights_path,
)
from droplab.runs.restore import load_style_net as load_transformer
from droplab.tasks.style import parse_style_spec, parse_styles
from droplab.uncertainty import mc_mode
from style_helpers import offline, run_cli


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    offline(monkeypatch, tmp_path)


# -- style specs ----------------------------------------------------------------------------


def test_style_specs(tmp_path: Path) -> None:
    assert parse_style_spec("starry.jpg") == ("starry.jpg", 1.0)
    assert parse_style_spec("starry.jpg:0.25") == ("starry.jpg", 0.25)
    assert [w for _, w in parse_styles(["a:3", "b:1"])] == [0.75, 0.25]
    odd = tmp_path / "a:b.png"  # a colon that is part of an existing file name
    odd.write_bytes(b"")
    assert parse_style_spec(str(odd)) == (str(odd), 1.0)
    for bad in ("starry.jpg:heavy", "starry.jpg:-1", "starry.jpg:nan", ":0.5"):
        with pytest.raises(InvalidValue) as info:
            parse_style_spec(bad)
        assert "\n" not in str(info.value)


# -- losses and encoders --------------------------------------------------------------------


def test_gram_and_normalised_losses() -> None:
    f = torch.randn(2, 4, 5, 6)
    g = gram(f)
    # Gram = F Fᵀ / N with N = 30 positions: compare with an explicit sum
    assert torch.allclose(g[0, 1, 2], (f[0, 1] * f[0, 2]).sum() / 30, atol=1e-6)
    target = {"a": g[:1]}
    assert style_loss({"a": f[:1]}, target).item() == pytest.approx(0, abs=1e-10)
    # ‖G(0) − G_t‖² / ‖G_t‖² = 1 exactly: the normalisation weighs every layer equally
    assert style_loss({"a": torch.zeros(1, 4, 5, 6)}, target).item() == pytest.approx(1, rel=1e-6)
    # scaling a layer by 1000 leaves the relative error unchanged (scale invariance)
    x = torch.randn(1, 4, 5, 6)
    big = style_loss({"a": x * 1000}, {"a": g[:1] * 1e6}).item()
    assert big == pytest.approx(style_loss({"a": x}, target).item(), rel=1e-4)
    assert content_loss({"c": torch.zeros(1, 3, 2, 2)}, {"c": x[:, :3, :2, :2]}).item() == pytest.approx(1)


def test_random_encoder_is_seeded() -> None:
    x = torch.rand(1, 3, 32, 32)
    a, b, c = RandomEncoder(0, (8, 16)), RandomEncoder(0, (8, 16)), RandomEncoder(1, (8, 16))
    fa, fb, fc = a(x), b(x), c(x)
    assert set(fa) == {"rgb", "block1", "block2"}
    assert torch.equal(fa["block2"], fb["block2"])
    assert not torch.allclose(fa["block2"], fc["block2"])
    # filters are zero-mean with He variance 2/fan_in (fan_in = 3·3·3 = 27)
    w = a.blocks[0][0].weight
    assert w.mean(dim=(1, 2, 3)).abs().max() < 1e-6
    assert w.std(dim=(1, 2, 3)).mean().item() == pytest.approx((2 / 27) ** 0.5, rel=1e-4)
    assert not any(p.requires_grad for p in a.parameters())


def test_auto_encoder_falls_back_and_says_why(capsys: pytest.CaptureFixture) -> None:
    enc, _reason = build_encoder("auto")
    assert enc.describe().startswith("cifar")  # the offline default (README "The offline look")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CIFAR-10-trained encoder" in err
    assert str(vgg19_weights_path()) in err
    with pytest.raises(WeightsUnavailable):
        build_encoder("vgg19")


# -- VGG-19 weights from a local torch hub cache --------------------------------------------


@pytest.fixture(scope="module")
def vgg_state() -> dict[str, torch.Tensor]:
    """A vgg19 state dict made with torch itself (random values, torchvision's key names).

    Only the ``features.*`` tensors: the encoder uses nothing else, and the 120M-weight
    classifier would add 480 MB of file and seconds of initialisation to the test.
    """
    from torchvision.models.vgg import cfgs, make_layers

    torch.manual_seed(0)
    return {f"features.{k}": v for k, v in make_layers(cfgs["E"]).state_dict().items()}


def test_vgg19_loads_through_the_weights_enum(vgg_state: dict, tmp_path: Path) -> None:
    path = vgg19_weights_path()
    assert path.parent.parent == tmp_path / "torch-home" / "hub"  # TORCH_HOME is honoured
    from torchvision.models import VGG19_Weights

    assert path.name == os.path.basename(VGG19_Weights.IMAGENET1K_V1.url)
    path.parent.mkdir(parents=True)
    torch.save(vgg_state, path)
    features = load_vgg19_features()
    assert torch.equal(features[0].weight, vgg_state["features.0.weight"])
    enc, reason = build_encoder("auto")
    assert enc.name == "vgg19" and reason == "ImageNet weights"
    feats = enc(torch.rand(1, 3, 32, 32))
    assert feats["relu5_1"].shape == (1, 512, 2, 2) and feats["relu4_2"].shape[1] == 512
    # an explicit --encoder-weights file works too
    explicit = tmp_path / "mine.pth"
    torch.save(vgg_state, explicit)
    assert torch.equal(load_vgg19_features(explicit)[2].weight, vgg_state["features.2.weight"])


def test_vgg19_truncated_and_missing_files(vgg_state: dict, monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    path = vgg19_weights_path()
    # missing and offline: one line naming where to put the file
    with pytest.raises(WeightsUnavailable) as info:
        load_vgg19_features()
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    # missing with a network that fails (the download is attempted and refused)
    import urllib.error

    import torch.hub

    def no_network(*a: object, **k: object) -> None:
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.delenv("DROPLAB_OFFLINE")
    monkeypatch.setattr(torch.hub, "urlopen", no_network)
    with pytest.raises(WeightsUnavailable, match="could not be downloaded") as info:
        load_vgg19_features()
    assert str(path) in str(info.value)
    # a truncated cache file
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(vgg_state, tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(WeightsUnavailable, match="truncated") as info:
        load_vgg19_features()
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    explicit = tmp_path / "cut.pth"
    explicit.write_bytes(data[:1000])
    with pytest.raises(WeightsUnavailable, match=str(explicit)):
        load_vgg19_features(explicit)
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        load_vgg19_features(tmp_path / "absent.pth")


# -- stylize ---------------------------------------------------------------------------------


def test_stylize_cli_lowers_the_style_loss(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "x.png"
    code, s, err = run_cli(["stylize", "--content", "astronaut", "--style", "coffee",
                            "--size", "48", "--steps", "15", "--out", str(out)], capsys)
    assert code == 0, err
    assert out.exists() and Image.open(out).size == (48, 48)
    assert s["style_loss_final"] < 0.5 * s["style_loss_initial"]
    assert s["content_loss_initial"] == 0  # the content image is the start
    # the held-out encoder agrees the output is closer to the style than the content image
    assert s["eval"]["style_loss"] < s["eval_content_image"]["style_loss"]
    assert s["eval"]["eval_encoder"].startswith("random seed")
    assert -1 <= s["eval"]["ssim_content"] < 1 and s["eval_content_image"]["ssim_content"] == 1
    assert err.count("CIFAR-10-trained encoder") == 1


def test_stylize_options_in_a_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    style2 = tmp_path / "stripes.png"
    stripes = np.zeros((40, 40, 3), np.uint8)
    stripes[::4] = (20, 200, 240)
    Image.fromarray(stripes).save(style2)
    run = tmp_path / "run"
    code, s, err = run_cli(["stylize", "--content", "chelsea", "--style", "coffee:2",
                            f"{style2}:1", "--size", "40", "--steps", "4", "--pyramid", "2",
                            "--optimizer", "adam", "--init", "noise", "--preserve-color",
                            "histogram", "--save-every", "2", "--encoder", "random",
                            "--n-random", "1", "--out", str(run), "--no-eval"], capsys)
    assert code == 0, err
    assert (run / "stylized.png").exists() and (run / "step-00004.png").exists()
    assert len(s["saved"]) == 2 and "eval" not in s
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["level"] for m in metrics] == [0] * 4 + [1] * 4
    assert json.loads((run / "config.json").read_text())["styles"] == ["coffee:2", f"{style2}:1"]
    assert Image.open(run / "stylized.png").size == (40, 27)  # chelsea is 451×300: 40·300/451 ≈ 26.6


def test_stylize_luminance_keeps_the_content_colours(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    from droplab.data.images import read_image
    from droplab.tasks.style import rgb_to_yiq

    out = tmp_path / "lum.png"
    code, _s, _ = run_cli(["stylize", "--content", "astronaut", "--style", "coffee", "--size",
                          "32", "--steps", "3", "--preserve-color", "luminance", "--n-random",
                          "1", "--out", str(out), "--no-eval"], capsys)
    assert code == 0
    got, content = rgb_to_yiq(read_image(out)), rgb_to_yiq(read_image("astronaut", 32))
    # chrominance (I, Q) comes from the content image: equal up to 8-bit rounding and
    # the clamping of out-of-gamut pixels
    assert (got[:, 1:] - content[:, 1:]).abs().mean() < 0.02


@pytest.mark.parametrize("args,match", [
    (["--style", "coffee:abc"], "not a number"),
    (["--style", "nope.jpg"], "does not exist"),
    (["--style", "coffee", "--optimizer", "sgd"], "unknown optimizer"),
    (["--style", "coffee", "--pyramid", "5"], "coarsest level"),
])
def test_stylize_bad_input_is_one_line(args: list[str], match: str, tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    code = main(["stylize", "--content", "astronaut", "--size", "32", "--steps", "1",
                 "--out", str(tmp_path / "o.png"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and match in err[-1] and err[-1].startswith("droplab stylize: error:")


# -- feed-forward: style-train / style-apply --------------------------------------------------


@pytest.fixture
def content_dir(tmp_path: Path) -> Path:
    d = tmp_path / "content"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        arr = rng.integers(0, 255, (36 + 4 * i, 40, 3), dtype=np.uint8)
        Image.fromarray(arr).save(d / f"img{i}.png")
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")  # skipped with a note
    return d


TRAIN = ["--image-size", "32", "--batch-size", "2", "--width", "4", "--n-residual", "1",
         "--encoder", "random", "--dropout", "0.3", "--checkpoint-every", "3", "--log-every", "1"]


def test_style_train_apply_samples_and_resume(tmp_path: Path, content_dir: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "model"
    code, s, err = run_cli(["style-train", "--style", "coffee", "--content-dir",
                            str(content_dir), "--steps", "6", "--out", str(run), *TRAIN], capsys)
    assert code == 0, err
    assert s["images"] == 4 and "skipped 1 unreadable" in err
    assert (run / "checkpoint.pt").exists() and (run / "sample.png").exists()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 6
    # resuming the finished run from its folder alone returns its summary, touching nothing
    files = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir() if p.is_file()}
    code, again, _ = run_cli(["style-train", "--out", str(run), "--resume"], capsys)
    assert code == 0 and again == s
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir()
            if p.is_file()} == files

    # the same run in two halves (interrupted after the step-3 checkpoint) is bit-identical
    half = tmp_path / "half"
    assert main(["style-train", "--style", "coffee", "--content-dir", str(content_dir),
                 "--steps", "3", "--out", str(half), "--device", "cpu", *TRAIN]) == 0
    assert main(["style-train", "--style", "coffee", "--content-dir", str(content_dir),
                 "--steps", "6", "--out", str(half), "--device", "cpu", "--resume", *TRAIN]) == 0
    capsys.readouterr()
    a, _ = load_transformer(run)
    b, _ = load_transformer(half / "checkpoint.pt")
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
    # resuming with a different network is refused
    code = main(["style-train", "--style", "coffee", "--content-dir", str(content_dir),
                 "--steps", "6", "--out", str(half), "--resume", *TRAIN[:-6], "--width", "8"])
    assert code == 2 and "width" in capsys.readouterr().err

    # style-apply: a folder and a file, deterministic without --samples
    out = tmp_path / "styled"
    code, s, err = run_cli(["style-apply", str(run), str(content_dir / "img0.png"),
                            "--out", str(out)], capsys)
    assert code == 0, err
    y = np.asarray(Image.open(out / "img0.png"))
    assert y.shape == (36, 40, 3)
    net, _ = load_transformer(run)
    with torch.no_grad():
        from droplab.data.images import read_image

        ref = net(read_image(content_dir / "img0.png")).clamp(0, 1)[0].permute(1, 2, 0)
    assert np.abs(y.astype(int) - (ref.numpy() * 255).round().astype(int)).max() <= 1

    # MC samples: dropout stays on, so K different images per input
    code, s, _ = run_cli(["style-apply", str(run), str(content_dir / "img1.png"),
                          "--samples", "3", "--out", str(tmp_path / "mc")], capsys)
    assert code == 0 and len(s["outputs"]) == 3 and s["diversity"] > 0
    # a file that is not an image is one clean line
    code = main(["style-apply", str(run), str(content_dir / "broken.jpg"), "--out",
                 str(tmp_path / "bad")])
    assert code == 2 and "not an image" in capsys.readouterr().err
    # --out naming another run (here the first style-apply, or the model itself) is refused
    before = (out / "summary.json").read_bytes()
    for taken in (out, run):
        code = main(["style-apply", str(run), str(content_dir / "img1.png"), "--out", str(taken)])
        assert code == 2 and "already holds a run" in capsys.readouterr().err
    assert (out / "summary.json").read_bytes() == before


def test_transformer_net_dropout_placement_and_mc() -> None:
    x = torch.rand(2, 3, 30, 26)  # not multiples of 4: padded and cropped back
    counts = {}
    for where in ("residual", "decoder", "all"):
        net = TransformerNet(4, 2, dropout=0.5, dropout_where=where)
        counts[where] = sum(1 for m in net.modules() if m.__class__.__name__ in
                            ("SpatialDropout", "Dropout2d"))
        assert net(x).shape == x.shape
    assert counts == {"residual": 2, "decoder": 2, "all": 7}
    net = TransformerNet(4, 2, dropout=0.5).eval()
    with torch.no_grad():
        assert torch.equal(net(x), net(x))  # eval: dropout off
        with mc_mode(net):
            assert not torch.equal(net(x), net(x))  # MC mode: dropout on
            assert not any(m.training for m in net.modules()
                           if isinstance(m, torch.nn.InstanceNorm2d))


def test_onnx_export_runs_in_onnxruntime(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    from droplab.models.style import export_onnx, onnx_stylize

    net = TransformerNet(4, 1, dropout=0.2).eval()
    path = export_onnx(net, tmp_path / "net.onnx", size=32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 32, 32), (2, 3, 30, 45)]:  # dynamic batch and size
        x = torch.rand(shape)
        with torch.no_grad():
            ref = net(x)
        # float32 convolutions in two runtimes: agreement to ~1e-5 of the unit range
        assert torch.allclose(onnx_stylize(session, x), ref, atol=1e-4)


# -- metrics --------------------------------------------------------------------------------


def test_style_metrics() -> None:
    x = torch.rand(1, 3, 24, 24)
    assert ssim(x, x) == pytest.approx(1)
    assert ssim(x, 1 - x) < 0
    assert color_distance(x, x) == pytest.approx(0, abs=1e-12)
    black, white = torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 16, 16)
    assert color_distance(black, white) == pytest.approx(1)  # W₁ between two point masses
    # shifting every pixel by 0.1 (no clipping) moves the distribution by exactly 0.1
    y = torch.rand(1, 3, 10, 10) * 0.8
    assert color_distance(y, y + 0.1) == pytest.approx(0.1, abs=1e-6)  # float32 inputs
    assert diversity(x.repeat(3, 1, 1, 1)) == 0
    # two images differing by a constant d everywhere: RMS distance exactly d
    pair = torch.cat([y, y + 0.25])
    assert diversity(pair) == pytest.approx(0.25, rel=1e-6)
