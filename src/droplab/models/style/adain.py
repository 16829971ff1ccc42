"""Arbitrary style transfer in one network: AdaIN (Huang & Belongie 2017, "Arbitrary style
transfer in real-time with adaptive instance normalization").

A frozen encoder ``E`` (the first ``depth`` stages of droplab's trained CIFAR-10 encoder,
:class:`~droplab.models.style.encoders.TrainedEncoder`), the AdaIN layer

    t = σ(s) · (E(c) − μ(E(c))) / σ(E(c)) + μ(s)

with ``μ(s), σ(s)`` the channel means and standard deviations of the style image's
features, and a trained decoder ``g`` mirroring the encoder (nearest upsampling +
convolution, optional spatial dropout after every decoder stage, Tompson et al. 2015).

Everything a user controls reduces to the target statistics ``(μ, σ)``, so the network
(and its ONNX graph) takes them as inputs:

- several styles mixed by weights ``w_k`` (Σ w_k = 1): ``μ = Σ w_k μ_k``, ``σ = Σ w_k σ_k``
  — the same as interpolating the AdaIN outputs (Huang & Belongie, section 7);
- strength ``α``: ``μ' = α μ + (1 − α) μ(E(c))``, ``σ'`` likewise — the paper's
  content–style trade-off ``g((1 − α) E(c) + α t)``, exactly, because AdaIN of the content
  with its own statistics is the identity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from droplab.errors import InvalidValue, check_rate
from droplab.layers import make_dropout
from droplab.models.style.encoders import IMAGENET_MEAN, IMAGENET_STD, TrainedEncoder
from droplab.models.style.losses import mean_std
from droplab.models.style.transformer import SeparableConv


def adain(f: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
          alpha: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Adaptive instance normalisation of features ``f`` (B, C, H, W) to ``mean``, ``std``
    (B or 1, C), blended with ``f``'s own statistics by ``alpha``."""
    m, s = mean_std(f)
    tm = alpha * mean + (1 - alpha) * m
    ts = alpha * std + (1 - alpha) * s
    return (f - m[..., None, None]) / s[..., None, None] * ts[..., None, None] + tm[..., None, None]


