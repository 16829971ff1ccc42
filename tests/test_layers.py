"""Tests of the :mod:`droplab.layers` modules (statistics live in test_functional.py).

Statistical tolerances: a fraction of n Bernoulli(p) events has std sqrt(p(1-p)/n); we
allow 5 standard deviations, with seeded generators so the tests are deterministic.
"""

from __future__ import annotations

import copy
import inspect
import math

import pytest
import torch
from torch import nn

from droplab import layers as L
from droplab.errors import InvalidValue, UnknownName


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


ACTIVATION_KINDS = ["dropout", "spatial", "gaussian", "alpha", "dropblock", "droppath",
                    "concrete"]


def build(kind: str, p: float = 0.3, **kw: object) -> L.DropoutModule:
    if kind == "dropconnect":
        return L.make_dropout(kind, p, in_features=6, out_features=4, **kw)
    if kind == "dropblock":
        return L.make_dropout(kind, p, block_size=3, **kw)
    return L.make_dropout(kind, p, **kw)


def sample_input(kind: str, seed: int = 1) -> torch.Tensor:
    shape = (5, 6) if kind == "dropconnect" else (4, 6, 8, 8)
    return torch.randn(shape, generator=gen(seed))


def test_kinds_registry() -> None:
    assert set(ACTIVATION_KINDS) | {"dropconnect"} == set(L.KINDS)
    for name, cls in L.KINDS.items():
        assert issubclass(cls, L.DropoutModule)
        assert cls.kind == name
    assert L.DropConnectConv2d.kind == "dropconnect"
    with pytest.raises(UnknownName, match=r"dropout kind .gauss.*gaussian"):
        L.make_dropout("gauss", 0.1)
    with pytest.raises(InvalidValue, match="block_size"):
        L.make_dropout("dropout", 0.1, block_size=3)
    with pytest.raises(InvalidValue, match=r"needs in_features, out_features.*from_module"):
        L.make_dropout("dropconnect", 0.1)


@pytest.mark.parametrize("kind", sorted(L.KINDS))
def test_eval_identity_repr_and_p_setting(kind: str) -> None:
    m = build(kind, 0.3)
    x = sample_input(kind)
    assert f"p={m.p:.4g}" in repr(m) or f"p={m.p:g}" in repr(m)
    m.eval()
    if kind == "dropconnect":
        assert torch.equal(m(x), nn.functional.linear(x, m.weight, m.bias))
    else:
        assert torch.equal(m(x), x)
    m.train()
    m.p = 0.5
    assert m.p == pytest.approx(0.5)
    for bad in (1.0, 1.5, -0.2, float("nan"), "x"):
        with pytest.raises(InvalidValue) as err:
            m.p = bad
        message = str(err.value)
        assert "\n" not in message and type(m).__name__ in message
    assert m.p == pytest.approx(0.5)  # a rejected value leaves p unchanged
    with pytest.raises(InvalidValue):
        build(kind, 1.0)


@pytest.mark.parametrize("kind", ACTIVATION_KINDS)
def test_setting_p_changes_behaviour(kind: str) -> None:
    x = torch.ones(64, 16, 8, 8)
    m = build(kind, 0.5, generator=gen(2)).train()
    y = m(x)
    assert not torch.equal(y, x)
    m.p = 0.0
    if kind == "concrete":  # p = 0 is stored as 1e-6: essentially nothing is dropped
        assert m.p == pytest.approx(1e-6)
        assert (m(x) - x).abs().max().item() < 1e-3
    else:
        assert torch.equal(m(x), x)


@pytest.mark.parametrize("kind", sorted(L.KINDS))
def test_generator_reproducibility_and_fresh_draws(kind: str) -> None:
    x = sample_input(kind)
    a = build(kind, generator=gen(3))
    b = build(kind, generator=gen(3))
    b.load_state_dict(a.state_dict())
    first, again = a(x), b(x)
    assert torch.equal(first, again)
    assert not torch.equal(first, a(x))  # the next pass draws a new mask
    clone = copy.deepcopy(a)  # modules holding a generator still deep-copy
    assert torch.equal(clone(x), a(x))


