"""DCGAN nets, losses and the ``droplab gan`` task (training, NaN guard, resume, CLI)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from droplab.engine import TrainingDiverged
from droplab.errors import InvalidValue, ResumeError, UnknownName
from droplab.layers import DropoutModule
from droplab.models import gan as nets
from droplab.runs import load_checkpoint
from droplab.tasks.gan import GanConfig, run


def _tiny(out: Path, **kw: object) -> GanConfig:
    """Digits, 12 images per class (≈ 120 training images), 3 batches of 32 per epoch."""
    base: dict[str, object] = dict(dataset="digits", limit=12, batch_size=32, width=8, z_dim=8,
                                   epochs=1, eval_samples=0, grid=16, device="cpu", out=str(out))
    base.update(kw)
    return GanConfig.build(**base)


# -- nets -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 16, 16), (1, 28, 28), (3, 32, 32)])
def test_nets_shapes(shape: tuple[int, int, int]) -> None:
    g = nets.Generator(16, shape, width=8, dropout=0.2)
    d = nets.Discriminator(shape, width=8, dropout=0.2, dropout_where="all")
    x = g(torch.randn(5, 16))
    assert x.shape == (5, *shape)
    assert x.min() >= -1 and x.max() <= 1  # tanh output
    assert d(x).shape == (5,)
    sn = nets.Discriminator(shape, width=8, spectral_norm=True, norm="none")
    assert sn(x).shape == (5,)
    assert any(hasattr(m, "parametrizations") for m in sn.modules())


def test_size_plan_and_unsupported_sizes() -> None:
    assert nets.size_plan(8) == (4, 1)
    assert nets.size_plan(28) == (7, 2)
    assert nets.size_plan(32) == (4, 3)
    with pytest.raises(InvalidValue, match="--image-size") as info:
        nets.Generator(8, (1, 27, 27))
    assert "\n" not in str(info.value)


# -- losses ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", nets.LOSSES)
def test_losses_finite_with_sensible_gradient_signs(kind: str) -> None:
    # Logits inside the hinge margin so every loss has a non-zero gradient. D wants real
    # scores up and fake scores down: dL_D/d(real) < 0 < dL_D/d(fake). G wants fake scores
    # up: dL_G/d(fake) < 0.
    real = torch.tensor([0.3, -0.2, 0.1], requires_grad=True)
    fake = torch.tensor([-0.1, 0.4, 0.0], requires_grad=True)
    d_loss = nets.discriminator_loss(kind, real, fake)
    g_loss = nets.generator_loss(kind, fake)
    assert math.isfinite(float(d_loss.detach())) and math.isfinite(float(g_loss.detach()))
    gr, gf = torch.autograd.grad(d_loss, (real, fake))
    assert (gr < 0).all() and (gf > 0).all()
    (gg,) = torch.autograd.grad(nets.generator_loss(kind, fake), fake)
    assert (gg < 0).all()
    with pytest.raises(UnknownName):
        nets.discriminator_loss("lsgan", real, fake)


def test_ns_loss_values() -> None:
    # At logits 0 both terms are ln 2 (D) and G's loss is ln 2.
    z = torch.zeros(4)
    assert float(nets.discriminator_loss("ns", z, z)) == pytest.approx(2 * math.log(2))
    assert float(nets.generator_loss("ns", z)) == pytest.approx(math.log(2))


class _Linear(nn.Module):
    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.w).flatten(1).sum(1)


def test_gradient_penalty_on_a_linear_critic() -> None:
    # D(x) = <w, x> has gradient w everywhere, so GP = (‖w‖ − 1)² whatever the interpolates,
    # and dGP/dw = 2(‖w‖ − 1)·w/‖w‖.
    w = torch.zeros(1, 2, 3, 3)
    w.view(-1)[:2] = torch.tensor([3.0, 4.0])  # ‖w‖ = 5
    critic = _Linear(w)
    real, fake = torch.randn(6, 2, 3, 3), torch.randn(6, 2, 3, 3)
    gp = nets.gradient_penalty(critic, real, fake, generator=torch.Generator().manual_seed(0))
    assert float(gp.detach()) == pytest.approx(16.0, rel=1e-6)
    (grad,) = torch.autograd.grad(gp, critic.w)
    assert torch.allclose(grad, 2 * 4.0 * critic.w.detach() / 5.0, atol=1e-5)
    unit = _Linear(w / 5.0)
    assert float(nets.gradient_penalty(unit, real, fake).detach()) == pytest.approx(0.0, abs=1e-10)


# -- dropout --------------------------------------------------------------------------------


def _positions(d: nets.Discriminator) -> list[int]:
    return [i for i, m in enumerate(d.net) if isinstance(m, DropoutModule)]


@pytest.mark.parametrize("kind", ["dropout", "spatial", "gaussian"])
def test_discriminator_dropout_placement(kind: str) -> None:
    shape = (1, 28, 28)  # two blocks: conv-lrelu, conv-bn-lrelu
    inp = nets.Discriminator(shape, 8, 0.3, kind, "input")
    assert _positions(inp) == [0] and inp.net[0].kind == kind and inp.net[0].p == 0.3
    hid = nets.Discriminator(shape, 8, 0.3, kind, "hidden")
    pos = _positions(hid)
    assert len(pos) == 2 and all(isinstance(hid.net[i - 1], nn.LeakyReLU) for i in pos)
    both = nets.Discriminator(shape, 8, 0.3, kind, "all")
    assert len(_positions(both)) == 3 and _positions(both)[0] == 0
    assert _positions(nets.Discriminator(shape, 8, 0.0, kind, "all")) == []
    with pytest.raises(UnknownName):
        nets.Discriminator(shape, 8, 0.3, kind, "head")


def test_discriminator_dropout_is_stochastic_only_in_training() -> None:
    d = nets.Discriminator((1, 8, 8), 8, 0.5, "dropout", "all", norm="none")
    x = torch.randn(4, 1, 8, 8)
    assert not torch.equal(d(x), d(x))
    d.eval()
    assert torch.equal(d(x), d(x))


def test_generator_noise_dropout_stays_on_at_sampling_when_asked() -> None:
    z = torch.randn(4, 8)
    g = nets.Generator(8, (1, 16, 16), width=8, dropout=0.5).eval()
    assert len(g.noise_dropout) == 2  # after the projection and the first of 2 stages
    assert torch.equal(g(z), g(z))  # off at sampling by default
    g.set_dropout_at_sampling(True)
    assert all(m.training for m in g.noise_dropout)
    assert not any(m.training for m in g.modules() if isinstance(m, nn.BatchNorm2d))
    assert not torch.equal(g(z), g(z))
    g.train()
    g.eval()  # eval() keeps the noise on as long as the flag is set
    assert not torch.equal(g(z), g(z))
    g.set_dropout_at_sampling(False)
    assert torch.equal(g(z), g(z))


# -- the task -------------------------------------------------------------------------------


def test_training_writes_metrics_grids_and_checkpoint(tmp_path: Path) -> None:
    # concrete dropout in D: its rate is learned and its regulariser joins D's loss
    s = run(_tiny(tmp_path / "r", epochs=2, loss="hinge", d_dropout=0.3,
                  d_dropout_kind="concrete", g_dropout=0.2))
    out = Path(s["run_dir"])
    for f in ("samples.png", "samples_epoch_001.png", "samples_epoch_002.png", "checkpoint.pt",
              "config.json", "summary.json"):
        assert (out / f).is_file(), f
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [1, 2]
    for r in recs:
        assert {"d_loss", "g_loss", "d_real", "d_fake", "gp", "time_s"} <= set(r)
        assert all(math.isfinite(r[k]) for k in ("d_loss", "g_loss", "d_real", "d_fake"))
    assert (out / "samples.png").read_bytes() == (out / "samples_epoch_002.png").read_bytes()
    assert (out / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["task"] == "gan" and cfg["model"]["n_critic"] == 1
    assert cfg["train"]["betas"] == [0.5, 0.999]


def test_nan_loss_stops_with_one_line_and_keeps_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 3 batches per epoch: the 5th discriminator loss (epoch 2) becomes NaN.
    real_loss = nets.discriminator_loss
    calls = {"n": 0}

    def poisoned(kind: str, r: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        loss = real_loss(kind, r, f)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(nets, "discriminator_loss", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(TrainingDiverged) as info:
        run(_tiny(out, epochs=3))
    msg = str(info.value)
    assert "\n" not in msg
    assert "epoch 2" in msg and "d_loss=nan" in msg and "last good checkpoint (epoch 1)" in msg
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["g"].values() if v.is_floating_point())
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_exploding_loss_is_caught(tmp_path: Path) -> None:
    with pytest.raises(TrainingDiverged, match="no checkpoint had been written yet"):
        run(_tiny(tmp_path / "x", max_loss=1e-3))


@pytest.mark.parametrize("loss", ["ns", "wgan-gp"])
def test_resume_equals_uninterrupted_run(tmp_path: Path, loss: str) -> None:
    # Dropout in both nets and (for WGAN-GP) the penalty's random interpolation all draw
    # random numbers: a resumed run must replay them exactly.
    opts = dict(loss=loss, d_dropout=0.3, g_dropout=0.2, n_critic=2 if loss == "wgan-gp" else None)
    full = run(_tiny(tmp_path / "full", epochs=2, **opts))
    run(_tiny(tmp_path / "split", epochs=1, **opts))
    resumed = run(_tiny(tmp_path / "split", epochs=2, **opts), resume=True)
    assert resumed["d_loss"] == full["d_loss"] and resumed["g_loss"] == full["g_loss"]
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoint.pt")
    for part in ("g", "d", "g_ema"):
        for k, v in a[part].items():
            assert torch.equal(v, b[part][k]), (part, k)
    strip = lambda p: [{k: v for k, v in json.loads(x).items() if k not in ("time_s", "images_per_s")}  # noqa: E731
                       for x in p.read_text().splitlines()]
    assert strip(tmp_path / "full" / "metrics.jsonl") == strip(tmp_path / "split" / "metrics.jsonl")
    assert (tmp_path / "full" / "samples.png").read_bytes() == (tmp_path / "split" / "samples.png").read_bytes()


def test_resume_with_other_training_options_is_refused(tmp_path: Path) -> None:
    run(_tiny(tmp_path / "r"))
    with pytest.raises(ResumeError, match=r"--d-dropout \(stored 0.0, given 0.5\)") as info:
        run(_tiny(tmp_path / "r", epochs=2, d_dropout=0.5), resume=True)
    assert "\n" not in str(info.value)


def test_bad_options_are_one_line_errors(tmp_path: Path) -> None:
    for kw, match in [({"loss": "lsgan"}, "unknown GAN loss"),
                      ({"d_dropout_where": "head"}, "placement"),
                      ({"d_dropout": 1.0}, "outside"),
                      ({"ema": 1.0}, "--ema"),
                      ({"batch_size": 500}, "fewer than --batch-size"),
                      ({"d_dropout": 0.3, "d_dropout_kind": "dropconnect"}, "replaces weight layers"),
                      ({"d_dropout_kind": "bogus"}, "unknown dropout kind")]:
        with pytest.raises((InvalidValue, UnknownName), match=match):
            run(_tiny(tmp_path / "bad", **kw))


# -- CLI end to end -------------------------------------------------------------------------


def test_cli_end_to_end_on_digits_then_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from droplab.cli import main

    out = tmp_path / "cli"
    argv = ["gan", "--dataset", "digits", "--limit", "30", "--width", "16", "--epochs", "1",
            "--eval-samples", "200", "--classifier-epochs", "2", "--d-dropout", "0.3",
            "--device", "cpu", "--out", str(out), "--json"]
    assert main(argv) == 0
    s = json.loads(capsys.readouterr().out)
    for k in ("fid", "kid_mean", "kid_std", "inception_score", "precision", "recall"):
        assert isinstance(s[k], float) and math.isfinite(s[k]), k
    assert s["fid"] >= 0 and s["kid_std"] >= 0 and 1.0 <= s["inception_score"] <= 10.0
    assert 0 <= s["precision"] <= 1 and 0 <= s["recall"] <= 1
    assert 1 <= s["modes_covered"] <= 10 and s["num_classes"] == 10
    assert 0 <= s["kl_uniform"] <= math.log(10) + 1e-9
    assert sum(s["class_histogram"]) == 200 and s["num_fake"] == 200
    assert s["feature_extractor"] == str(out / "classifier")
    assert s["classifier_test_acc"] > 0.5
    assert (out / "samples.png").is_file() and (out / "checkpoint.pt").is_file()
    assert (out / "classifier" / "summary.json").is_file()
    clf_ckpt = (out / "classifier" / "checkpoint.pt").stat().st_mtime_ns

    # resuming the finished run (only the folder, as in the README) changes no file
    files = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}
    assert main(["gan", "--out", str(out), "--resume", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == s
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*")
            if p.is_file()} == files
    # a longer run continues from the stored config; every other option is kept
    assert main(["gan", "--out", str(out), "--resume", "--epochs", "2", "--json"]) == 0
    s2 = json.loads(capsys.readouterr().out)
    stored = json.loads((out / "config.json").read_text())
    assert stored["train"]["epochs"] == 2 and stored["dropout"]["d_dropout"] == 0.3
    assert s2["train_time_s"] > s["train_time_s"]  # both epochs' training time
    assert s2["epochs"] == 2 and (out / "samples_epoch_002.png").is_file()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert (out / "classifier" / "checkpoint.pt").stat().st_mtime_ns == clf_ckpt  # reused


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from droplab.cli import main

    code = main(["gan", "--loss", "lsgan", "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("droplab gan: error:") and "\n" not in err
    code = main(["gan", "--feature-extractor", str(tmp_path / "missing"), "--out",
                 str(tmp_path / "f"), "--epochs", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "missing" in err and "\n" not in err
    assert not (tmp_path / "f" / "checkpoint.pt").exists()  # failed before training
    assert main(["gan", "--d-dropout", "1.5", "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--d-dropout" in err and "outside [0, 1)" in err
    assert not (tmp_path / "g").exists()


# -- the mode-collapse benchmarks end to end ------------------------------------------------


def _fake_mnist(root: Path, per_class: int = 12, test_per_class: int = 6) -> Path:
    """MNIST's raw layout (torchvision) with synthetic digits: digit k is a bright 7×7
    square at cell k of a 4×4 grid of cells, plus noise — easy to classify."""
    import struct

    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    for prefix, n in (("train", per_class), ("t10k", test_per_class)):
        labels = torch.arange(10).repeat(n)
        imgs = torch.randint(0, 40, (labels.numel(), 28, 28), generator=gen)
        for i, k in enumerate(labels.tolist()):
            r, c = divmod(k, 4)
            imgs[i, r * 7:(r + 1) * 7, c * 7:(c + 1) * 7] = 230
        for kind, arr in (("images-idx3-ubyte", imgs), ("labels-idx1-ubyte", labels)):
            head = struct.pack(">HBB", 0, 8, arr.dim()) + struct.pack(f">{arr.dim()}I", *arr.shape)
            (raw / f"{prefix}-{kind}").write_bytes(head + arr.to(torch.uint8).numpy().tobytes())
    return root


def test_cli_stacked_mnist_reports_modes_kl_fid_and_density_coverage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from droplab.cli import main

    root = _fake_mnist(tmp_path / "data")
    out = tmp_path / "sm"
    argv = ["gan", "--dataset", "stacked-mnist", "--data-root", str(root), "--epochs", "1",
            "--batch-size", "32", "--width", "8", "--z-dim", "16", "--eval-samples", "60",
            "--mode-samples", "300", "--classifier-epochs", "3", "--device", "cpu",
            "--out", str(out), "--json"]
    assert main(argv) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["dataset"] == "stacked-mnist" and s["image_shape"] == [3, 28, 28]
    assert s["num_modes"] == 1000 and s["num_classes"] == 1000 and s["mode_samples"] == 300
    assert 1 <= s["modes"] == s["modes_covered"] <= 300
    assert sum(s["class_histogram"]) == 300 and len(s["class_histogram"]) == 1000
    assert 0 <= s["kl_uniform"] <= math.log(1000) + 1e-9
    for k in ("fid", "kid_mean", "density", "coverage", "precision", "recall"):
        assert isinstance(s[k], float) and math.isfinite(s[k]) and s[k] >= 0, k
    assert s["coverage"] <= 1 and s["num_real"] == 60 and s["feature_dim"] == 3 * 256
    assert s["eval_real"] == "test" and s["mode_rule"] == "≥ 1 sample"
    clf = json.loads((out / "classifier" / "config.json").read_text())
    assert clf["data"]["dataset"] == "mnist" and clf["model"]["name"] == "lenet"
    assert s["classifier_test_acc"] > 0.9  # the synthetic digits are easy


def test_cli_stacked_mnist_on_the_shared_mnist_files(
    shared_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The "done when" command on the real MNIST files, tiny (skipped without ../shared)."""
    from droplab.cli import main

    root = shared_dir / "datasets"
    if not (root / "MNIST" / "raw").is_dir():
        pytest.skip("needs ../shared/datasets/MNIST/raw")
    argv = ["gan", "--dataset", "stacked-mnist", "--data-root", str(root), "--no-download",
            "--limit", "20", "--epochs", "1", "--batch-size", "32", "--width", "8", "--z-dim",
            "16", "--eval-samples", "40", "--mode-samples", "200", "--classifier-epochs", "1",
            "--device", "cpu", "--out", str(tmp_path / "sm"), "--json"]
    assert main(argv) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["dataset"] == "stacked-mnist" and s["num_modes"] == 1000 and s["g_steps"] >= 5
    assert 1 <= s["modes"] <= 200 and 0 <= s["kl_uniform"] <= math.log(1000) + 1e-9
    for k in ("fid", "density", "coverage"):
        assert isinstance(s[k], float) and math.isfinite(s[k]), k


