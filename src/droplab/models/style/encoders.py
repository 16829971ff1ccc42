"""Perceptual encoders (loss networks) that need no download.

- :class:`TrainedEncoder` (``cifar``) — the convolution stages of a small classifier that
  droplab trained itself on the CIFAR-10 JPEGs (``droplab train --model lenet``; the weights
  ship in the package, :data:`CIFAR_WEIGHTS`, with the command that reproduces them),
  batch norm folded into the convolutions, max-pooling replaced by average pooling as
  Gatys et al. (2016) do for VGG. Its receptive field is small (it saw 32-pixel images), so
  its features are also read from the image at ½ and ¼ scale (``scales``) — the strokes
  of a painting are larger than a CIFAR object part.
- :class:`RandomEncoder` (``random``) — a VGG-style stack with seeded random weights.
  Random convolutional features carry texture statistics (He et al. 2016, "A powerful
  generative model using random weights for the deep image representation").
- :class:`RandomFilterBank` (``bank``) — one layer of random filters applied to an image
  pyramid: a multi-scale random filter bank in the spirit of Ustyuzhaninov et al. 2017,
  "What does it take to generate natural textures?" (their filters grow to 55 px; a
  5×5 bank on four octaves covers 5 to 40 px at a fraction of the cost).
- :class:`EnsembleEncoder` — several encoders side by side.

Every encoder maps an image in [0, 1] to ``{layer name: features}`` and lists its
``style_layers`` and ``content_layers``. ``softmax=T`` applies the SWAG smoothing of Wang
et al. 2021 to every layer read.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from droplab.errors import WeightsUnavailable
from droplab.fileio import UnreadableFile, read_torch_file
from droplab.models.style.losses import swag

#: The shipped CIFAR-10 encoder (``benchmarks/style_encoder.py`` writes it).
CIFAR_WEIGHTS = "cifar-lenet.pt"
WEIGHTS_FORMAT = "droplab.style-encoder"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Encoder(nn.Module):
    """A frozen feature extractor: ``forward(x in [0, 1]) -> {layer name: features}``."""

    name: str = "encoder"
    style_layers: tuple[str, ...] = ()
    content_layers: tuple[str, ...] = ()

    def freeze(self) -> Encoder:
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def describe(self) -> str:
        return self.name

    def _read(self, h: torch.Tensor) -> torch.Tensor:
        softmax = getattr(self, "softmax", None)
        return swag(h, softmax) if softmax else h


def norm_buffers(module: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
    module.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
    module.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))


def _he_filters(shape: Sequence[int], gen: torch.Generator) -> torch.Tensor:
    """Zero-mean filters scaled to He et al.'s (2015) variance 2 / fan-in."""
    w = torch.randn(tuple(shape), generator=gen)
    w = w - w.mean(dim=(1, 2, 3), keepdim=True)
    fan_in = shape[1] * shape[2] * shape[3]
    return w * math.sqrt(2.0 / fan_in) / w.std(dim=(1, 2, 3), keepdim=True)


