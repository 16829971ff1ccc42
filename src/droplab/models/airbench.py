"""An airbench-style CIFAR network: ``airbench`` and ``airbench-res`` in the model zoo.

After Keller Jordan's airbench94 (2024), which descends from tysam-code's hlb-CIFAR10 and
David Page's "How to train your ResNet" (2018) — reimplemented here in droplab's style:

- a **patch-whitening first layer**: a 2×2 convolution whose ``2·C·4`` filters are the
  eigenvectors ``±v_i / sqrt(λ_i + ε)`` of the covariance of 2×2 patches of training
  images (:meth:`AirbenchNet.init_from_data`), frozen; only its bias trains;
- three conv groups ``conv3×3 → max-pool 2 → BN → GELU → conv3×3 → BN → GELU`` of widths
  ``widths`` (default 64, 256, 256), every 3×3 filter bank **dirac-initialised** (the first
  ``C_in`` filters are identities), **BatchNorm without a learned scale** (weight frozen at
  1, eps 1e-12) and fast running statistics (momentum 0.4 in torch's convention);
- global max-pooling, a bias-free linear head and logits scaled by 1/9;
- :meth:`AirbenchNet.lr_groups` trains the BN biases at 64× the learning rate (the engine's
  optimiser honours it).

``airbench-res`` adds a skip connection over each group's second convolution
(``x = GELU(x0 + BN(conv(x0)))``, as airbench96 does over its last two), so that stochastic
depth (``--dropout-kind droppath``) has residual branches to drop; FLOPs are unchanged.

The rest of airbench's recipe lives where every model can use it: label smoothing and the
triangular LR schedule in :class:`droplab.engine.TrainConfig`, Lookahead as an engine
callback (:mod:`droplab.engine.averaging`), alternating flips and reflect-padded
translations in :class:`droplab.data.Loader`, flip/translate test-time augmentation in
:mod:`droplab.models.tta`.

Dropout (``ModelConfig``) applies as for every zoo model: ``head`` before the classifier,
``conv`` after every group (element-wise kinds, ``spatial``, ``dropblock`` with the block
size chosen from the map size, ``dropconnect`` on the groups' convolutions), ``droppath``
on the residual branches of ``airbench-res`` with the linear depth rule (group ``l`` of
``L`` drops with ``p·l/L``, Huang et al. 2016), ``input_dropout`` on the input.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from droplab.errors import InvalidValue
from droplab.layers import make_dropout
from droplab.models.classifiers import (
    Classifier,
    ModelConfig,
    _conv_on,
    _flat_drop,
    _head_on,
    _map_drop,
    _wrap_convs,
    register_model,
)

__all__ = ["DEFAULT_WIDTHS", "AirbenchNet", "WhiteningConv", "init_whitening"]

#: airbench94's widths; the CPU recipe (benchmarks/classify.py cifar-fast) is narrower
DEFAULT_WIDTHS = (64, 256, 256)
#: logit scale of airbench (1/9)
LOGIT_SCALE = 1.0 / 9.0
#: BatchNorm momentum (torch's convention: weight of the new batch statistic)
BN_MOMENTUM = 0.4
#: learning-rate multiplier of the BatchNorm biases
BIAS_LR_SCALE = 64.0


def init_whitening(weight: Tensor, images: Tensor, eps: float = 5e-4) -> None:
    """Fill a ``(2·C·k·k, C, k, k)`` conv weight with ZCA-style patch-whitening filters.

    The covariance ``Σ = E[p pᵀ]`` of all ``k × k`` patches ``p`` of ``images`` (N, C, H, W)
    is eigendecomposed (float64); filter ``i`` is ``v_i / sqrt(λ_i + eps)`` for the
    eigenvectors in decreasing eigenvalue order, followed by their negatives, so the
    layer's outputs are decorrelated with unit variance (Page 2018; Jordan 2024).
    """
    out, c, kh, kw = weight.shape
    if out != 2 * c * kh * kw or images.dim() != 4 or images.shape[1] != c:
        raise InvalidValue(f"whitening needs {2 * c * kh * kw} filters and {c}-channel images")
    patches = images.double().unfold(2, kh, 1).unfold(3, kw, 1)  # N, C, H', W', kh, kw
    flat = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * kh * kw)
    cov = flat.T @ flat / flat.shape[0]
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending
    order = eigenvalues.flip(0)
    vectors = eigenvectors.T.flip(0) / torch.sqrt(order + eps)[:, None]
    filters = vectors.reshape(-1, c, kh, kw)
    with torch.no_grad():
        weight.copy_(torch.cat([filters, -filters]).to(weight.dtype))


class WhiteningConv(nn.Conv2d):
    """A frozen ``k × k`` patch-whitening convolution with a trainable bias (default k=2)."""

    def __init__(self, in_channels: int, kernel_size: int = 2) -> None:
        super().__init__(in_channels, 2 * in_channels * kernel_size**2, kernel_size,
                         bias=True)
        self.weight.requires_grad_(False)
        with torch.no_grad():
            self.bias.zero_()

    def fit(self, images: Tensor) -> None:
        """Set the filters from the patch statistics of ``images`` (see :func:`init_whitening`)."""
        init_whitening(self.weight, images.to(self.weight.device))


def _norm(channels: int) -> nn.BatchNorm2d:
    """BatchNorm without a learned scale: weight fixed at 1, eps 1e-12, fast statistics."""
    bn = nn.BatchNorm2d(channels, eps=1e-12, momentum=BN_MOMENTUM)
    bn.weight.requires_grad_(False)
    return bn


def _conv(c_in: int, c_out: int) -> nn.Conv2d:
    """3×3 'same' convolution without bias, its first ``c_in`` filters set to identities."""
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[:c_in])
    return conv


class ConvGroup(nn.Module):
    """``conv → max-pool 2 → BN → GELU → conv → BN (→ + skip) → GELU → dropout``."""

    def __init__(self, c_in: int, c_out: int, *, residual: bool, drop: nn.Module,
                 branch_drop: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv(c_in, c_out)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = _norm(c_out)
        self.conv2 = _conv(c_out, c_out)
        self.norm2 = _norm(c_out)
        self.residual = residual
        self.branch_drop = branch_drop if branch_drop is not None else nn.Identity()
        self.drop = drop

    def forward(self, x: Tensor) -> Tensor:
        x0 = F.gelu(self.norm1(self.pool(self.conv1(x))))
        x = self.norm2(self.conv2(x0))
        if self.residual:
            x = x0 + self.branch_drop(x)
        return self.drop(F.gelu(x))


class AirbenchNet(Classifier):
    """The airbench-style network (see the module docstring)."""

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, cfg: ModelConfig,
                 *, residual: bool = False) -> None:
        super().__init__()
        widths = tuple(cfg.widths or DEFAULT_WIDTHS)
        name = "airbench-res" if residual else "airbench"
        if len(widths) != 3:
            raise InvalidValue(f"{name} takes three group widths, e.g. 64,256,256; got "
                               f"{','.join(map(str, widths))}")
        c, h, w = in_shape
        if min(h, w) < 17:
            raise InvalidValue(f"{name} needs images of at least 17×17 pixels (three 2× "
                               f"poolings after a 2×2 conv), got {h}×{w}; use --image-size 32")
        droppath = _conv_on(cfg) and cfg.dropout_kind == "droppath"
        if droppath and not residual:
            raise InvalidValue("dropout kind 'droppath' (stochastic depth) drops residual "
                               "branches; use --model airbench-res")
        self.input_drop = _flat_drop(cfg, cfg.input_dropout, "input")
        self.whiten = WhiteningConv(c)
        groups: list[nn.Module] = []
        c, size = self.whiten.out_channels, min(h, w) - 1
        for i, width in enumerate(widths, 1):
            size //= 2
            branch = make_dropout("droppath", cfg.dropout * i / len(widths)) if droppath else None
            drop = nn.Identity() if droppath else _map_drop(cfg, size)
            groups.append(ConvGroup(c, width, residual=residual, drop=drop, branch_drop=branch))
            c = width
        self.groups = nn.Sequential(*groups)
        _wrap_convs(self.groups, cfg)  # DropConnect on the groups' convs, never the whitening
        self.head_drop = _flat_drop(cfg, cfg.dropout if _head_on(cfg) else 0.0)
        self.head = _head(cfg, c, num_classes)

    def init_from_data(self, images: Tensor) -> None:
        """Data-dependent initialisation: fit the whitening filters to training images
        (normalised, un-augmented; airbench uses 5,000)."""
        self.whiten.fit(images)

    def forward_features(self, x: Tensor) -> Tensor:
        x = F.gelu(self.whiten(self.input_drop(x)))
        x = self.groups(x)
        # global max-pool; the logit scale is applied here so that head(features) are the
        # logits (a bias-free head makes W (s f) = s (W f))
        return torch.amax(x, dim=(2, 3)) * LOGIT_SCALE

    def lr_groups(self) -> list[tuple[list[nn.Parameter], float]]:
        """BatchNorm biases at :data:`BIAS_LR_SCALE` × the learning rate, the rest at 1×."""
        norm_bias = [m.bias for m in self.modules() if isinstance(m, nn.BatchNorm2d)]
        ids = {id(p) for p in norm_bias}
        rest = [p for p in self.parameters() if id(p) not in ids]
        return [(rest, 1.0), (norm_bias, BIAS_LR_SCALE)]


def _head(cfg: ModelConfig, n_in: int, n_out: int) -> nn.Module:
    """The bias-free classifier layer (DropConnect when that is the head's dropout kind)."""
    if _head_on(cfg) and cfg.dropout_kind == "dropconnect":
        return make_dropout("dropconnect", cfg.dropout, in_features=n_in, out_features=n_out,
                            bias=False)
    return nn.Linear(n_in, n_out, bias=False)


def _builder(residual: bool) -> Callable[[tuple[int, int, int], int, ModelConfig], nn.Module]:
    def build(in_shape: tuple[int, int, int], num_classes: int, cfg: ModelConfig) -> nn.Module:
        return AirbenchNet(in_shape, num_classes, cfg, residual=residual)
    return build


register_model("airbench", _builder(False))
register_model("airbench-res", _builder(True))
