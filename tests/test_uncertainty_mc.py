"""MC dropout: what mc_mode switches on, independence of passes, outputs, errors.

Statistical checks use a 6σ band on a difference of two independent means of T draws
(std sqrt((s_a² + s_b²) / T)), or on a Bernoulli fraction (std sqrt(p (1 - p) / n)).
"""

from __future__ import annotations

import math
from collections import namedtuple

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from droplab import layers
from droplab.errors import InvalidValue
from droplab.surgery import add_dropconnect, find_dropout
from droplab.uncertainty import mc_mode, mc_predict, mutual_information, stochastic_modules


def _net(drop: nn.Module | None = None) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        drop if drop is not None else nn.Dropout(0.5),
        nn.Linear(32, 4),
    )


def _with_stats(model: nn.Sequential) -> nn.Sequential:
    """Give BatchNorm running statistics far from any batch's own statistics."""
    bn = model[1]
    bn.running_mean.fill_(-1.0)  # negative: most activations survive the ReLU
    bn.running_var.fill_(4.0)
    return model


X = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(3))


def _gen(seed: int = 7) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _distinct(probs: torch.Tensor) -> int:
    flat = probs.flatten(1)
    return len({tuple(row.tolist()) for row in flat})


def _same_distribution(a: torch.Tensor, b: torch.Tensor) -> bool:
    se = ((a.var(0) + b.var(0)) / a.shape[0]).sqrt()
    return bool(((a.mean(0) - b.mean(0)).abs() <= 6 * se + 1e-6).all())


def test_shapes_sum_to_one_and_passes_differ() -> None:
    model = _net().eval()
    probs = mc_predict(model, X, 12, reduce="none")
    assert probs.shape == (12, 6, 4)
    assert torch.allclose(probs.sum(-1), torch.ones(12, 6), atol=1e-6)
    assert _distinct(probs) == 12  # independent masks: no two passes are the same
    assert mc_predict(model, X, 12).shape == (6, 4)


@pytest.mark.parametrize(
    "drop",
    [nn.Dropout(0.5), nn.Dropout(0.5, inplace=True), layers.Dropout(0.5),
     layers.GaussianDropout(0.5), nn.AlphaDropout(0.3)],
    ids=["nn.Dropout", "inplace", "Dropout", "GaussianDropout", "nn.AlphaDropout"],
)
def test_cached_and_uncached_are_identical_with_the_same_generator(drop: nn.Module) -> None:
    model = _with_stats(_net(drop)).eval()
    a = mc_predict(model, X, 10, reduce="none", generator=_gen())
    b = mc_predict(model, X, 10, reduce="none", generator=_gen(), cache_prefix=False)
    assert torch.allclose(a, b, atol=1e-6)
    assert _distinct(a) == 10  # an in-place head must not corrupt the cached features
    c = mc_predict(model, X, 10, reduce="none", generator=_gen(8))
    assert not torch.equal(a, c)


def test_cached_and_uncached_have_the_same_distribution_without_generator() -> None:
    model = _net().eval()
    T = 400
    a = mc_predict(model, X, T, reduce="none")
    b = mc_predict(model, X, T, reduce="none", cache_prefix=False)
    assert _same_distribution(a, b)


def test_chunked_replicas_match_the_loop_in_distribution() -> None:
    model = _net().eval()
    T = 300
    loop = mc_predict(model, X, T, reduce="none", chunk_size=1)
    for other in (mc_predict(model, X, T, reduce="none", chunk_size=7),
                  mc_predict(model, X, T, reduce="none")):
        assert other.shape == loop.shape and _same_distribution(loop, other)
    full = mc_predict(model, X, 20, reduce="none", chunk_size=20, cache_prefix=False)
    assert _distinct(full) == 20


def test_batchnorm_buffers_are_byte_identical_and_modes_restored() -> None:
    model = _with_stats(_net(nn.Dropout(0.3)))
    model.train()
    model[6].eval()  # a mixed pattern must come back exactly
    modes = [m.training for m in model.modules()]
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    mc_predict(model, X, 5, reduce="none")
    assert [m.training for m in model.modules()] == modes
    after = model.state_dict()
    assert all(torch.equal(buffers[k], after[k]) for k in buffers)  # BN never trained


