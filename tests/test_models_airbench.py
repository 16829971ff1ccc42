"""The airbench-style network: whitening, dirac and BatchNorm settings, LR groups, every
dropout option, and `droplab train`/`evaluate` with the fast recipe's options."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from droplab import layers as L
from droplab.errors import InvalidValue
from droplab.models import ModelConfig, build_model
from droplab.models.airbench import LOGIT_SCALE, AirbenchNet, _conv, init_whitening
from droplab.runs.restore import load_run

SMALL = (16, 32, 32)


def net(**kw) -> AirbenchNet:
    name = kw.pop("name", "airbench")
    model = build_model(ModelConfig(name=name, widths=kw.pop("widths", SMALL), **kw), (3, 32, 32), 10)
    assert isinstance(model, AirbenchNet)
    return model


def correlated_images(n: int = 64, seed: int = 0) -> torch.Tensor:
    """Smooth, channel-correlated images: far from white, so whitening has work to do."""
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.avg_pool2d(torch.randn(n, 1, 36, 36, generator=g), 5, 1)
    mix = torch.tensor([[1.0], [0.8], [0.5]]).view(1, 3, 1, 1)
    return base * mix + 0.1 * torch.randn(n, 3, 32, 32, generator=g)


def test_whitening_filters_decorrelate_patches() -> None:
    x = correlated_images().double()
    weight = torch.empty(24, 3, 2, 2, dtype=torch.float64)
    init_whitening(weight, x, eps=0.0)
    out = torch.nn.functional.conv2d(x, weight[:12])  # (n, 12, 31, 31): whitened patches
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12)
    cov = flat.T @ flat / flat.shape[0]
    # W Σ Wᵀ = diag(λ / (λ + eps)) = I for eps = 0, up to float64 rounding
    assert torch.allclose(cov, torch.eye(12, dtype=cov.dtype), atol=1e-8)
    assert torch.equal(weight[12:], -weight[:12])
    with pytest.raises(InvalidValue, match="whitening needs 24 filters"):
        init_whitening(torch.empty(12, 3, 2, 2), x)


def test_whitening_is_frozen_and_its_bias_trains() -> None:
    model = net()
    model.init_from_data(correlated_images())
    before = model.whiten.weight.clone()
    assert not model.whiten.weight.requires_grad and model.whiten.bias.requires_grad
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = nn.functional.cross_entropy(model(correlated_images(8, seed=1)), torch.arange(8))
    loss.backward()
    opt.step()
    assert torch.equal(model.whiten.weight, before)
    assert model.whiten.bias.grad is not None and model.whiten.bias.grad.abs().sum() > 0


def test_dirac_init_batchnorm_without_scale_and_lr_groups() -> None:
    conv = _conv(8, 12)
    x = torch.randn(2, 8, 5, 5)
    assert torch.equal(conv(x)[:, :8], x)  # the first C_in filters are identities
    model = net()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 6
    assert all(not m.weight.requires_grad and bool((m.weight == 1).all()) for m in norms)
    assert all(m.eps == 1e-12 and m.momentum == pytest.approx(0.4) for m in norms)
    (rest, one), (biases, scale) = model.lr_groups()
    assert (one, scale) == (1.0, 64.0)
    assert {id(b) for b in biases} == {id(m.bias) for m in norms}
    everything = [id(p) for p in rest] + [id(p) for p in biases]
    assert sorted(everything) == sorted(id(p) for p in model.parameters())  # each once


def test_logits_are_the_scaled_max_pooled_features() -> None:
    model = net().eval()
    x = correlated_images(4)
    features = model.forward_features(x)
    pooled = torch.amax(model.groups(nn.functional.gelu(model.whiten(x))), dim=(2, 3))
    assert torch.allclose(features, pooled * LOGIT_SCALE)
    assert torch.allclose(model(x), model.head(features))
    assert model.head.bias is None


@pytest.mark.parametrize("kind,where,name", [
    ("dropout", "head", "airbench"), ("dropout", "conv", "airbench"),
    ("spatial", "conv", "airbench"), ("dropblock", "all", "airbench"),
    ("gaussian", "conv", "airbench"), ("dropconnect", "all", "airbench"),
    ("droppath", "conv", "airbench-res"), ("concrete", "head", "airbench"),
])
def test_every_dropout_option_applies(kind: str, where: str, name: str) -> None:
    model = net(name=name, dropout=0.2, dropout_kind=kind, dropout_where=where)
    stochastic = [m for m in model.modules() if isinstance(m, L.DropoutModule)]
    assert stochastic, f"no {kind} layer placed"
    x = correlated_images(8)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    a = model(x)
    assert not torch.equal(a, model(x))
    a.sum().backward()
    if kind == "dropblock":  # block sizes chosen from the groups' 15, 7 and 3 px maps
        sizes = [m.block_size for m in model.modules() if isinstance(m, L.DropBlock2d)]
        assert sizes == [5, 3, 1]
    if kind == "dropconnect":  # the groups' convolutions and the head, never the whitening
        wrapped = [n for n, m in model.named_modules() if isinstance(m, L.DropConnectConv2d)]
        assert len(wrapped) == 6 and not any(n.startswith("whiten") for n in wrapped)
        assert isinstance(model.head, L.DropConnectLinear) and model.head.bias is None
    if kind == "droppath":  # the linear depth rule over the three residual branches
        rates = [m.p for m in model.modules() if isinstance(m, L.DropPath)]
        assert rates == pytest.approx([0.2 / 3, 0.4 / 3, 0.2])


def test_residual_variant_has_the_same_parameters() -> None:
    a, b = net(), net(name="airbench-res")
    assert [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]
    x = correlated_images(4)
    assert not torch.allclose(a.eval()(x), b.eval()(x))


def test_bad_options_are_one_line_errors() -> None:
    cases = [
        (dict(dropout=0.1, dropout_kind="droppath", dropout_where="conv"), "airbench-res"),
        (dict(widths=(16, 32)), "three group widths"),
    ]
    for kw, message in cases:
        with pytest.raises(InvalidValue, match=message) as err:
            net(**kw)
        assert "\n" not in str(err.value)
    with pytest.raises(InvalidValue, match="at least 17×17"):
        build_model(ModelConfig(name="airbench"), (3, 16, 16), 10)


# --------------------------------------------------------------------------- end to end
def _colour_folder(root: Path, per_class: int = 12) -> Path:
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", per_class), ("test", per_class // 2)):
        for k, colour in enumerate(((200, 40, 40), (40, 200, 40), (40, 40, 200))):
            d = root / split / f"c{k}"
            d.mkdir(parents=True)
            for i in range(n):
                noise = torch.randint(-30, 30, (32, 32, 3), generator=g)
                px = (torch.tensor(colour) + noise).clamp(0, 255).to(torch.uint8).numpy()
                Image.fromarray(px).save(d / f"{i}.png")
    return root


def _droplab(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    return subprocess.run([sys.executable, "-m", "droplab", *args], env=env, capture_output=True,
                          text=True, timeout=600)


def test_train_and_evaluate_with_the_fast_recipe(tmp_path: Path) -> None:
    data = _colour_folder(tmp_path / "data")
    out = tmp_path / "run"
    proc = _droplab("train", "--dataset", f"imagefolder:{data}", "--model", "airbench",
                    "--widths", "8,16,16", "--dropout", "0.1", "--dropout-kind", "spatial",
                    "--dropout-where", "conv", "--epochs", "2", "--batch-size", "12",
                    "--lr", "0.05", "--momentum", "0.85", "--label-smoothing", "0.2",
                    "--lr-schedule", "triangle", "--lookahead", "2", "--crop-pad", "2",
                    "--pad-mode", "reflect", "--flip", "alternate", "--tta", "flip-translate",
                    "--val-fraction", "0", "--channels-last", "--device", "cpu",
                    "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["tta"] == "flip-translate" and summary["model"] == "airbench"
    assert summary["test_images"] == 18 and 0.0 <= summary["test_acc"] <= 1.0
    stored = json.loads((out / "config.json").read_text())
    assert stored["data"]["flip"] == "alternate" and stored["train"]["lookahead"] == 2
    loaded = load_run(out, "cpu")  # the whitening filters come back from the checkpoint
    assert isinstance(loaded.model, AirbenchNet)
    assert loaded.model.whiten.weight.abs().sum() > 0
    proc = _droplab("evaluate", str(out), "--tta", "flip", "--device", "cpu", "--json")
    assert proc.returncode == 0, proc.stderr
    ev = json.loads(proc.stdout)
    assert ev["tta"] == "flip" and ev["test_images"] == 18
    proc = _droplab("evaluate", str(out), "--tta", "sideways", "--device", "cpu")
    assert proc.returncode == 2 and "test-time augmentation" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
