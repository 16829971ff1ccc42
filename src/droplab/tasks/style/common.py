"""What the three style commands share: style specs ``PATH[:WEIGHT]``, the encoder and
loss-weight options, and the Gram-matrix targets of several weighted styles."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from droplab.config import Config, option
from droplab.errors import InvalidValue
from droplab.models.style import (
    ENCODERS,
    OFFLINE_DEFAULT,
    Encoder,
    build_encoder,
    gram,
)


def parse_style_spec(spec: str) -> tuple[str, float]:
    """``"starry.jpg:0.7"`` → ``("starry.jpg", 0.7)``; no weight means 1.

    A colon followed by something that is not a number is part of the path only when that
    whole path exists; otherwise it is a weight that does not parse (a one-line error).
    """
    if ":" in spec:
        head, tail = spec.rsplit(":", 1)
        try:
            weight = float(tail)
        except ValueError:
            if Path(spec).exists():
                return spec, 1.0
            raise InvalidValue(
                f"style weight {tail!r} in {spec!r} is not a number; write IMAGE:WEIGHT, "
                "e.g. starry.jpg:0.5"
            ) from None
        if not math.isfinite(weight) or weight <= 0:
            raise InvalidValue(f"style weight in {spec!r} must be a positive number, got {tail}")
        if not head:
            raise InvalidValue(f"style {spec!r} names no image; write IMAGE:WEIGHT")
        return head, weight
    return spec, 1.0


def parse_styles(specs: Sequence[str]) -> list[tuple[str, float]]:
    """Parse several style specs; the weights are normalised to sum to 1."""
    if not specs:
        raise InvalidValue("give at least one --style IMAGE[:WEIGHT]")
    parsed = [parse_style_spec(s) for s in specs]
    total = sum(w for _, w in parsed)
    return [(p, w / total) for p, w in parsed]


@dataclass
class EncoderConfig(Config):
    """The loss network (:func:`droplab.models.style.build_encoder`)."""

    encoder: str = option("auto", choices=ENCODERS, what="encoder",
                          help="auto (vgg19 when its ImageNet weights can be had, else "
                          f"{OFFLINE_DEFAULT}), vgg19, cifar (the CIFAR-10 encoder droplab "
                          "trained; ships with it), random (seeded random weights) or bank "
                          "(a multi-scale random filter bank)")
    encoder_weights: str | None = option(None, runtime=True, metavar="PATH",
                                         help="a torchvision vgg19 state-dict file (else the "
                                         "torch hub cache)")
    n_random: int = option(1, ge=1, help="random: encoders in the ensemble")
    softmax: float | None = option(None, gt=0, metavar="T",
                                   help="SWAG softmax smoothing of activations at temperature "
                                   "T (Wang et al. 2021; default off)")


@dataclass
class LossWeights(Config):
    """Weights of the content, style (Gram) and total-variation losses."""

    content_weight: float = option(1.0, ge=0, metavar="W", help="content loss weight")
    style_weight: float = option(10.0, ge=0, metavar="W", help="style loss weight")
    tv_weight: float = option(5.0, ge=0, metavar="W", help="total-variation loss weight")


def make_encoder(cfg: EncoderConfig, seed: int) -> tuple[Encoder, str]:
    return build_encoder(cfg.encoder, weights=cfg.encoder_weights, seed=seed,
                         softmax=cfg.softmax, n_random=cfg.n_random)


def style_targets(
    encoder: Encoder, styles: Sequence[torch.Tensor], weights: Sequence[float]
) -> dict[str, torch.Tensor]:
    """Weighted sum of the styles' Gram matrices per layer.

    Minimising ``‖G − Σ wᵢ Gᵢ‖²`` is minimising ``Σ wᵢ ‖G − Gᵢ‖²`` up to a constant (for
    weights summing to 1), so this mixes styles at the cost of one target.
    """
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for img, w in zip(styles, weights):
            feats = encoder(img)
            for name in encoder.style_layers:
                g = gram(feats[name]) * w
                out[name] = out[name] + g if name in out else g
    return out