class AdaINNet(nn.Module):
    """Encoder (frozen) + AdaIN + decoder.

    ``encoder_widths``: channel counts of the encoder's 3×3 stages (the first ``depth``
    stages of the trained encoder; build with :meth:`from_encoder` to copy its weights).
    ``decoder_separable``: depthwise-separable decoder convolutions (fewer multiply-adds).
    ``dropout``: spatial dropout after every decoder stage.
    """

    kind = "adain"

    def __init__(
        self,
        encoder_widths: Sequence[int] = (32, 64, 128),
        *,
        decoder_separable: bool = True,
        dropout: float = 0.0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        check_rate(dropout, "dropout")
        widths = [int(w) for w in encoder_widths]
        if not widths or min(widths) < 1:
            raise InvalidValue(f"encoder_widths={widths} must be positive channel counts")
        self.config: dict[str, Any] = {
            "kind": self.kind, "encoder_widths": widths,
            "decoder_separable": bool(decoder_separable), "dropout": float(dropout),
            "mean": [float(v) for v in mean], "std": [float(v) for v in std]}
        self.depth = len(widths)
        self.enc = nn.ModuleList()
        cin = 3
        for w in widths:
            self.enc.append(nn.Conv2d(cin, w, 3))
            cin = w
        self.register_buffer("mean", torch.tensor(self.config["mean"]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(self.config["std"]).view(1, -1, 1, 1))

        def conv(a: int, b: int) -> nn.Module:
            if decoder_separable:
                return SeparableConv(a, b, padding="reflect")
            return nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(a, b, 3))

        def drop() -> list[nn.Module]:
            return [make_dropout("spatial", dropout)] if dropout > 0 else []

        dec: list[nn.Module] = []
        for i in range(self.depth - 1, 0, -1):  # w_{i+1} → w_i, then up to stage i's size
            dec += [conv(widths[i], widths[i - 1]), nn.ReLU(inplace=True), *drop(),
                    nn.Upsample(scale_factor=2, mode="nearest")]
        half = max(4, widths[0] // 2)
        dec += [conv(widths[0], half), nn.ReLU(inplace=True), *drop(),
                nn.ReflectionPad2d(1), nn.Conv2d(half, 3, 3)]
        self.decoder = nn.Sequential(*dec)
        for p in self.enc.parameters():
            p.requires_grad_(False)

    @classmethod
    def from_encoder(cls, encoder: TrainedEncoder, depth: int = 3, **kw: Any) -> AdaINNet:
        """An AdaIN net whose encoder is the first ``depth`` stages of ``encoder``."""
        if not 1 <= depth <= len(encoder.convs):
            raise InvalidValue(f"--depth must be in [1, {len(encoder.convs)}], got {depth}")
        net = cls(encoder.widths[:depth], mean=encoder.mean.flatten().tolist(),
                  std=encoder.std.flatten().tolist(), **kw)
        for mine, theirs in zip(net.enc, encoder.convs):
            mine.weight.data.copy_(theirs.weight.data)
            mine.bias.data.copy_(theirs.bias.data)
        return net

    def train(self, mode: bool = True) -> AdaINNet:
        super().train(mode)
        self.enc.eval()  # frozen: no dropout or norm state of its own, but keep it explicit
        return self

    @property
    def multiple(self) -> int:
        """Inputs are padded to a multiple of this (the pooling / upsampling round trip)."""
        return 2 ** (self.depth - 1)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder's ReLU outputs ``relu1 … relu<depth>`` of an image in [0, 1]."""
        h = (x - self.mean) / self.std
        out = []
        for i, conv in enumerate(self.enc):
            if i:
                h = F.avg_pool2d(h, 2)
            h = F.relu(conv(F.pad(h, (1, 1, 1, 1), mode="reflect")))
            out.append(h)
        return out

    def style_stats(self, style: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(μ, σ)`` (B, C) of a style image's deepest features."""
        return mean_std(self.encode(style)[-1])

    def decode(self, t: torch.Tensor) -> torch.Tensor:
        return self.decoder(t)

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        h, w = x.shape[-2:]
        m = self.multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect")
        return x, h, w

    def stylize(self, content: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                alpha: torch.Tensor | float = 1.0) -> torch.Tensor:
        """Stylise ``content`` (B, 3, H, W) to target statistics ``(mean, std)``."""
        x, h, w = self._pad(content)
        t = adain(self.encode(x)[-1], mean, std, alpha)
        return self.decode(t)[..., :h, :w]

    def forward(self, content: torch.Tensor, style: torch.Tensor,
                alpha: float = 1.0) -> torch.Tensor:
        mean, std = self.style_stats(style)
        return self.stylize(content, mean, std, alpha)

    def mixed_stats(self, styles: Sequence[torch.Tensor], weights: Sequence[float]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Target statistics of several style images mixed by ``weights`` (normalised)."""
        total = float(sum(weights))
        mean = std = None
        for img, w in zip(styles, weights):
            m, s = self.style_stats(img)
            mean = m * (w / total) if mean is None else mean + m * (w / total)
            std = s * (w / total) if std is None else std + s * (w / total)
        assert mean is not None and std is not None
        return mean, std


class _StylizeGraph(nn.Module):
    """What the ONNX transform graph computes: padded content + statistics + α → image."""

    def __init__(self, net: AdaINNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                alpha: torch.Tensor) -> torch.Tensor:
        t = adain(self.net.encode(image)[-1], mean, std, alpha)
        return self.net.decode(t)


class _StyleGraph(nn.Module):
    """What the ONNX style graph computes: a style image → (μ, σ)."""

    def __init__(self, net: AdaINNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.style_stats(image)


def export_graphs(net: AdaINNet) -> tuple[nn.Module, nn.Module]:
    """The two modules an AdaIN ONNX export traces: (transform, style encoder)."""
    return _StylizeGraph(net), _StyleGraph(net)