class RandomEncoder(Encoder):
    """A VGG-style encoder with seeded random weights — needs no download.

    Each block is ``conv3×3 → ReLU`` (``convs`` times) then 2×2 average pooling; the style
    is read after the first ReLU of every block plus the colour statistics of the pixels
    themselves (``"rgb"``, so colour is matched directly), the content after block 3
    (block 4 of a random net keeps too little detail: the result turns to blur).
    Filters are drawn from a seeded generator, made zero-mean and scaled to He et al.'s
    (2015) variance so activations neither vanish nor explode with depth.
    """

    name = "random"

    def __init__(
        self,
        seed: int = 0,
        widths: Sequence[int] = (64, 128, 128, 128),
        convs: int = 1,
        *,
        softmax: float | None = None,
        pixels: bool = True,
    ) -> None:
        super().__init__()
        self.seed, self.widths, self.convs = seed, tuple(widths), convs
        self.softmax, self.pixels = softmax, pixels
        gen = torch.Generator().manual_seed(10_007 + seed)
        blocks = []
        cin = 3
        for cout in self.widths:
            convs_ = []
            for _ in range(convs):
                conv = nn.Conv2d(cin, cout, 3, padding=1, padding_mode="reflect")
                conv.weight.data.copy_(_he_filters(conv.weight.shape, gen))
                conv.bias.data.zero_()
                convs_.append(conv)
                cin = cout
            blocks.append(nn.ModuleList(convs_))
        self.blocks = nn.ModuleList(blocks)
        n = len(self.widths)
        self.style_layers = (("rgb",) if pixels else ()) + tuple(f"block{i + 1}" for i in range(n))
        self.content_layers = (f"block{min(3, n)}",)
        norm_buffers(self, IMAGENET_MEAN, IMAGENET_STD)
        self.freeze()

    def describe(self) -> str:
        sm = f", softmax T={self.softmax:g}" if self.softmax else ""
        return f"random (seed {self.seed}, widths {list(self.widths)}{sm})"

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        h = (x - self.mean) / self.std
        if self.pixels:
            out["rgb"] = h
        for i, convs in enumerate(self.blocks):
            if i and min(h.shape[-2:]) >= 4:  # tiny inputs keep their size (reflect pad needs 2)
                h = F.avg_pool2d(h, 2)
            for j, conv in enumerate(convs):
                h = F.relu(conv(h))
                if j == 0:
                    out[f"block{i + 1}"] = self._read(h)
        return out


class RandomFilterBank(Encoder):
    """One layer of ``filters`` random ``kernel``×``kernel`` filters on ``octaves`` image
    scales (full, ½, ¼, …): a multi-scale random filter bank (Ustyuzhaninov et al. 2017).

    Style: the Gram matrix of every octave plus the pixels' colour statistics; content:
    the full-scale responses.
    """

    name = "bank"

    def __init__(self, seed: int = 0, filters: int = 128, kernel: int = 5, octaves: int = 4,
                 *, softmax: float | None = None) -> None:
        super().__init__()
        self.seed, self.filters, self.kernel, self.octaves = seed, filters, kernel, octaves
        self.softmax = softmax
        gen = torch.Generator().manual_seed(20_011 + seed)
        self.weight = nn.Parameter(_he_filters((filters, 3, kernel, kernel), gen))
        self.style_layers = ("rgb", *(f"octave{k}" for k in range(octaves)))
        self.content_layers = ("octave0",)
        norm_buffers(self, IMAGENET_MEAN, IMAGENET_STD)
        self.freeze()

    def describe(self) -> str:
        sm = f", softmax T={self.softmax:g}" if self.softmax else ""
        return (f"bank (seed {self.seed}, {self.filters} random {self.kernel}×{self.kernel} "
                f"filters on {self.octaves} octaves{sm})")

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = (x - self.mean) / self.std
        out: dict[str, torch.Tensor] = {"rgb": h}
        pad = self.kernel // 2
        for k in range(self.octaves):
            if k and min(h.shape[-2:]) >= 2 * self.kernel:
                h = F.avg_pool2d(h, 2)
            y = F.relu(F.conv2d(F.pad(h, (pad,) * 4, mode="reflect"), self.weight))
            out[f"octave{k}"] = self._read(y)
        return out


