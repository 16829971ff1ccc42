"""find_dropout: one view of every source of training-time randomness."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from droplab import layers
from droplab.surgery import find_dropout, set_dropout_rate


def _kinds(model: nn.Module) -> list[tuple[str, str, float | None, str, str]]:
    return [(d.name, d.kind, d.p, d.origin, d.mechanism) for d in find_dropout(model)]


def test_layers_of_every_library_are_found_with_their_rates() -> None:
    timm = pytest.importorskip("timm")
    model = nn.Sequential(
        nn.Dropout(0.1), nn.Dropout2d(0.2), nn.AlphaDropout(0.3), layers.DropBlock2d(0.05, 3),
        torchvision.ops.StochasticDepth(0.15, "batch"), torchvision.ops.DropBlock2d(0.25, 3),
        timm.layers.DropPath(0.35), timm.layers.DropBlock2d(0.45),
        nn.MultiheadAttention(4, 2, dropout=0.4),
    )
    assert _kinds(model) == [
        ("0", "dropout", 0.1, "torch.nn", "layer"),
        ("1", "spatial", 0.2, "torch.nn", "layer"),
        ("2", "alpha", 0.3, "torch.nn", "layer"),
        ("3", "dropblock", 0.05, "droplab", "layer"),
        ("4", "droppath", 0.15, "torchvision", "layer"),
        ("5", "dropblock", 0.25, "torchvision", "layer"),
        ("6", "droppath", 0.35, "timm", "layer"),
        ("7", "dropblock", 0.45, "timm", "layer"),
        ("8", "attention", 0.4, "torch.nn", "layer"),
    ]
    found = find_dropout(model)
    assert [d.batch_shared for d in found] == [False] * 4 + [True] + [False] * 4
    assert all(d.mc and d.surgery for d in found)
    # every rate is driven through the same attribute the layer reads
    assert set_dropout_rate(model, 0.2) == 8
    assert (model[4].p, model[6].drop_prob, model[8].dropout) == (0.2, 0.2, 0.2)


class _DenseLayer(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(4)
        self.drop_rate = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(self.norm(x), p=self.drop_rate, training=self.training)


class _Attention(nn.Module):
    """timm's fused path: attn_drop is never called, only its rate is read."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(4, 12)
        self.attn_drop = nn.Dropout(0.25)
        self.proj_drop = nn.Dropout(0.1)
        self.scale = 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(q * self.scale, k, v,
                                             dropout_p=self.attn_drop.p if self.training else 0.)
        return self.proj_drop(out)


class _Head(nn.Module):
    """timm's classifier-head pattern: the call is skipped entirely at rate 0."""

    def __init__(self) -> None:
        super().__init__()
        self.drop_rate = 0.0
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return self.fc(x)


def test_gated_functional_dropout_is_found_by_tracing() -> None:
    # torchvision Swin's attention: one wrapped call with two rates and a training switch
    swin = torchvision.models.swin_transformer.ShiftedWindowAttention(
        4, [2, 2], [0, 0], 1, attention_dropout=0.1, dropout=0.2)
    model = nn.Sequential(_DenseLayer(0.3), _Attention(), _Head(), swin)
    found = find_dropout(model)
    assert [(d.key, d.kind, d.p, d.mechanism, d.rate_attr) for d in found] == [
        ("0:drop_rate", "dropout", 0.3, "gated", "drop_rate"),
        ("1:attn_drop.p", "attention", 0.25, "gated", "attn_drop.p"),  # holder merged
        ("1.proj_drop", "dropout", 0.1, "layer", "p"),
        ("2:drop_rate", "dropout", 0.0, "gated", "drop_rate"),  # visible at rate 0
        ("3:attention_dropout", "attention", 0.1, "gated", "attention_dropout"),
        ("3:dropout", "dropout", 0.2, "gated", "dropout"),
    ]
    assert all(d.mc and d.surgery for d in found)
    assert model[1].scale == 0.5 and model[0].drop_rate == 0.3  # sentinels restored
    assert set_dropout_rate(model, 0.05, where="attention") == 2
    assert (model[1].attn_drop.p, model[3].attention_dropout, model[3].dropout) == (0.05, 0.05, 0.2)
    set_dropout_rate(model, 0.2, where="2")
    assert model[2].drop_rate == 0.2


class _Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(4))
        self.register_buffer("var", torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.batch_norm(x, self.mean, self.var, training=self.training)
        return F.dropout(x, 0.3, training=self.training)


class _Untraceable(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent
            x = -x
        return F.dropout(x, 0.3, training=self.training)


class _AlwaysOn(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, 0.4, training=True) + 0.01 * torch.randn_like(x)


def test_refused_untraced_and_always_on_sources_are_reported() -> None:
    model = nn.Sequential(_Mixed(), _Untraceable(), _AlwaysOn())
    found = find_dropout(model)
    assert [(d.name, d.kind, d.p, d.mechanism, d.mc) for d in found] == [
        ("0", "dropout", 0.3, "gated", False),  # its flag also switches batch_norm
        ("1", "untraced", None, "untraced", False),
        ("2", "dropout", 0.4, "always", True),
        ("2", "noise", None, "always", True),
    ]
    assert not any(d.surgery for d in found)  # hard-coded rates cannot be set
    assert "also changes other computations" in found[0].note
    assert found[1].note.startswith("forward not traceable")


def test_torchvision_densenet_and_vit_counts() -> None:
    dense = torchvision.models.densenet121(weights=None, drop_rate=0.2)
    layers_ = [n for n, m in dense.named_modules() if type(m).__name__ == "_DenseLayer"]
    found = find_dropout(dense)
    assert [d.name for d in found] == layers_ and len(layers_) == 58
    assert {(d.kind, d.p, d.mechanism) for d in found} == {("dropout", 0.2, "gated")}
    vit = torchvision.models.vit_b_16(weights=None, dropout=0.1, attention_dropout=0.1,
                                      image_size=32)
    kinds = [d.kind for d in find_dropout(vit)]
    blocks = len(vit.encoder.layers)
    # per block: the attention output dropout, the MLP's two; plus the encoder's input one
    assert kinds.count("dropout") == 3 * blocks + 1 and kinds.count("attention") == blocks
