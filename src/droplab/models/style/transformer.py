"""The feed-forward style network of Johnson et al. 2016, "Perceptual losses for real-time
style transfer and super-resolution", with a size option and spatial dropout.

The layout is pytorch/examples ``fast_neural_style``'s: a 9×9 convolution, two stride-2
stages, residual blocks at a quarter of the resolution, two nearest-upsample + convolution
stages (no transposed-convolution checkerboards) and a 9×9 convolution back to RGB, with
instance normalisation (Ulyanov et al. 2016) after every inner convolution.

Size options (:data:`PRESETS`): ``width`` (channels of the first stage; the bottleneck
has ``4·width``), ``n_residual`` blocks, ``separable`` — every 3×3 convolution becomes a
depthwise 3×3 plus a pointwise 1×1 (Howard et al. 2017, MobileNets; ≈ 1/9 of the
multiply-adds at these widths) — and ``padding``: ``"reflect"`` (explicit reflection pads,
no border artefacts) or ``"zeros"`` (the convolution's own padding, which inference
runtimes fuse into the convolution; one memory pass less per layer).

Spatial dropout (Tompson et al. 2015, ``droplab.layers.SpatialDropout``) can sit in the
residual blocks, the decoder, or everywhere; kept on at inference it gives MC samples.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from droplab.errors import InvalidValue, check_rate, unknown_name
from droplab.layers import make_dropout

DROPOUT_PLACES = ("residual", "decoder", "all")
PADDINGS = ("reflect", "zeros")

#: Named sizes. ``johnson``: the paper's net (1.68 M parameters); ``fast``: the CPU net
#: (README "Fast feed-forward": same quality under the evaluation encoders, a fraction of
#: the time).
PRESETS: dict[str, dict[str, Any]] = {
    "johnson": {"width": 32, "n_residual": 5, "separable": False, "padding": "reflect",
                "kernel": 9},
    "fast": {"width": 16, "n_residual": 5, "separable": True, "padding": "zeros", "kernel": 5},
}


def spatial_dropout(p: float) -> nn.Module:
    """Channel-wise dropout (Tompson et al. 2015): ``droplab.layers.SpatialDropout``."""
    return make_dropout("spatial", p)


class ConvLayer(nn.Sequential):
    """Padding + convolution; reflection padding (no border artefacts) or zeros."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1,
                 padding: str = "reflect") -> None:
        if padding == "reflect":
            super().__init__(nn.ReflectionPad2d(kernel // 2), nn.Conv2d(cin, cout, kernel, stride))
        else:
            super().__init__(nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2))


class SeparableConv(nn.Sequential):
    """Depthwise 3×3 then pointwise 1×1 (Howard et al. 2017): ``9·cin + cin·cout`` weights
    instead of ``9·cin·cout``."""

    def __init__(self, cin: int, cout: int, stride: int = 1, padding: str = "reflect") -> None:
        pad: list[nn.Module] = [nn.ReflectionPad2d(1)] if padding == "reflect" else []
        super().__init__(
            *pad,
            nn.Conv2d(cin, cin, 3, stride, padding=0 if pad else 1, groups=cin, bias=False),
            nn.Conv2d(cin, cout, 1),
        )


def conv3x3(cin: int, cout: int, stride: int = 1, *, separable: bool = False,
            padding: str = "reflect") -> nn.Module:
    if separable:
        return SeparableConv(cin, cout, stride, padding)
    return ConvLayer(cin, cout, 3, stride, padding)


class ResidualBlock(nn.Module):
    """conv-IN-ReLU-[dropout]-conv-IN plus the identity (He et al. 2016)."""

    def __init__(self, channels: int, dropout: float = 0.0, *, separable: bool = False,
                 padding: str = "reflect") -> None:
        super().__init__()
        self.conv1 = conv3x3(channels, channels, separable=separable, padding=padding)
        self.in1 = nn.InstanceNorm2d(channels, affine=True)
        self.drop = spatial_dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = conv3x3(channels, channels, separable=separable, padding=padding)
        self.in2 = nn.InstanceNorm2d(channels, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.drop(F.relu(self.in1(self.conv1(x))))
        return x + self.in2(self.conv2(y))


class UpsampleConvLayer(nn.Sequential):
    """Nearest ×2 upsampling then a convolution (avoids transposed-conv checkerboards)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, *, separable: bool = False,
                 padding: str = "reflect") -> None:
        conv = (conv3x3(cin, cout, separable=separable, padding=padding) if kernel == 3
                else ConvLayer(cin, cout, kernel, padding=padding))
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"), conv)


class TransformerNet(nn.Module):
    """Johnson et al.'s transformation network with a size option and spatial dropout.

    ``width`` is the channel count of the first layer (32 in the paper; the bottleneck has
    ``4 * width``). ``dropout_where``: ``"residual"`` (inside each residual block),
    ``"decoder"`` (after each upsampling stage), or ``"all"`` (also after the encoder
    stages). ``separable`` / ``padding``: see the module docstring. Output is an image in
    roughly [0, 1]; clamp before saving.
    """

    kind = "transformer"

    def __init__(
        self,
        width: int = 32,
        n_residual: int = 5,
        dropout: float = 0.0,
        dropout_where: str = "residual",
        separable: bool = False,
        padding: str = "reflect",
        kernel: int = 9,
    ) -> None:
        super().__init__()
        check_rate(dropout, "dropout")
        if kernel < 1 or kernel % 2 == 0:
            raise InvalidValue(f"kernel={kernel}: the first and last convolutions need an odd "
                               "size (9 in Johnson et al.)")
        if dropout_where not in DROPOUT_PLACES:
            raise unknown_name("dropout placement", dropout_where, DROPOUT_PLACES)
        if padding not in PADDINGS:
            raise unknown_name("padding", padding, PADDINGS)
        if width < 1 or n_residual < 0:
            raise InvalidValue(f"width={width} and n_residual={n_residual} must be positive")
        self.config = {"width": width, "n_residual": n_residual, "dropout": dropout,
                       "dropout_where": dropout_where, "separable": bool(separable),
                       "padding": padding, "kernel": kernel}
        w, kw = width, {"separable": bool(separable), "padding": padding}
        enc_p = dropout if dropout_where == "all" else 0.0
        res_p = dropout if dropout_where in ("residual", "all") else 0.0
        dec_p = dropout if dropout_where in ("decoder", "all") else 0.0

        def stage(conv: nn.Module, c: int, p: float) -> list[nn.Module]:
            layers = [conv, nn.InstanceNorm2d(c, affine=True), nn.ReLU(inplace=True)]
            return [*layers, spatial_dropout(p)] if p > 0 else layers

        self.encoder = nn.Sequential(
            *stage(ConvLayer(3, w, kernel, padding=padding), w, enc_p),
            *stage(conv3x3(w, 2 * w, 2, **kw), 2 * w, enc_p),
            *stage(conv3x3(2 * w, 4 * w, 2, **kw), 4 * w, enc_p),
        )
        self.residual = nn.Sequential(*(ResidualBlock(4 * w, res_p, **kw)
                                        for _ in range(n_residual)))
        self.decoder = nn.Sequential(
            *stage(UpsampleConvLayer(4 * w, 2 * w, 3, **kw), 2 * w, dec_p),
            *stage(UpsampleConvLayer(2 * w, w, 3, **kw), w, dec_p),
            ConvLayer(w, 3, kernel, padding=padding),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        # pad to a multiple of 4 so the two stride-2 stages and the upsampling round-trip
        ph, pw = (-h) % 4, (-w) % 4
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect")
        return self.forward_multiple_of_4(x)[..., :h, :w]

    def forward_multiple_of_4(self, x: torch.Tensor) -> torch.Tensor:
        """The network proper, for inputs whose height and width are multiples of 4."""
        return self.decoder(self.residual(self.encoder(x)))


def net_options(preset: str | None, **overrides: Any) -> dict[str, Any]:
    """The size options of ``preset`` (:data:`PRESETS`) with ``overrides`` that are not None."""
    if preset is not None and preset not in PRESETS:
        raise unknown_name("network size", preset, PRESETS)
    opts = dict(PRESETS[preset or "johnson"])
    opts.update({k: v for k, v in overrides.items() if v is not None})
    return opts