@pytest.mark.parametrize("model", [
    nn.Sequential(nn.Flatten(), nn.Linear(192, 3)),
    nn.Sequential(nn.Flatten(), nn.Dropout(0.0), nn.Linear(192, 3)),
], ids=["no-dropout", "rate-0"])
def test_no_reachable_randomness_is_a_one_line_error(model: nn.Module) -> None:
    with pytest.raises(InvalidValue) as info:
        mc_predict(model.eval(), X, 4)
    assert "\n" not in str(info.value) and "identical" in str(info.value)
    with pytest.warns(UserWarning, match="identical"):
        probs = mc_predict(model, X, 4, reduce="none", allow_deterministic=True)
    assert torch.equal(probs[0], probs[3])
    assert mutual_information(probs).abs().max() == 0.0


class _DenseLayer(nn.Module):
    """torchvision DenseNet's pattern: BN in the layer, dropout behind ``self.training``."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(8)
        self.fc = nn.Linear(8, 8)
        self.drop_rate = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(self.fc(F.relu(self.bn(x))), p=self.drop_rate, training=self.training)


class _Attention(nn.Module):
    """timm's fused-attention pattern: SDPA reads ``attn_drop.p`` behind ``self.training``."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.attn_drop = nn.Dropout(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)


class _Tokens(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 8)
        self.block = block
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.embed(x)).mean(1))


class _SelfAttention(nn.Module):
    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        self.mha = mha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mha(x, x, x, need_weights=False)[0]


@pytest.mark.parametrize("build", [
    lambda: nn.Sequential(nn.Linear(8, 8), _DenseLayer(0.3), nn.Linear(8, 3)),
    lambda: _Tokens(_Attention(0.3)),
    lambda: _Tokens(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.3, batch_first=True)),
    lambda: _Tokens(_SelfAttention(nn.MultiheadAttention(8, 2, dropout=0.3, batch_first=True))),
], ids=["F.dropout-gated", "sdpa-gated", "TransformerEncoderLayer", "MultiheadAttention"])
def test_functional_and_attention_dropout_are_switched_on(build) -> None:
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(5, 4, 8) if isinstance(model, _Tokens) else torch.randn(5, 8)
    with torch.no_grad():
        ref = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    probs = mc_predict(model, x, 8, reduce="none")
    assert _distinct(probs) == 8  # T passes that differ: the dropout really is on
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert not any(m.training for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(x), ref)  # eval output unchanged after MC


def test_mc_mode_flips_only_the_gated_module_not_its_children() -> None:
    model = nn.Sequential(nn.Linear(8, 8), _DenseLayer(0.3)).train()
    with mc_mode(model) as switched:
        assert switched == [model[1]]
        assert model[1].training and not model[1].bn.training and not model[0].training
    assert all(m.training for m in model.modules())


