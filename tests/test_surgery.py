"""Model surgery on toy nets and torchvision resnet18 / vgg11 / mobilenet_v3_small."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from droplab import layers
from droplab.errors import InvalidValue, UnknownName
from droplab.surgery import (
    add_dropconnect,
    add_dropout,
    find_dropout,
    find_head,
    replace_dropout,
    set_dropout_rate,
)

TV_MODELS = ("resnet18", "vgg11", "mobilenet_v3_small")
HEADS = {"resnet18": "fc", "vgg11": "classifier.6", "mobilenet_v3_small": "classifier.3"}
EXISTING = {
    "resnet18": [],
    "vgg11": [("classifier.2", "dropout", 0.5), ("classifier.5", "dropout", 0.5)],
    "mobilenet_v3_small": [("classifier.2", "dropout", 0.2)],
}


@pytest.fixture(scope="module")
def tv_models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    # small num_classes keeps vgg11's big classifier layers cheap enough to build in a test
    return {name: getattr(torchvision.models, name)(weights=None, num_classes=5)
            for name in TV_MODELS}


def _fresh(tv_models: dict[str, nn.Module], name: str) -> nn.Module:
    return copy.deepcopy(tv_models[name]).eval()  # a copy is much cheaper than a new init


X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", TV_MODELS)
def test_find_dropout_and_head_on_torchvision(tv_models: dict[str, nn.Module], name: str) -> None:
    model = tv_models[name]
    assert [(d.name, d.kind, d.p) for d in find_dropout(model)] == EXISTING[name]
    assert find_head(model) == HEADS[name]


@pytest.mark.parametrize("name", TV_MODELS)
def test_add_dropout_head_keeps_eval_outputs_and_changes_train_outputs(
    tv_models: dict[str, nn.Module], name: str
) -> None:
    model = _fresh(tv_models, name)
    with torch.no_grad():
        before = model(X)
    wrapped = add_dropout(model, "head", p=0.5)
    assert wrapped == [HEADS[name]]
    head = model.get_submodule(HEADS[name])
    assert isinstance(head, nn.Sequential) and isinstance(head[0], layers.Dropout)
    assert isinstance(head[1], nn.Linear)
    with torch.no_grad():
        after = model(X)
    assert torch.equal(before, after)  # dropout is the identity in eval mode
    # only the new layer stochastic: outputs now differ from the deterministic ones
    head[0].train()
    with torch.no_grad():
        noisy = model(X)
    # mobilenet's untrained logits are ~1e-10: compare relatively
    assert not torch.allclose(noisy, before, rtol=1e-3, atol=0.0)
    assert len(find_dropout(model)) == len(EXISTING[name]) + 1


@pytest.mark.parametrize("name", TV_MODELS)
def test_set_and_replace_dropout_on_torchvision(tv_models: dict[str, nn.Module], name: str) -> None:
    model = _fresh(tv_models, name)
    add_dropout(model, "head", p=0.3)
    n = len(find_dropout(model))
    assert set_dropout_rate(model, 0.25) == n
    assert {d.p for d in find_dropout(model)} == {0.25}
    assert set_dropout_rate(model, 0.25) == 0  # nothing changed the second time
    with torch.no_grad():
        ref = model(X)
    names = [d.name for d in find_dropout(model)]
    assert replace_dropout(model, "gaussian") == n
    found = find_dropout(model)
    assert [d.name for d in found] == names  # names kept
    assert all(d.kind == "gaussian" and d.p == 0.25 for d in found)
    with torch.no_grad():
        assert torch.equal(model(X), ref)  # still identity in eval mode


def test_add_dropout_after_type_and_pattern_on_resnet(tv_models: dict[str, nn.Module]) -> None:
    model = _fresh(tv_models, "resnet18")
    with torch.no_grad():
        ref = model(X)
    wrapped = add_dropout(model, after="layer4.*.relu", kind="spatial", p=0.1)
    assert wrapped == ["layer4.0.relu", "layer4.1.relu"]
    assert [d.kind for d in find_dropout(model)] == ["spatial", "spatial"]
    added = add_dropout(model, after=nn.AdaptiveAvgPool2d, p=0.2)
    assert added == ["avgpool"]
    with torch.no_grad():
        assert torch.equal(model(X), ref)
    assert set_dropout_rate(model, 0.3, where="layer4") == 2
    assert set_dropout_rate(model, 0.4, where="kind:dropout") == 1
    assert set_dropout_rate(model, 0.45, where=layers.SpatialDropout) == 2
    with pytest.raises(InvalidValue, match="no module matches"):
        add_dropout(model, after="nonexistent.*")


def test_dropconnect_surgery_keeps_weights_and_eval_outputs(tv_models: dict[str, nn.Module]) -> None:
    model = _fresh(tv_models, "mobilenet_v3_small")
    with torch.no_grad():
        ref = model(X)
    weight = model.classifier[3].weight
    assert add_dropconnect(model, 0.3) == ["classifier.3"]
    assert isinstance(model.classifier[3], layers.DropConnectLinear)
    assert model.classifier[3].weight is weight
    assert "classifier.3.weight" in model.state_dict()  # names kept
    convs = add_dropconnect(model, 0.1, where="features.0.*")
    assert convs == ["features.0.0"]
    assert isinstance(model.features[0][0], layers.DropConnectConv2d)
    with torch.no_grad():
        assert torch.equal(model(X), ref)
    model.features[0][0].train()
    with torch.no_grad():
        assert not torch.allclose(model(X), ref, rtol=1e-3, atol=0.0)
    # DropConnect layers carry weights: replace_dropout leaves them alone
    replace_dropout(model, "gaussian")
    assert isinstance(model.classifier[3], layers.DropConnectLinear)
    assert isinstance(model.classifier[2], layers.GaussianDropout)


def test_torch_dropout_kinds_and_where_forms() -> None:
    model = nn.Sequential(
        nn.Dropout(0.1), nn.Dropout1d(0.2), nn.Dropout2d(0.3), nn.Dropout3d(0.35),
        nn.AlphaDropout(0.4), nn.FeatureAlphaDropout(0.45), layers.DropPath(0.05),
    )
    assert [d.kind for d in find_dropout(model)] == [
        "dropout", "spatial", "spatial", "spatial", "alpha", "feature_alpha", "droppath",
    ]
    assert set_dropout_rate(model, 0.5, where="spatial") == 3
    assert set_dropout_rate(model, 0.5, where=nn.AlphaDropout) == 1
    assert set_dropout_rate(model, 0.5, where="[04]") == 1  # regex on names: "0" (4 done)
    assert set_dropout_rate(model, 0.6, where=["5", "6"]) == 2
    assert [d.p for d in find_dropout(model)] == [0.5, 0.5, 0.5, 0.5, 0.5, 0.6, 0.6]


def test_errors_are_one_line_user_errors() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.2))
    for call in (
        lambda: set_dropout_rate(model, 1.0),
        lambda: set_dropout_rate(model, 0.2, where="nothing"),
        lambda: set_dropout_rate(nn.Linear(2, 2), 0.2),
        lambda: add_dropout(nn.ReLU(), "head"),
        lambda: add_dropconnect(model, 0.2, where=nn.Conv2d),
    ):
        with pytest.raises(InvalidValue) as info:
            call()
        assert "\n" not in str(info.value)
    with pytest.raises(UnknownName):
        replace_dropout(model, "nonsense")
    with pytest.raises(UnknownName):
        add_dropout(model, "head", kind="nonsense")


def test_add_dropout_keeps_training_mode_of_target() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).train()
    add_dropout(model, "head", p=0.5)
    assert model[2].training and model[2][0].training
