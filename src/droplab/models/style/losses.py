"""Perceptual losses for style transfer, each normalised so that every layer counts.

- :func:`gram`, :func:`style_loss` — Gram-matrix statistics (Gatys et al. 2016, "Image
  style transfer using convolutional neural networks");
- :func:`moment_loss` — channel mean and standard deviation, the style statistics AdaIN
  matches (Huang & Belongie 2017, "Arbitrary style transfer in real-time with adaptive
  instance normalization", eq. 13);
- :func:`content_loss` — feature reconstruction; :func:`tv_loss` — total variation;
- :func:`swag` — softmax smoothing of activations (Wang et al. 2021, "Rethinking and
  improving the robustness of image style transfer").

Every loss divides by the target's energy (He et al. 2016, random-weight features): the
relative error weighs layers equally whatever their activation scale. All return one
value per image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F


def gram(f: torch.Tensor) -> torch.Tensor:
    """Gram matrix ``F Fᵀ / N`` of features (B, C, H, W) → (B, C, C); N = H·W.

    Dividing by the number of positions makes it independent of the image size, so a
    style image of any size gives comparable statistics.
    """
    b, c, h, w = f.shape
    flat = f.reshape(b, c, h * w)
    return flat @ flat.transpose(1, 2) / (h * w)


def mean_std(f: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-channel mean and standard deviation of (B, C, H, W) → two (B, C)."""
    flat = f.flatten(2)
    mean = flat.mean(-1)
    std = (flat.var(-1, unbiased=False) + eps).sqrt()
    return mean, std


def swag(f: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Softmax smoothing of activations (Wang et al. 2021, SWAG).

    A softmax over all activations of the layer (channels × positions) of each image,
    multiplied by their count so the mean stays 1 and the result does not depend on the
    image size.
    """
    b = f.shape[0]
    flat = f.reshape(b, -1)
    return (F.softmax(flat / temperature, dim=1) * flat.shape[1]).reshape_as(f)


def style_loss(
    feats: Mapping[str, torch.Tensor], target_grams: Mapping[str, torch.Tensor],
    layers: Sequence[str] | None = None,
) -> torch.Tensor:
    """Mean over layers of ``‖G(x) − G_target‖² / ‖G_target‖²``.

    Batched ``feats`` against a single target broadcast; returns one value per image.
    """
    names = list(layers or target_grams)
    total = 0.0
    for name in names:
        g, t = gram(feats[name]), target_grams[name]
        total = total + ((g - t) ** 2).sum(dim=(1, 2)) / (t**2).sum(dim=(1, 2)).clamp_min(1e-12)
    return total / len(names)


def moment_loss(
    feats: Mapping[str, torch.Tensor],
    targets: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    layers: Sequence[str] | None = None,
) -> torch.Tensor:
    """Mean over layers of ``(‖μ(x) − μ_t‖² + ‖σ(x) − σ_t‖²) / (‖μ_t‖² + ‖σ_t‖²)``.

    The style loss of Huang & Belongie (2017, eq. 13) made relative; ``targets`` maps a
    layer to ``(mean, std)`` of shape (B, C) or (1, C).
    """
    names = list(layers or targets)
    total = 0.0
    for name in names:
        m, s = mean_std(feats[name])
        tm, ts = targets[name]
        num = ((m - tm) ** 2).sum(1) + ((s - ts) ** 2).sum(1)
        total = total + num / ((tm**2).sum(1) + (ts**2).sum(1)).clamp_min(1e-12)
    return total / len(names)


def content_loss(
    feats: Mapping[str, torch.Tensor], target_feats: Mapping[str, torch.Tensor],
    layers: Sequence[str] | None = None,
) -> torch.Tensor:
    """Mean over layers of ``‖F(x) − F(c)‖² / ‖F(c)‖²``; one value per image."""
    names = list(layers or target_feats)
    total = 0.0
    for name in names:
        f, t = feats[name], target_feats[name]
        num = ((f - t) ** 2).flatten(1).sum(1)
        total = total + num / (t**2).flatten(1).sum(1).clamp_min(1e-12)
    return total / len(names)


def tv_loss(x: torch.Tensor) -> torch.Tensor:
    """Total variation: mean squared difference of neighbouring pixels; one value per image."""
    dh = (x[..., 1:, :] - x[..., :-1, :]) ** 2
    dw = (x[..., :, 1:] - x[..., :, :-1]) ** 2
    return dh.flatten(1).mean(1) + dw.flatten(1).mean(1)
