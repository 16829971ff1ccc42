"""Surgery (retune, replace, insert) on toy nets, torchvision resnet18 / vgg11 /
mobilenet_v3_small and third-party layers."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
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
    # the head keeps its class, identity and parameter names; it gains a dropout slot
    assert isinstance(head, nn.Linear) and isinstance(head.pre_dropout, layers.Dropout)
    assert f"{HEADS[name]}.weight" in model.state_dict()
    with torch.no_grad():
        after = model(X)
    assert torch.equal(before, after)  # dropout is the identity in eval mode
    # only the new layer stochastic: outputs now differ from the deterministic ones
    head.pre_dropout.train()
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
    assert model[2].training and model[2].pre_dropout.training


# --------------------------------------------------------------------------- names kept
def test_add_dropout_keeps_parameter_names_so_old_state_dicts_load(
        tv_models: dict[str, nn.Module]) -> None:
    model = _fresh(tv_models, "resnet18")
    saved = copy.deepcopy(model.state_dict())
    add_dropout(model, "head", p=0.3)
    add_dropout(model, after=nn.BatchNorm2d, kind="dropblock", p=0.1, block_size=3)
    assert set(model.state_dict()) == set(saved)  # no parameter or buffer renamed
    fresh = _fresh(tv_models, "resnet18")
    add_dropout(fresh, "head", p=0.3)
    add_dropout(fresh, after=nn.BatchNorm2d, kind="dropblock", p=0.1, block_size=3)
    fresh.load_state_dict(saved)  # strict: the pre-surgery state dict loads after surgery
    with torch.no_grad():
        assert torch.equal(fresh(X), model(X))


def test_state_dicts_of_the_old_sequential_wrapping_still_load() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    legacy = {"0.weight": model[0].weight, "0.bias": model[0].bias,
              "2.1.weight": torch.ones(2, 3), "2.1.bias": torch.zeros(2)}  # Sequential(drop, fc)
    add_dropout(model, "head", p=0.2)
    model.load_state_dict(legacy)
    assert torch.equal(model[2].weight, torch.ones(2, 3))


def test_surgered_modules_copy_pickle_and_trace() -> None:
    import pickle

    from torchvision.models.feature_extraction import create_feature_extractor

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 30 * 30, 2)).eval()
    add_dropout(model, after=nn.BatchNorm2d, kind="spatial", p=0.3)
    add_dropout(model, "head", p=0.3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert type(clone[1]) is type(model[1]) and isinstance(clone[1], nn.BatchNorm2d)
        with torch.no_grad():
            assert torch.equal(clone(x), ref)
    # a torch.nn layer with a dropout slot stays a leaf for torch.fx tools
    features = create_feature_extractor(model, {"1": "bn"}).eval()
    with torch.no_grad():
        assert torch.equal(features(x)["bn"], model[1](model[0](x)))
    with pytest.raises(InvalidValue, match="already has a dropout slot"):
        add_dropout(model, "head", p=0.1)


# --------------------------------------------------------------------------- third party
def test_replace_and_retune_third_party_layers() -> None:
    timm = pytest.importorskip("timm")
    model = nn.Sequential(torchvision.ops.StochasticDepth(0.2, "batch"),
                          timm.layers.DropPath(0.3), nn.MultiheadAttention(4, 2, dropout=0.1))
    assert replace_dropout(model, "droppath") == 2  # attention dropout cannot be swapped
    assert isinstance(model[0], layers.DropPath) and model[0].mode == "batch"
    assert (model[0].p, model[1].p) == (0.2, 0.3)
    with pytest.raises(InvalidValue, match="none of the selected"):
        replace_dropout(model, "gaussian", where="attention")


class _StdConv(nn.Conv2d):
    """A conv with its own forward (weight standardisation, as timm's StdConv2d)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = (self.weight - self.weight.mean((1, 2, 3), keepdim=True))
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


def test_add_dropconnect_refuses_what_it_cannot_wrap_faithfully() -> None:
    model = nn.Sequential(_StdConv(3, 4, 3), nn.Flatten(), nn.Linear(4 * 30 * 30, 2))
    with pytest.raises(InvalidValue, match="its own forward") as info:
        add_dropconnect(model, 0.2, where=nn.Conv2d)
    assert "\n" not in str(info.value)
    assert isinstance(model[0], _StdConv)  # nothing changed
    mha = nn.Sequential(nn.MultiheadAttention(4, 2))
    with pytest.raises(InvalidValue, match="raw weights"):
        add_dropconnect(mha, 0.2, where=nn.Linear)
    with pytest.raises(InvalidValue, match="raw weights"):
        add_dropout(mha, after="0.out_proj")


def test_dropconnect_on_a_layer_with_a_dropout_slot_keeps_the_slot() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    x = torch.randn(5, 4)
    with torch.no_grad():
        ref = model(x)
    add_dropout(model, "head", p=0.3)
    assert add_dropconnect(model, 0.2, where="head") == ["2"]
    assert isinstance(model[2], layers.DropConnectLinear)
    assert isinstance(model[2].pre_dropout, layers.Dropout)
    assert [d.kind for d in find_dropout(model)] == ["dropconnect", "dropout"]
    with torch.no_grad():
        assert torch.equal(model(x), ref)