class _Mixed(nn.Module):
    """Its training flag also switches batch-norm statistics: MC must not touch it."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(8))
        self.register_buffer("var", torch.ones(8))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.batch_norm(x, self.mean, self.var, training=self.training)
        return self.head(F.dropout(x, 0.3, training=self.training))


def test_refused_source_stays_off_with_a_warning() -> None:
    model = nn.Sequential(_Mixed(), nn.Dropout(0.2)).eval()
    (info,) = [d for d in find_dropout(model) if d.name == "0"]
    assert not info.mc and "also changes" in info.note
    assert stochastic_modules(model) == [model[1]]
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(UserWarning, match="cannot switch on 1 source"):
        mc_predict(model, torch.randn(4, 8), 3)
    assert all(torch.equal(buffers[k], v) for k, v in model.state_dict().items())


# --------------------------------------------------------------------------- independence
def _dropconnect_head() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    add_dropconnect(model, 0.3, where="head")
    return model


@pytest.mark.parametrize("chunk", [None, 1, 10, 30])
@pytest.mark.parametrize("cached", [True, False])
def test_dropconnect_masks_are_fresh_for_every_pass_in_any_chunk(chunk: int | None,
                                                                 cached: bool) -> None:
    model = _dropconnect_head()
    for gen in (None, _gen()):
        probs = mc_predict(model, X, 30, reduce="none", chunk_size=chunk, generator=gen,
                           cache_prefix=cached)
        assert _distinct(probs) == 30


@pytest.mark.parametrize("drop", [layers.DropPath(0.5, mode="batch"),
                                  torchvision.ops.StochasticDepth(0.5, "batch")],
                         ids=["droplab", "torchvision"])
def test_batch_mode_drop_path_draws_once_per_pass_in_chunks(drop: nn.Module) -> None:
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.branch, self.drop, self.head = nn.Linear(4, 4), drop, nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(x + self.drop(self.branch(x)))

    torch.manual_seed(0)
    model = Residual().eval()
    x = torch.randn(3, 4)
    with torch.no_grad():
        kept = model.head(x + 2 * model.branch(x)).softmax(1)
        dropped = model.head(x).softmax(1)
    T = 400
    if isinstance(drop, layers.DropPath):
        probs = mc_predict(model, x, T, reduce="none", chunk_size=40)
    else:  # a third-party batch-shared layer forces passes one by one
        with pytest.warns(UserWarning, match="one by one"):
            probs = mc_predict(model, x, T, reduce="none", chunk_size=40)
    is_kept = (probs - kept).abs().amax((1, 2)) < 1e-5
    is_dropped = (probs - dropped).abs().amax((1, 2)) < 1e-5
    assert torch.all(is_kept ^ is_dropped)  # a whole pass is kept or dropped
    # each pass is its own Bernoulli(0.5) draw: 6σ = 6·sqrt(.25/400) = 0.15
    assert abs(is_kept.double().mean().item() - 0.5) <= 6 * math.sqrt(0.25 / T)


# --------------------------------------------------------------------------- outputs
Out = namedtuple("Out", ["logits", "aux"])


class _Structured(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.fc, self.drop = nn.Linear(192, 3), nn.Dropout(0.5)

    def forward(self, x: torch.Tensor):  # type: ignore[no-untyped-def]
        logits = self.fc(self.drop(x.flatten(1)))
        if self.kind == "tuple":
            return logits, x
        if self.kind == "dict":
            return {"logits": logits, "features": x}
        return Out(logits, x)


@pytest.mark.parametrize("kind", ["tuple", "dict", "namedtuple"])
def test_tuple_dict_and_logits_outputs(kind: str) -> None:
    model = _Structured(kind).eval()
    a = mc_predict(model, X, 6, reduce="none", generator=_gen())
    b = mc_predict(model, X, 6, reduce="none", generator=_gen(), cache_prefix=False)
    assert a.shape == (6, 6, 3) and torch.allclose(a, b, atol=1e-6) and _distinct(a) == 6


def test_bad_arguments() -> None:
    model = _net()
    for kw in ({"reduce": "median"}, {"chunk_size": 0}):
        with pytest.raises(InvalidValue):
            mc_predict(model, X, 3, **kw)
    with pytest.raises(InvalidValue):
        mc_predict(model, X, 0)

    class Strings(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.drop = nn.Dropout(0.5)

        def forward(self, x: torch.Tensor) -> str:
            return str(self.drop(x).sum())

    with pytest.raises(InvalidValue, match="returning logits"):
        mc_predict(Strings(), X.flatten(1), 2, cache_prefix=False)


def test_input_is_not_modified_by_an_in_place_first_layer() -> None:
    model = nn.Sequential(nn.Dropout(0.5, inplace=True), nn.Flatten(), nn.Linear(192, 3)).eval()
    x = X.clone()
    for cached in (True, False):
        probs = mc_predict(model, x, 5, reduce="none", cache_prefix=cached)
        assert torch.equal(x, X) and _distinct(probs) == 5