class TrainedEncoder(Encoder):
    """The convolution stages of a classifier droplab trained (a weights file written by
    :func:`encoder_weights_from_classifier`), batch norm folded in.

    ``layers``: read after stages ``relu1`` … ``relu<L>`` at every scale in ``scales``
    (``1`` = the image itself; names ``s<k>.relu<i>`` for the others). Style: every layer
    at every scale (+ ``rgb``); content: ``relu<content>`` at full scale. Average pooling
    and reflection padding by default (``pool``, ``padding``): the classifier used max
    pooling and zeros, which leave grid and border artefacts when an image is optimised.
    """

    name = "cifar"

    def __init__(
        self,
        weights: dict[str, Any],
        *,
        scales: Sequence[float] = (1.0, 0.5, 0.25),
        content: int = 2,
        pool: str = "avg",
        padding: str = "reflect",
        softmax: float | None = None,
        pixels: bool = True,
        label: str = "cifar",
    ) -> None:
        super().__init__()
        check_encoder_weights(weights, label)
        self.label, self.scales = label, tuple(scales)
        self.pool, self.padding, self.softmax, self.pixels = pool, padding, softmax, pixels
        self.convs = nn.ModuleList()
        for w, b in zip(weights["weights"], weights["biases"]):
            conv = nn.Conv2d(w.shape[1], w.shape[0], w.shape[-1])
            conv.weight.data.copy_(w.float())
            conv.bias.data.copy_(b.float())
            self.convs.append(conv)
        self.widths = tuple(int(w.shape[0]) for w in weights["weights"])
        self.source = dict(weights.get("source") or {})
        norm_buffers(self, weights["mean"], weights["std"])
        n = len(self.convs)
        names = [f"relu{i + 1}" for i in range(n)]
        style = [n_ if s == 1 else f"s{s:g}.{n_}" for s in self.scales for n_ in names]
        self.style_layers = (("rgb",) if pixels else ()) + tuple(style)
        self.content_layers = (f"relu{min(content, n)}",)
        self.freeze()

    def describe(self) -> str:
        sm = f", softmax T={self.softmax:g}" if self.softmax else ""
        acc = self.source.get("test_acc")
        acc_s = f", {100 * acc:.0f}% CIFAR-10 test accuracy" if isinstance(acc, float) else ""
        return (f"{self.label} (trained stages {list(self.widths)}{acc_s}, scales "
                f"{[f'{s:g}' for s in self.scales]}{sm})")

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """ReLU outputs of every stage for normalised input ``x``."""
        out = []
        h = x
        for i, conv in enumerate(self.convs):
            if i and min(h.shape[-2:]) >= 2:
                h = F.avg_pool2d(h, 2) if self.pool == "avg" else F.max_pool2d(h, 2)
            k = conv.kernel_size[0] // 2
            mode = "reflect" if self.padding == "reflect" and min(h.shape[-2:]) > k else "constant"
            h = F.relu(conv(F.pad(h, (k,) * 4, mode=mode)))
            out.append(h)
        return out

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = (x - self.mean) / self.std
        out: dict[str, torch.Tensor] = {"rgb": h} if self.pixels else {}
        for s in self.scales:
            hs = h if s == 1 else F.interpolate(h, scale_factor=s, mode="bilinear",
                                                antialias=True, align_corners=False)
            prefix = "" if s == 1 else f"s{s:g}."
            for i, f in enumerate(self.features(hs)):
                out[f"{prefix}relu{i + 1}"] = self._read(f)
        return out


class EnsembleEncoder(Encoder):
    """Several encoders side by side; layer names are prefixed ``e<i>.``."""

    def __init__(self, encoders: Sequence[Encoder]) -> None:
        super().__init__()
        self.members = nn.ModuleList(encoders)
        self.name = encoders[0].name
        self.style_layers = tuple(f"e{i}.{n}" for i, e in enumerate(encoders) for n in e.style_layers)
        self.content_layers = tuple(
            f"e{i}.{n}" for i, e in enumerate(encoders) for n in e.content_layers
        )
        self.freeze()

    def describe(self) -> str:
        return " + ".join(e.describe() for e in self.members)  # type: ignore[union-attr]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for i, enc in enumerate(self.members):
            out.update({f"e{i}.{k}": v for k, v in enc(x).items()})
        return out


