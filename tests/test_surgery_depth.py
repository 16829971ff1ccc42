"""add_stochastic_depth: residual branches only, the linear depth rule, eval unchanged."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from droplab import layers
from droplab.errors import InvalidValue, UnknownName
from droplab.surgery import add_stochastic_depth, find_dropout
from droplab.surgery.kinds import get_rate, leaf_kind


def _rates(model: nn.Module) -> list[float]:
    return [d.p for d in find_dropout(model) if d.kind == "droppath"]  # type: ignore[misc]


def _linear(p: float, n: int) -> list[float]:
    return [pytest.approx(p * i / n) for i in range(1, n + 1)]


@pytest.mark.parametrize("name, blocks, per_block", [
    ("resnet18", 8, 1), ("regnet_y_400mf", 16, 1), ("mobilenet_v3_small", 6, 1),
    ("efficientnet_b0", 16, 1), ("convnext_tiny", 18, 1), ("swin_t", 12, 1),
    ("vit_b_16", 12, 2),
])
def test_torchvision_families_get_the_linear_depth_rule(name: str, blocks: int,
                                                        per_block: int) -> None:
    torch.manual_seed(0)
    kw = {"image_size": 32} if name == "vit_b_16" else {}
    model = torchvision.models.get_model(name, weights=None, num_classes=3, **kw).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    keys = set(model.state_dict())
    names = add_stochastic_depth(model, 0.2)
    assert len(names) == blocks * per_block
    expected = [r for r in _linear(0.2, blocks) for _ in range(per_block)]
    assert [get_rate(model.get_submodule(n), leaf_kind(model.get_submodule(n)).rate_attr)
            for n in names] == expected
    assert set(model.state_dict()) == keys  # parameter names kept
    with torch.no_grad():
        assert torch.equal(model(x), ref)  # eval output identical


def test_the_identity_path_is_never_dropped() -> None:
    # at p -> 1 every branch is dropped: a block must become its shortcut (relu(x) for a
    # BasicBlock without downsampling), not zero, and the backbone still sees the input
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    add_stochastic_depth(model, 0.999999, rule="uniform")
    for m in model.modules():
        if isinstance(m, layers.DropPath):
            m.train()
    block = model.layer1[0]
    x = torch.randn(4, 64, 8, 8)
    with torch.no_grad():
        assert torch.equal(block(x), torch.relu(x))
        features = nn.Sequential(*list(model.children())[:-1])
        a, b = features(torch.randn(2, 3, 32, 32)), features(torch.randn(2, 3, 32, 32))
    assert not torch.allclose(a, b)


def test_existing_drop_path_layers_are_rescaled() -> None:
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet18", pretrained=False, drop_path_rate=0.1)
    before = _rates(model)
    assert max(before) == pytest.approx(0.1)
    add_stochastic_depth(model, 0.3)
    assert _rates(model) == [pytest.approx(3 * r) for r in before]  # timm's own rule kept
    with pytest.raises(InvalidValue, match="drop_path_rate") as info:
        add_stochastic_depth(timm.create_model("resnet18", pretrained=False), 0.1)
    assert "\n" not in str(info.value)


def test_droplab_resnet18_cifar_drop_path_is_retuned_not_doubled() -> None:
    from droplab.models.classifiers import ModelConfig, build_model

    model = build_model(ModelConfig(name="resnet18-cifar", dropout=0.1, dropout_kind="droppath",
                                    dropout_where="conv"), (3, 32, 32), 10)
    n = len(_rates(model))
    add_stochastic_depth(model, 0.4)
    assert _rates(model) == _linear(0.4, 8) and len(_rates(model)) == n


def test_models_without_residual_blocks_are_refused() -> None:
    with pytest.raises(InvalidValue, match="no residual blocks"):
        add_stochastic_depth(torchvision.models.densenet121(weights=None), 0.1)
    with pytest.raises(UnknownName):
        add_stochastic_depth(nn.Linear(2, 2), 0.1, rule="exponential")