@pytest.mark.parametrize("kind", sorted(L.KINDS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_modules(kind: str, dtype: torch.dtype) -> None:
    m = build(kind, generator=gen(4)).to(dtype)
    y = m(sample_input(kind).to(dtype))
    assert y.dtype == dtype and bool(torch.isfinite(y).all())


def test_dropblock_and_droppath_options() -> None:
    m = L.DropBlock2d(0.2, 5, shared_channels=True)
    assert "block_size=5" in repr(m) and "shared_channels=True" in repr(m)
    with pytest.raises(InvalidValue, match="block_size"):
        L.DropBlock2d(0.1, 0)
    assert "mode='batch'" in repr(L.DropPath(0.1, "batch"))
    with pytest.raises(UnknownName, match="drop-path mode"):
        L.DropPath(0.1, "sample")


# --------------------------------------------------------------------------- DropConnect
CONV_CASES = [
    dict(stride=1, padding=0, dilation=1, groups=1, bias=True),
    dict(stride=2, padding=1, dilation=1, groups=1, bias=False),
    dict(stride=1, padding=2, dilation=2, groups=2, bias=True),
    dict(stride=1, padding=1, dilation=1, groups=1, bias=True, padding_mode="reflect"),
    dict(stride=1, padding="same", dilation=1, groups=4, bias=False),
]


@pytest.mark.parametrize("cfg", CONV_CASES)
def test_dropconnect_conv_keeps_the_wrapped_layer(cfg: dict) -> None:
    conv = nn.Conv2d(4, 8, 3, **cfg)
    dc = L.DropConnectConv2d.from_module(conv, 0.4, generator=gen(5))
    assert dc.weight is conv.weight and dc.bias is conv.bias
    assert (dc.bias is None) == (not cfg["bias"])
    for name in ("stride", "padding", "dilation", "groups", "padding_mode"):
        assert getattr(dc, name) == getattr(conv, name)
    assert list(dc.state_dict()) == list(conv.state_dict())
    x = torch.randn(2, 4, 9, 9, generator=gen(6))
    assert torch.equal(dc.eval()(x), conv(x))
    dc.train()
    y1, y2 = dc(x), dc(x)
    assert y1.shape == conv(x).shape
    assert not torch.equal(y1, y2)  # a fresh weight mask for every pass
    # built directly with the same arguments, it has the same structure
    fresh = L.DropConnectConv2d(4, 8, 3, **cfg, p=0.4)
    fresh.load_state_dict(conv.state_dict())
    assert torch.equal(fresh.eval()(x), conv(x))
    assert "p=0.4" in repr(fresh)


def test_dropconnect_linear_from_module_shares_and_trains() -> None:
    lin = nn.Linear(6, 3, bias=False)
    dc = L.DropConnectLinear.from_module(lin, 0.5, generator=gen(7))
    assert dc.weight is lin.weight and dc.bias is None
    assert list(dc.state_dict()) == ["weight"]
    x = torch.randn(4, 6, generator=gen(8))
    dc(x).sum().backward()
    assert lin.weight.grad is not None
    # masked gradient: some weights get exactly zero gradient at p = 0.5
    assert bool((lin.weight.grad == 0).any()) and bool((lin.weight.grad != 0).any())
    # one mask per pass, shared across the batch: identical rows give identical outputs
    rows = dc(x[:1].repeat(8, 1))
    assert torch.allclose(rows, rows[:1].expand_as(rows), atol=1e-6)
    outputs = {tuple(dc(x[:1]).flatten().tolist()) for _ in range(10)}
    assert len(outputs) > 1  # MC passes differ
    with pytest.raises(InvalidValue, match=r"nn\.Linear"):
        L.DropConnectLinear.from_module(nn.Conv2d(1, 1, 1), 0.1)
    with pytest.raises(InvalidValue, match=r"nn\.Conv2d"):
        L.DropConnectConv2d.from_module(lin, 0.1)


# --------------------------------------------------------------------------- Concrete
def test_concrete_p_is_a_learned_logit() -> None:
    m = L.ConcreteDropout(0.2)
    assert isinstance(m.p, float) and m.p == pytest.approx(0.2)
    assert [n for n, _ in m.named_parameters()] == ["p_logit"]
    m.p = 0.4
    assert m.p_logit.item() == pytest.approx(math.log(0.4 / 0.6))
    x = torch.ones(16, 10)
    m(x).sum().backward()
    assert m.p_logit.grad is not None and m.p_logit.grad.item() != 0
    assert m.input_dim == 10


def test_concrete_regularizer_moves_p() -> None:
    # dropout term alone: -entropy, minimised at p = 1/2, so p rises from 0.1
    m = L.ConcreteDropout(0.1, dropout_regularizer=1.0, input_dim=1)
    for _ in range(20):  # plain gradient descent on the logit
        reg = L.concrete_regularization(m)
        assert reg.dim() == 0 and bool(torch.isfinite(reg))
        (grad,) = torch.autograd.grad(reg, m.p_logit)
        with torch.no_grad():
            m.p_logit -= 0.5 * grad
    assert 0.2 < m.p <= 0.5
    # a large weight term ||W||²/(1-p) pushes p down instead
    layer = nn.Linear(8, 2)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    w = L.ConcreteDropout(0.4, layer=layer, weight_regularizer=1.0, dropout_regularizer=1e-6)
    for _ in range(20):
        (grad,) = torch.autograd.grad(w.regularization(), w.p_logit)
        with torch.no_grad():
            w.p_logit -= 0.01 * grad
    assert w.p < 0.3


def test_concrete_regularization_matches_gal_and_sums_modules() -> None:
    layer = nn.Linear(5, 3)
    a = L.ConcreteDropout(0.3, layer=layer, weight_regularizer=1e-2, dropout_regularizer=1e-1)
    b = L.ConcreteDropout(0.2, dropout_regularizer=1e-1)
    model = nn.Sequential(a, nn.ReLU(), b)
    model(torch.randn(7, 5))
    p = torch.tensor(0.3)
    sq = layer.weight.pow(2).sum() + layer.bias.pow(2).sum()
    expected_a = 1e-2 * sq / (1 - p) + 1e-1 * 5 * (p * p.log() + (1 - p) * (1 - p).log())
    p2 = torch.tensor(0.2)
    expected_b = 1e-1 * 3 * (p2 * p2.log() + (1 - p2) * (1 - p2).log())
    assert a.regularization().item() == pytest.approx(expected_a.item(), rel=1e-5)
    total = L.concrete_regularization(model)
    assert total.item() == pytest.approx((expected_a + expected_b).item(), rel=1e-5)
    zero = L.concrete_regularization(nn.Linear(2, 2))
    assert zero.dim() == 0 and zero.item() == 0.0
    assert "layer" in repr(a) and "temperature=0.1" in repr(a)
    with pytest.raises(InvalidValue, match="temperature"):
        L.ConcreteDropout(0.1, temperature=0.0)


def test_make_dropout_passes_options() -> None:
    for cls in L.KINDS.values():
        assert "p" in inspect.signature(cls.__init__).parameters
    m = L.make_dropout("dropblock", 0.15, block_size=5, shared_channels=True)
    assert isinstance(m, L.DropBlock2d) and m.block_size == 5 and m.shared_channels
    c = L.make_dropout("concrete", 0.2, temperature=0.5)
    assert isinstance(c, L.ConcreteDropout) and c.temperature == 0.5
    d = L.make_dropout("dropconnect", 0.25, in_features=3, out_features=2, bias=False)
    assert isinstance(d, L.DropConnectLinear) and d.bias is None and d.p == 0.25


# --------------------------------------------------------------------------- torch.fx
def test_modules_trace_and_work_in_create_feature_extractor() -> None:
    # torchvision's feature extractor traces through droplab modules: each is one node
    # (as torchvision's own DropBlock2d/StochasticDepth are), and the train/eval graphs
    # it builds keep dropout on in training and off in eval
    from torchvision.models.feature_extraction import (
        create_feature_extractor,
        get_graph_node_names,
    )

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), L.DropBlock2d(0.3, 3),
                                L.DropPath(0.2), L.Dropout(0.1), L.GaussianDropout(0.1))
    train_names, eval_names = get_graph_node_names(model)
    assert train_names == eval_names == ["input", "0", "1.drop_block", "2.drop_path",
                                         "3.dropout", "4.gaussian_dropout"]
    fx_model = create_feature_extractor(model, {"1.drop_block": "blocks"})
    x = torch.randn(2, 3, 16, 16)
    fx_model.eval()
    assert torch.equal(fx_model(x)["blocks"], model[0](x))
    fx_model.train()
    assert not torch.equal(fx_model(x)["blocks"], model[0](x))