def test_cli_ring_reports_modes_hit_and_high_quality_samples(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from droplab.cli import main

    out = tmp_path / "ring"
    assert main(["gan", "--dataset", "ring", "--limit", "64", "--batch-size", "64", "--width",
                 "32", "--epochs", "2", "--eval-samples", "500", "--d-dropout", "0.2",
                 "--device", "cpu", "--out", str(out), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["dataset"] == "ring" and s["image_shape"] == [2] and s["g_steps"] == 16
    assert s["num_modes"] == 8 and 0 <= s["modes_hit"] == s["modes"] <= 8
    assert 0 <= s["high_quality"] <= 1 and s["num_samples"] == 500
    assert s["quality_radius"] == pytest.approx(0.03)
    assert sum(s["mode_histogram"]) == round(s["high_quality"] * 500)
    for k in ("fid", "density", "coverage"):
        assert math.isfinite(s[k]), k
    for f in ("samples.png", "samples_epoch_001.png", "samples_epoch_002.png"):
        assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "classifier").exists()  # points need no feature classifier
    assert json.loads((out / "config.json").read_text())["model"]["model"] == "auto"
    loaded = __import__("droplab.runs.restore", fromlist=["load_run"]).load_run(out)
    assert isinstance(loaded.model, nets.MLPGenerator)


def test_cli_bad_mode_benchmark_inputs_are_one_line(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from droplab.cli import main

    cases = [
        (["--dataset", "stacked-mnist", "--data-root", str(tmp_path / "nowhere"), "--no-download"],
         [str(tmp_path / "nowhere" / "MNIST" / "raw"), "stacked-mnist"]),
        (["--diffaugment", "color,warp"], ["unknown DiffAugment policy 'warp'", "translation"]),
        (["--dataset", "ring", "--diffaugment", "color"], ["--diffaugment", "2-D"]),
        (["--d-feedback-dropout", "0.5"], ["--discriminators"]),
    ]
    for i, (extra, words) in enumerate(cases):
        out = tmp_path / f"bad{i}"
        code = main(["gan", *extra, "--epochs", "1", "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, (extra, err)
        assert all(w in err for w in words), (extra, err)
        assert not (out / "checkpoint.pt").exists()
