"""Choosing a perceptual encoder (:func:`build_encoder`) and rebuilding a style network
from the ``net_config`` its checkpoint stores (:func:`build_style_net`).

``auto`` runs VGG-19 when its ImageNet weights can be had; offline it runs
:data:`OFFLINE_DEFAULT` (README "The offline look" compares the offline options), and
says once on stderr which encoder runs and why.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from droplab.errors import UserError, WeightsUnavailable, unknown_name
from droplab.models.style.adain import AdaINNet
from droplab.models.style.encoders import (
    Encoder,
    RandomFilterBank,
    cifar_encoder,
    random_encoder,
)
from droplab.models.style.transformer import TransformerNet
from droplab.models.style.vgg import VGGEncoder, load_vgg19_features

ENCODERS = ("auto", "vgg19", "cifar", "random", "bank")
#: What ``auto`` runs when the VGG-19 weights cannot be had.
OFFLINE_DEFAULT = "cifar"
_WHY = {
    "cifar": ("of the offline encoders it gave the strongest look and the lowest style loss "
              "under a held-out evaluation encoder (README \"The offline look\")"),
    "random": "it needs no weights at all",
}


def _offline_encoder(name: str, seed: int, softmax: float | None, n_random: int) -> Encoder:
    if name == "cifar":
        return cifar_encoder(softmax=softmax)
    if name == "bank":
        return RandomFilterBank(seed, softmax=softmax)
    return random_encoder(seed, n_random, softmax=softmax)


def build_encoder(
    name: str = "auto",
    *,
    weights: str | Path | None = None,
    seed: int = 0,
    softmax: float | None = None,
    n_random: int = 1,
    download: bool = True,
    quiet: bool = False,
) -> tuple[Encoder, str]:
    """Build a perceptual encoder; returns ``(encoder, reason)``.

    ``auto`` uses VGG-19 when its weights can be had and otherwise :data:`OFFLINE_DEFAULT`
    (the random encoder if even that cannot be read), saying once on stderr which encoder
    runs and why (unless ``quiet``).
    """
    if name not in ENCODERS:
        raise unknown_name("encoder", name, ENCODERS)
    if name not in ("auto", "vgg19"):
        return _offline_encoder(name, seed, softmax, n_random), "asked for"
    try:
        features = load_vgg19_features(weights, download=download, retry=name == "vgg19")
        enc = VGGEncoder(features, softmax=softmax)
        return enc, "ImageNet weights"
    except WeightsUnavailable as exc:
        if name == "vgg19":
            raise
        reason = str(exc)
    choice = OFFLINE_DEFAULT
    try:
        enc = _offline_encoder(choice, seed, softmax, n_random)
    except WeightsUnavailable as exc:  # a broken install: say so, still run
        reason += f"; {exc}"
        choice = "random"
        enc = _offline_encoder(choice, seed, softmax, n_random)
    if not quiet:
        label = {"random": "random-weight", "cifar": "CIFAR-10-trained"}[choice]
        print(f"droplab: using the {label} encoder ({enc.describe()}) because {reason}; "
              f"{_WHY[choice]}", file=sys.stderr)
    return enc, reason


def build_style_net(config: dict[str, Any]) -> TransformerNet | AdaINNet:
    """The (untrained) network a checkpoint's ``net_config`` describes."""
    kind = config.get("kind", "transformer")
    kw = {k: v for k, v in config.items() if k != "kind"}
    if kind == "transformer":
        return TransformerNet(**kw)
    if kind == "adain":
        return AdaINNet(**kw)
    raise UserError(f"unknown style network kind {kind!r} in the checkpoint; this droplab "
                    "reads transformer and adain networks")
