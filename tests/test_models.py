"""droplab.models: the classifier zoo, dropout placement, max-norm, weights."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
from torch import nn

from droplab import layers
from droplab.errors import InvalidValue, UnknownName, WeightsUnavailable
from droplab.models import ModelConfig, apply_max_norm, build_model


def one_line(e: pytest.ExceptionInfo[BaseException]) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


def drops(module: nn.Module) -> list[layers.DropoutModule]:
    return [m for m in module.modules() if isinstance(m, layers.DropoutModule)]


FEATURES = {"mlp": 800, "lenet": 256, "convnet": 128}


@pytest.mark.parametrize("name", ["mlp", "lenet", "convnet"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_small_models_build_and_run(name: str, shape: tuple[int, int, int]) -> None:
    widths = {"mlp": (32, 16), "lenet": (4, 8, 8, 16), "convnet": (4, 8, 8)}[name]
    m = build_model(ModelConfig(name=name, widths=widths), shape, 7)
    x = torch.randn(5, *shape)
    assert m(x).shape == (5, 7)
    assert m.forward_features(x).shape == (5, widths[-1])
    assert isinstance(m.head, nn.Linear) and m.head.out_features == 7
    assert drops(m) == []  # rate 0: no dropout module at all


@pytest.mark.parametrize("name", ["mlp", "lenet", "convnet"])
def test_default_widths(name: str) -> None:
    m = build_model(ModelConfig(name=name), (3, 32, 32), 10)
    assert m.forward_features(torch.zeros(2, 3, 32, 32)).shape == (2, FEATURES[name])


def test_head_dropout_placement_and_behaviour() -> None:
    cfg = ModelConfig(name="mlp", widths=(64, 64, 64), dropout=0.5, input_dropout=0.2)
    m = build_model(cfg, (1, 8, 8), 10)
    found = [(d.kind, d.p) for d in drops(m)]
    # input dropout, after hidden layers 1 and 2, and before the head (after hidden 3)
    assert found == [("dropout", 0.2), ("dropout", 0.5), ("dropout", 0.5), ("dropout", 0.5)]
    assert m.head_drop in set(drops(m))
    x = torch.randn(4, 1, 8, 8)
    m.train()
    assert not torch.equal(m(x), m(x))  # stochastic in training
    m.eval()
    assert torch.equal(m(x), m(x))  # identity at test time


@pytest.mark.parametrize("kind", ["dropout", "gaussian", "alpha", "concrete"])
def test_flat_kinds_in_head(kind: str) -> None:
    m = build_model(ModelConfig(name="lenet", widths=(4, 8, 16), dropout=0.3, dropout_kind=kind),
                    (1, 8, 8), 3)
    assert [d.kind for d in drops(m)] == [kind]
    assert drops(m.conv) == []


def test_conv_placement_structured_kinds() -> None:
    cfg = ModelConfig(name="convnet", widths=(4, 8, 8), dropout=0.2, dropout_kind="dropblock",
                      dropout_where="conv")
    m = build_model(cfg, (3, 32, 32), 10)
    blocks = drops(m.conv)
    # one per stage; maps of 16, 8, 4 px get blocks of 6, 3, 2 (a third, 1..7)
    assert [b.block_size for b in blocks] == [6, 3, 2]
    assert isinstance(m.head_drop, nn.Identity)
    cfg = ModelConfig(name="convnet", widths=(4, 8, 8), dropout=0.2, dropout_kind="spatial",
                      dropout_where="all")
    m = build_model(cfg, (3, 32, 32), 10)
    assert [d.kind for d in drops(m.conv)] == ["spatial"] * 3
    assert m.head_drop.kind == "dropout"  # map kinds mean nothing on flat features
    with pytest.raises(InvalidValue) as e:
        build_model(ModelConfig(name="convnet", dropout=0.2, dropout_kind="dropblock"),
                    (3, 32, 32), 10)
    assert "--dropout-where conv" in one_line(e)
    with pytest.raises(InvalidValue):
        build_model(ModelConfig(name="mlp", dropout=0.2, dropout_where="conv"), (1, 8, 8), 10)


def test_dropconnect_replaces_layers() -> None:
    m = build_model(ModelConfig(name="mlp", widths=(16, 16), dropout=0.5,
                                dropout_kind="dropconnect"), (1, 8, 8), 4)
    assert isinstance(m.head, layers.DropConnectLinear)
    assert isinstance(m.features[5], layers.DropConnectLinear)  # hidden layer 2
    assert isinstance(m.features[2], nn.Linear)  # the first layer sees the input
    m = build_model(ModelConfig(name="lenet", widths=(4, 8, 16), dropout=0.5,
                                dropout_kind="dropconnect", dropout_where="conv"), (1, 8, 8), 4)
    assert sum(isinstance(x, layers.DropConnectConv2d) for x in m.modules()) == 2
    assert isinstance(m.head, nn.Linear)


def test_resnet18_cifar_and_stochastic_depth() -> None:
    cfg = ModelConfig(name="resnet18-cifar", dropout=0.2, dropout_kind="droppath",
                      dropout_where="all")
    m = build_model(cfg, (3, 32, 32), 10)
    assert isinstance(m.net.maxpool, nn.Identity) and m.net.conv1.stride == (1, 1)
    paths = [d for d in drops(m.net) if d.kind == "droppath"]
    # Huang et al.'s linear decay over the 8 residual blocks: p_l = 0.2 * l / 8
    assert [round(d.p, 6) for d in paths] == [round(0.2 * i / 8, 6) for i in range(1, 9)]
    assert m.head_drop.kind == "dropout" and m.head.out_features == 10
    x = torch.randn(2, 3, 8, 8)  # any size works (global pooling); small keeps the test fast
    assert m(x).shape == (2, 10) and m.forward_features(x).shape == (2, 512)


def test_torchvision_model_with_surgery_dropout() -> None:
    m = build_model(ModelConfig(name="tv:mobilenet_v3_small", dropout=0.3), (1, 32, 32), 5)
    x = torch.randn(2, 1, 32, 32)  # grey input repeated to RGB
    assert m(x).shape == (2, 5) and m.forward_features(x).shape == (2, 1024)
    assert isinstance(m.head, nn.Linear)  # surgery: a dropout slot, parameter names kept
    assert m.head.pre_dropout.p == pytest.approx(0.3) and m.head.out_features == 5
    with pytest.raises(UnknownName) as e:
        build_model(ModelConfig(name="tv:resnet1000"), (3, 32, 32), 10)
    assert "tv:resnet18" in one_line(e)
    with pytest.raises(InvalidValue):
        build_model(ModelConfig(name="tv:mobilenet_v3_small", dropout=0.3, dropout_where="conv"),
                    (3, 32, 32), 10)


def test_pretrained_weights_from_hub_cache_or_clean_error(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.models as tvm

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    cfg = ModelConfig(name="tv:mobilenet_v3_small", pretrained=True)
    with pytest.raises(WeightsUnavailable) as e:
        build_model(cfg, (3, 32, 32), 10)
    url = tvm.get_model_weights("mobilenet_v3_small").DEFAULT.url
    cached = tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    assert str(cached) in one_line(e)
    # a file in the standard torch hub cache is used as the pretrained weights
    ref = tvm.mobilenet_v3_small()
    cached.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ref.state_dict(), cached)
    m = build_model(cfg, (3, 32, 32), 10)
    assert torch.equal(m.net.features[0][0].weight, ref.features[0][0].weight)


def test_weights_file_roundtrip_and_errors(tmp_path: Path) -> None:
    cfg = ModelConfig(name="lenet", widths=(4, 8, 16), dropout=0.5)
    a = build_model(cfg, (1, 8, 8), 3).eval()
    torch.save({"model": a.state_dict()}, tmp_path / "ckpt.pt")
    b = build_model(ModelConfig(name="lenet", widths=(4, 8, 16), dropout=0.5,
                                weights=str(tmp_path / "ckpt.pt")), (1, 8, 8), 3).eval()
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(a(x), b(x))
    with pytest.warns(UserWarning, match="other class count"):  # new head, same trunk
        c = build_model(ModelConfig(name="lenet", widths=(4, 8, 16),
                                    weights=str(tmp_path / "ckpt.pt")), (1, 8, 8), 5)
    assert torch.equal(c.fc[1].weight, a.fc[1].weight)
    with pytest.raises(WeightsUnavailable):
        build_model(ModelConfig(name="lenet", weights=str(tmp_path / "nope.pt")), (1, 8, 8), 3)
    with pytest.raises(InvalidValue) as e:
        build_model(ModelConfig(name="lenet", widths=(8, 8, 16),
                                weights=str(tmp_path / "ckpt.pt")), (1, 8, 8), 3)
    assert "other shapes" in one_line(e)


def test_max_norm_holds() -> None:
    m = build_model(ModelConfig(name="lenet", widths=(4, 8, 16)), (1, 8, 8), 3)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(10)
        small = m.head.weight[0].clone() / m.head.weight[0].norm() * 0.5
        m.head.weight[0] = small
    apply_max_norm(m, 2.0)
    for mod in m.modules():
        if isinstance(mod, nn.Linear | nn.Conv2d):
            norms = mod.weight.detach().flatten(1).norm(dim=1)
            assert float(norms.max()) <= 2.0 * (1 + 1e-5)
    assert torch.allclose(m.head.weight[0], small)  # rows inside the ball are untouched
    built = build_model(ModelConfig(name="mlp", widths=(16,), max_norm=0.1), (1, 8, 8), 3)
    assert float(built.head.weight.detach().norm(dim=1).max()) <= 0.1 * (1 + 1e-5)


def test_unknown_and_bad_config_one_line() -> None:
    with pytest.raises(UnknownName) as e:
        build_model(ModelConfig(name="vgg99"), (3, 32, 32), 10)
    msg = one_line(e)
    assert "vgg99" in msg and "lenet" in msg and "tv:<name>" in msg
    with pytest.raises(UnknownName):
        ModelConfig(dropout_kind="zoneout")
    with pytest.raises(UnknownName):
        ModelConfig(dropout_where="everywhere")
    with pytest.raises(InvalidValue):
        ModelConfig(dropout=1.0)
    assert ModelConfig(widths=[8, 16]).widths == (8, 16)  # JSON lists become tuples