def random_encoder(seed: int = 0, n: int = 1, *, softmax: float | None = None,
                   widths: Sequence[int] | None = None) -> Encoder:
    """``n`` differently seeded :class:`RandomEncoder` s."""
    kw = {"widths": widths} if widths else {}
    encs = [RandomEncoder(seed * 1000 + i, softmax=softmax, pixels=(i == 0), **kw)
            for i in range(n)]
    return encs[0] if n == 1 else EnsembleEncoder(encs)


# -- the shipped weights files ------------------------------------------------------------------


def check_encoder_weights(weights: Any, label: str) -> None:
    """Refuse (one line) a weights dict that is not a droplab style-encoder file."""
    ok = (isinstance(weights, dict) and weights.get("format") == WEIGHTS_FORMAT
          and isinstance(weights.get("weights"), list | tuple)
          and isinstance(weights.get("biases"), list | tuple)
          and len(weights["weights"]) == len(weights["biases"]) > 0
          and all(isinstance(w, torch.Tensor) and w.dim() == 4 for w in weights["weights"])
          and len(weights.get("mean", ())) == weights["weights"][0].shape[1])
    if not ok:
        raise WeightsUnavailable(f"the {label} encoder weights are not a droplab style-encoder "
                                 "file; reinstall droplab or rebuild them with "
                                 "benchmarks/style_encoder.py")


def weights_path(name: str = CIFAR_WEIGHTS) -> Path:
    """Where a shipped encoder weights file lives inside the installed package."""
    return Path(str(resources.files("droplab.models.style") / "weights" / name))


def load_encoder_weights(path: str | Path | None = None, name: str = CIFAR_WEIGHTS
                         ) -> dict[str, Any]:
    """Read an encoder weights file safely (``torch.load(weights_only=True)``)."""
    p = Path(path) if path is not None else weights_path(name)
    if not p.is_file():
        raise WeightsUnavailable(f"encoder weights {p} are missing; reinstall droplab or "
                                 "rebuild them with benchmarks/style_encoder.py")
    try:
        weights = read_torch_file(p, what="encoder weights",
                                  advice="reinstall droplab or rebuild them with "
                                  "benchmarks/style_encoder.py")
    except UnreadableFile as exc:
        raise WeightsUnavailable(str(exc)) from None
    check_encoder_weights(weights, str(p))
    return weights


def cifar_encoder(*, softmax: float | None = None, **kw: Any) -> TrainedEncoder:
    """The shipped CIFAR-10 encoder."""
    return TrainedEncoder(load_encoder_weights(name=CIFAR_WEIGHTS), softmax=softmax,
                          label="cifar", **kw)


def encoder_weights_from_classifier(state: dict[str, torch.Tensor], *, mean: Sequence[float],
                                    std: Sequence[float], source: dict[str, Any],
                                    eps: float = 1e-5) -> dict[str, Any]:
    """Fold ``Conv2d(bias=False) → BatchNorm2d`` pairs of a classifier state dict into
    plain convolutions (``w·γ/√(σ²+ε)``, ``β − μ·γ/√(σ²+ε)``), stored as float16.

    ``state`` is a ``lenet``/``convnet`` classifier's; the pairs are found in order
    (a 4-D ``*.weight`` followed by a BN ``running_var``).
    """
    weights, biases = [], []
    for k, w in state.items():
        if not (k.endswith(".weight") and w.dim() == 4):
            continue
        head, _, index = k[: -len(".weight")].rpartition(".")
        bn = f"{head}.{int(index) + 1}".lstrip(".") if index.isdigit() else None
        if bn is None or f"{bn}.running_var" not in state:
            raise ValueError(f"{k} is not followed by a batch norm layer")
        scale = state[f"{bn}.weight"] / (state[f"{bn}.running_var"] + eps).sqrt()
        weights.append((w * scale.view(-1, 1, 1, 1)).half())
        biases.append((state[f"{bn}.bias"] - state[f"{bn}.running_mean"] * scale).half())
    return {"format": WEIGHTS_FORMAT, "version": 1, "weights": weights, "biases": biases,
            "mean": [float(v) for v in mean], "std": [float(v) for v in std], "source": source}
