"""Bring your own model: the compatibility matrix of issue 13.

For every model (weights=None, 32-pixel inputs, one thread): find_dropout finds the number
of sources counted here independently, from the architecture's own module classes; MC
passes all differ and their mean is a distribution; cached MC equals uncached MC with the
same generator (allclose 1e-5); every buffer (BatchNorm statistics included) is unchanged;
the eval output is unchanged after MC; and with every rate set to 0, mc_predict is a
one-line error. Models whose architecture has no stochastic layer (torchvision resnet18,
regnet) get a dropout head first, as a user would add one.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torchvision
from torch import nn

from droplab import layers
from droplab.errors import InvalidValue
from droplab.surgery import add_dropout, find_dropout, find_head, set_dropout_rate
from droplab.uncertainty import mc_predict

timm = pytest.importorskip("timm")


def _count(model: nn.Module, *names: str) -> int:
    """Modules whose class is named one of ``names`` (``Dropout`` counts nn.Dropout only)."""
    return sum(type(m).__name__ in names and (type(m).__name__ != "Dropout"
                                              or type(m) is nn.Dropout)
               for m in model.modules())


def _tv(name: str, **kw: object) -> Callable[[], nn.Module]:
    return lambda: torchvision.models.get_model(name, weights=None, num_classes=5, **kw)


def _timm(name: str, **kw: object) -> Callable[[], nn.Module]:
    return lambda: timm.create_model(name, pretrained=False, num_classes=5, **kw)


def _head(build: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def built() -> nn.Module:
        model = build()
        add_dropout(model, "head", p=0.2)
        return model
    return built


def _droplab(name: str, **kw: object) -> Callable[[], nn.Module]:
    from droplab.models.classifiers import ModelConfig, build_model

    return lambda: build_model(ModelConfig(name=name, dropout=0.3, **kw), (3, 32, 32), 5)


def _droplab_layers(model: nn.Module) -> int:
    return sum(isinstance(m, layers.DropoutModule) for m in model.modules())


# model id → (builder, sources counted from the architecture)
MATRIX: dict[str, tuple[Callable[[], nn.Module], Callable[[nn.Module], int]]] = {
    "tv:resnet18+head": (_head(_tv("resnet18")), lambda m: _droplab_layers(m)),
    "tv:mobilenet_v3_small": (_tv("mobilenet_v3_small"), lambda m: _count(m, "Dropout")),
    "tv:efficientnet_b0": (_tv("efficientnet_b0"),
                           lambda m: _count(m, "StochasticDepth", "Dropout")),
    "tv:convnext_tiny": (_tv("convnext_tiny"), lambda m: _count(m, "StochasticDepth")),
    # DenseNet: F.dropout inside every dense layer's forward
    "tv:densenet121": (_tv("densenet121", drop_rate=0.2), lambda m: _count(m, "_DenseLayer")),
    "tv:regnet_y_400mf+head": (_head(_tv("regnet_y_400mf")), lambda m: _droplab_layers(m)),
    # Swin: two rates (attention, projection) in each window attention's functional call
    "tv:swin_t": (_tv("swin_t"), lambda m: _count(m, "StochasticDepth", "Dropout")
                  + 2 * _count(m, "ShiftedWindowAttention")),
    "tv:vit_b_16": (_tv("vit_b_16", dropout=0.1, attention_dropout=0.1, image_size=32),
                    lambda m: _count(m, "Dropout", "MultiheadAttention")),
    "timm:resnet18": (_timm("resnet18", drop_rate=0.2, drop_path_rate=0.1),
                      lambda m: _count(m, "DropPath") + 1),  # + the F.dropout head
    # timm ViT: fused attention reads attn_drop.p and never calls attn_drop: one source each
    "timm:vit_tiny_patch16_224": (
        _timm("vit_tiny_patch16_224", img_size=32, drop_rate=0.1, attn_drop_rate=0.1,
              drop_path_rate=0.1),
        lambda m: _count(m, "Dropout", "DropPath")),
    "timm:convnext_atto": (_timm("convnext_atto", drop_path_rate=0.2),
                           lambda m: _count(m, "Dropout", "DropPath")),
    # timm EfficientNet: its head's F.dropout exists at rate 0 and is driven by surgery
    "timm:efficientnet_b0": (_timm("efficientnet_b0"), lambda m: 1),
    "droplab:mlp": (_droplab("mlp"), _droplab_layers),
    "droplab:lenet": (_droplab("lenet"), _droplab_layers),
    "droplab:convnet": (_droplab("convnet", dropout_where="all"), _droplab_layers),
    "droplab:resnet18-cifar": (_droplab("resnet18-cifar", dropout_kind="droppath",
                                        dropout_where="all"), _droplab_layers),
    "droplab:tv:resnet18": (_droplab("tv:resnet18"), _droplab_layers),
}


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(13)


@pytest.mark.parametrize("model_id", list(MATRIX))
def test_compatibility_matrix(model_id: str) -> None:
    build, expected = MATRIX[model_id]
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    # untrained heads give logits from ~1e-9 to ~1e3: float32 softmax maps those to one
    # uniform or one-hot row whatever the pass; scale the head so logits have std 1, as a
    # trained classifier's roughly do, and the passes' differences show in probabilities
    head = model.get_submodule(find_head(model))
    with torch.no_grad():
        if not head.weight.any():  # zero-initialised heads (torchvision ViT)
            nn.init.normal_(head.weight, std=0.02)
        scale = model(x).std()
        head.weight.div_(scale)
        if head.bias is not None:
            head.bias.div_(scale)
    found = find_dropout(model)
    assert len(found) == expected(model)
    assert all(d.mc for d in found)  # nothing in the matrix is refused
    if model_id == "timm:efficientnet_b0":
        assert found[0].p == 0.0 and set_dropout_rate(model, 0.2) == 1
    with torch.no_grad():
        ref = model(x)
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    T = 6
    cached = mc_predict(model, x, T, reduce="none", generator=_gen())
    uncached = mc_predict(model, x, T, reduce="none", generator=_gen(), cache_prefix=False)
    assert torch.allclose(cached, uncached, atol=1e-5)
    # the passes differ (with small drop-path rates two passes may drop the same blocks,
    # so not every pair has to; per-pass independence is tested in test_uncertainty_mc)
    assert len({tuple(row.tolist()) for row in cached.flatten(1)}) > 1
    mean = cached.mean(0)
    assert (mean >= 0).all() and torch.allclose(mean.sum(1), torch.ones(2), atol=1e-5)
    after = model.state_dict()
    assert all(torch.equal(buffers[k], after[k]) for k in buffers)
    assert not any(m.training for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(x), ref)
    set_dropout_rate(model, 0.0)
    with pytest.raises(InvalidValue, match="all at rate 0") as info:
        mc_predict(model, x, T)
    assert "\n" not in str(info.value)
