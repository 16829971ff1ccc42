"""Style-transfer networks: the feed-forward transformer, perceptual encoders and losses.

- :class:`TransformerNet` — the image transformation network of Johnson et al. 2016,
  "Perceptual losses for real-time style transfer and super-resolution" (the layout of
  pytorch/examples ``fast_neural_style``: reflection-padded convolutions, instance norm
  (Ulyanov et al. 2016), five residual blocks, nearest-upsample + convolution instead of
  transposed convolutions), with optional spatial dropout (Tompson et al. 2015) in the
  residual blocks, the decoder, or everywhere. Kept on at inference it gives MC samples.
- :class:`VGGEncoder` — torchvision's VGG-19 with ImageNet weights (Gatys et al. 2016,
  "Image style transfer using convolutional neural networks"), max-pooling replaced by
  average pooling as Gatys et al. recommend.
- :class:`RandomEncoder` — a VGG-style stack with seeded random weights. Random
  convolutional features carry enough texture statistics for style transfer (He et al.
  2016, "A powerful generative model using random weights for the deep image
  representation"; Ustyuzhaninov et al. 2017, "What does it take to generate natural
  textures?") when every layer's loss is normalised so that every layer contributes;
  :func:`style_loss` and :func:`content_loss` divide by the target's energy. The softmax
  smoothing of Wang et al. 2021 ("Rethinking and improving the robustness of image style
  transfer", SWAG) is an option.

Images enter every network as float tensors in [0, 1].

Why this module is long: the transformer, both encoders, the weight loading and the
normalised losses are one model family whose parts are tested together; a split would
leave each piece depending on all the others.
"""

from __future__ import annotations

import datetime
import io
import math
import os
import socket
import sys
import warnings
from collections.abc import Mapping, Sequence
from contextlib import suppress
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from droplab.errors import InvalidValue, WeightsUnavailable, check_rate, unknown_name
from droplab.fileio import (
    UnreadableFile,
    atomic_write_bytes,
    read_torch_file,
    third_party_weights,
)

DROPOUT_PLACES = ("residual", "decoder", "all")
ENCODERS = ("auto", "vgg19", "random")

# ---------------------------------------------------------------------------------------
# Feed-forward transformer network (Johnson et al. 2016)
# ---------------------------------------------------------------------------------------


def spatial_dropout(p: float) -> nn.Module:
    """Channel-wise dropout (Tompson et al. 2015): ``droplab.layers.SpatialDropout``."""
    from droplab.layers import make_dropout

    return make_dropout("spatial", p)


class ConvLayer(nn.Sequential):
    """Reflection padding + convolution (no border artefacts)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1) -> None:
        super().__init__(nn.ReflectionPad2d(kernel // 2), nn.Conv2d(cin, cout, kernel, stride))


class ResidualBlock(nn.Module):
    """conv-IN-ReLU-[dropout]-conv-IN plus the identity (He et al. 2016)."""

    def __init__(self, channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv1 = ConvLayer(channels, channels, 3)
        self.in1 = nn.InstanceNorm2d(channels, affine=True)
        self.drop = spatial_dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = ConvLayer(channels, channels, 3)
        self.in2 = nn.InstanceNorm2d(channels, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.drop(F.relu(self.in1(self.conv1(x))))
        return x + self.in2(self.conv2(y))


class UpsampleConvLayer(nn.Sequential):
    """Nearest ×2 upsampling then a convolution (avoids transposed-conv checkerboards)."""

    def __init__(self, cin: int, cout: int, kernel: int) -> None:
        super().__init__(nn.Upsample(scale_factor=2, mode="nearest"), ConvLayer(cin, cout, kernel))


class TransformerNet(nn.Module):
    """Johnson et al.'s transformation network with optional spatial dropout.

    ``width`` is the channel count of the first layer (32 in the paper; the bottleneck has
    ``4 * width``). ``dropout_where``: ``"residual"`` (inside each residual block),
    ``"decoder"`` (after each upsampling stage), or ``"all"`` (also after the encoder
    stages). Output is an image in roughly [0, 1]; clamp before saving.
    """

    def __init__(
        self,
        width: int = 32,
        n_residual: int = 5,
        dropout: float = 0.0,
        dropout_where: str = "residual",
    ) -> None:
        super().__init__()
        check_rate(dropout, "dropout")
        if dropout_where not in DROPOUT_PLACES:
            raise unknown_name("dropout placement", dropout_where, DROPOUT_PLACES)
        if width < 1 or n_residual < 0:
            raise InvalidValue(f"width={width} and n_residual={n_residual} must be positive")
        self.config = {"width": width, "n_residual": n_residual, "dropout": dropout,
                       "dropout_where": dropout_where}
        w = width
        enc_p = dropout if dropout_where == "all" else 0.0
        res_p = dropout if dropout_where in ("residual", "all") else 0.0
        dec_p = dropout if dropout_where in ("decoder", "all") else 0.0

        def stage(conv: nn.Module, c: int, p: float) -> list[nn.Module]:
            layers = [conv, nn.InstanceNorm2d(c, affine=True), nn.ReLU(inplace=True)]
            return [*layers, spatial_dropout(p)] if p > 0 else layers

        self.encoder = nn.Sequential(
            *stage(ConvLayer(3, w, 9), w, enc_p),
            *stage(ConvLayer(w, 2 * w, 3, stride=2), 2 * w, enc_p),
            *stage(ConvLayer(2 * w, 4 * w, 3, stride=2), 4 * w, enc_p),
        )
        self.residual = nn.Sequential(*(ResidualBlock(4 * w, res_p) for _ in range(n_residual)))
        self.decoder = nn.Sequential(
            *stage(UpsampleConvLayer(4 * w, 2 * w, 3), 2 * w, dec_p),
            *stage(UpsampleConvLayer(2 * w, w, 3), w, dec_p),
            ConvLayer(w, 3, 9),
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


class _ExportWrapper(nn.Module):
    def __init__(self, net: TransformerNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_multiple_of_4(x)


def export_onnx(net: TransformerNet, path: str | Path, size: int = 256) -> Path:
    """Export ``net`` (eval mode: dropout off) to ONNX with dynamic batch, height and width.

    The graph takes ``image`` (N, 3, H, W) in [0, 1] with H and W multiples of 4 (pad with
    reflection first, as :func:`onnx_stylize` does) and returns ``stylized``.
    """
    path = Path(path)
    was_training = net.training
    net.eval()
    dummy = torch.rand(1, 3, size, size)
    buf = io.BytesIO()  # exported in memory, then written atomically (one-line errors)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _ExportWrapper(net), (dummy,), buf, dynamo=False, opset_version=17,
                input_names=["image"], output_names=["stylized"],
                dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                              "stylized": {0: "batch", 2: "height", 3: "width"}},
            )
    finally:
        net.train(was_training)
    atomic_write_bytes(path, buf.getvalue())
    return path


def onnx_stylize(session: object, x: torch.Tensor) -> torch.Tensor:
    """Run an exported network in an ``onnxruntime.InferenceSession`` on (N, 3, H, W)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % 4, (-w) % 4
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="reflect")
    out = session.run(None, {"image": x.detach().cpu().numpy()})[0]  # type: ignore[attr-defined]
    return torch.from_numpy(out)[..., :h, :w]


# ---------------------------------------------------------------------------------------
# Losses (Gatys et al. 2016; per-layer normalisation after He et al. 2016)
# ---------------------------------------------------------------------------------------


def gram(f: torch.Tensor) -> torch.Tensor:
    """Gram matrix ``F Fᵀ / N`` of features (B, C, H, W) → (B, C, C); N = H·W.

    Dividing by the number of positions makes it independent of the image size, so a
    style image of any size gives comparable statistics.
    """
    b, c, h, w = f.shape
    flat = f.reshape(b, c, h * w)
    return flat @ flat.transpose(1, 2) / (h * w)


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

    The relative error weighs every layer equally whatever its activation scale (essential
    for random-weight encoders, whose layer magnitudes differ by orders of magnitude).
    Batched ``feats`` against a single target broadcast; returns one value per image.
    """
    names = list(layers or target_grams)
    total = 0.0
    for name in names:
        g, t = gram(feats[name]), target_grams[name]
        total = total + ((g - t) ** 2).sum(dim=(1, 2)) / (t**2).sum(dim=(1, 2)).clamp_min(1e-12)
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


# ---------------------------------------------------------------------------------------
# Encoders
# ---------------------------------------------------------------------------------------


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


_VGG19_LAYOUT = (64, 64, "P", 128, 128, "P", 256, 256, 256, 256, "P",
                 512, 512, 512, 512, "P", 512, 512, 512, 512, "P")


def _vgg_layer_names(layout: Sequence[int | str]) -> list[str]:
    names, block, conv = [], 1, 0
    for item in layout:
        if item == "P":
            names.append(f"pool{block}")
            block, conv = block + 1, 0
        else:
            conv += 1
            names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
    return names


class VGGEncoder(Encoder):
    """VGG-19 features (ImageNet weights) with average pooling (Gatys et al. 2016).

    Style layers relu1_1…relu5_1, content layer relu4_2; inputs are normalised with the
    ImageNet mean and standard deviation internally.
    """

    name = "vgg19"
    style_layers = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    content_layers = ("relu4_2",)

    def __init__(self, features: nn.Sequential, *, avg_pool: bool = True,
                 softmax: float | None = None) -> None:
        super().__init__()
        names = _vgg_layer_names(_VGG19_LAYOUT)
        last = max(names.index(n) for n in (*self.style_layers, *self.content_layers))
        layers = []
        for i, mod in enumerate(list(features)[: last + 1]):
            if isinstance(mod, nn.MaxPool2d) and avg_pool:
                mod = nn.AvgPool2d(2, 2)
            if isinstance(mod, nn.ReLU):
                mod = nn.ReLU(inplace=False)
            layers.append((names[i], mod))
        self.layers = nn.ModuleDict(layers)
        self.softmax = softmax
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.freeze()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        wanted = set(self.style_layers) | set(self.content_layers)
        out: dict[str, torch.Tensor] = {}
        h = (x - self.mean) / self.std
        for name, mod in self.layers.items():
            if isinstance(mod, nn.AvgPool2d | nn.MaxPool2d) and min(h.shape[-2:]) < 2:
                continue  # tiny inputs keep their size
            h = mod(h)
            if name in wanted:
                out[name] = swag(h, self.softmax) if self.softmax else h
        return out


class RandomEncoder(Encoder):
    """A VGG-style encoder with seeded random weights — needs no download.

    Each block is ``conv3×3 → ReLU`` (``convs`` times) then 2×2 average pooling; the style
    is read after the first ReLU of every block plus the colour statistics of the pixels
    themselves (``"rgb"``, so colour is matched directly), the content after block 3
    (block 4 of a random net keeps too little detail: the result turns to blur; measured
    side by side at 192 px, see the README).
    Filters are drawn from a seeded generator, made zero-mean and scaled to He et al.'s
    (2015) variance so activations neither vanish nor explode with depth. Several seeds
    (``seeds``) give an ensemble of independent random feature sets, which averages out
    the artefacts of any single random basis.
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
                w = torch.randn(conv.weight.shape, generator=gen)
                w = w - w.mean(dim=(1, 2, 3), keepdim=True)
                w = w * math.sqrt(2.0 / (cin * 9)) / w.std(dim=(1, 2, 3), keepdim=True)
                conv.weight.data.copy_(w)
                conv.bias.data.zero_()
                convs_.append(conv)
                cin = cout
            blocks.append(nn.ModuleList(convs_))
        self.blocks = nn.ModuleList(blocks)
        n = len(self.widths)
        self.style_layers = (("rgb",) if pixels else ()) + tuple(f"block{i + 1}" for i in range(n))
        self.content_layers = (f"block{min(3, n)}",)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
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
                    out[f"block{i + 1}"] = swag(h, self.softmax) if self.softmax else h
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
    """The offline encoder: ``n`` differently seeded :class:`RandomEncoder` s."""
    kw = {"widths": widths} if widths else {}
    encs = [RandomEncoder(seed * 1000 + i, softmax=softmax, pixels=(i == 0), **kw)
            for i in range(n)]
    return encs[0] if n == 1 else EnsembleEncoder(encs)


# ---------------------------------------------------------------------------------------
# VGG-19 weights: the torch hub cache, a given file, or a download
# ---------------------------------------------------------------------------------------


def vgg19_weights_path() -> Path:
    """Where torchvision keeps the VGG-19 ImageNet weights (``$TORCH_HOME/hub/checkpoints``)."""
    import torch.hub
    from torchvision.models import VGG19_Weights

    name = os.path.basename(VGG19_Weights.IMAGENET1K_V1.url)
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def _offline() -> bool:
    return os.environ.get("DROPLAB_OFFLINE", "") not in ("", "0", "false", "no")


def download_failed_marker(path: Path) -> Path:
    """The file that remembers a failed download of ``path`` (beside it in the cache)."""
    return path.with_name(path.name + ".droplab-download-failed")


def _remember_failure(marker: Path, reason: str) -> None:
    stamp = datetime.datetime.now().isoformat(timespec="minutes")
    with suppress(OSError):  # a read-only cache just cannot remember (DiskWriteError too)
        atomic_write_bytes(marker, f"{stamp} {reason}\n".encode())


def _marker_reason(marker: Path) -> str:
    try:
        text = marker.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "unknown reason"
    return (text[0][:140] if text else "unknown reason").replace("\n", " ")


def load_vgg19_features(weights: str | Path | None = None, *, download: bool = True,
                        retry: bool = True) -> nn.Sequential:
    """VGG-19 ``features`` with ImageNet weights.

    ``weights`` is a state-dict file for ``torchvision.models.vgg19``; without it the
    weights come through ``VGG19_Weights.IMAGENET1K_V1`` from the torch hub cache, downloaded
    there when ``download`` is true (and ``DROPLAB_OFFLINE`` is unset); the download's
    progress lines go to stderr. A failed download is remembered in a marker file beside
    the cached path (:func:`download_failed_marker`): with ``retry=False`` (``--encoder
    auto``) it is not tried again until that marker is deleted. A missing or unreadable file
    raises :class:`WeightsUnavailable` naming the path to put it at.
    """
    from torchvision.models import VGG19_Weights
    from torchvision.models.vgg import cfgs, make_layers

    url = VGG19_Weights.IMAGENET1K_V1.url
    feature_net = make_layers(cfgs["E"])  # vgg19().features without the 120M-weight head
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise WeightsUnavailable(f"--encoder-weights {path} does not exist; download {url} there")
        try:
            state = read_torch_file(path, what="vgg19 weights",
                                    advice=f"download {url} to {path} again")
        except UnreadableFile as exc:
            raise WeightsUnavailable(str(exc)) from None
    else:
        path = vgg19_weights_path()
        marker = download_failed_marker(path)
        if not path.exists() and (not download or _offline()):
            raise WeightsUnavailable(
                f"vgg19 ImageNet weights are not at {path} (offline); download {url} to that "
                "path or pass --encoder-weights FILE"
            )
        if not path.exists() and not retry and marker.exists():
            raise WeightsUnavailable(
                f"vgg19 ImageNet weights are not at {path}: downloading them failed earlier "
                f"({_marker_reason(marker)}) and is not retried; to retry, delete {marker} "
                "(or pass --encoder vgg19)"
            )
        old_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(20)
        try:
            with third_party_weights():
                state = VGG19_Weights.IMAGENET1K_V1.get_state_dict(progress=False,
                                                                   weights_only=True)
        except Exception as exc:
            reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            if path.exists():
                raise WeightsUnavailable(
                    f"vgg19 weights at {path} cannot be read ({reason}; truncated?); "
                    f"delete it or download {url} to that path again"
                ) from None
            _remember_failure(marker, reason)
            raise WeightsUnavailable(
                f"vgg19 ImageNet weights are not at {path} and could not be downloaded "
                f"({reason}); download {url} to that path or pass --encoder-weights FILE "
                f"(not retried by --encoder auto until {marker} is deleted)"
            ) from None
        finally:
            socket.setdefaulttimeout(old_timeout)
        marker.unlink(missing_ok=True)
    # only the convolutional part is used: a full vgg19 state dict or just its features.*
    features = {k[len("features."):]: v for k, v in state.items()
                if isinstance(k, str) and k.startswith("features.")}
    try:
        if not features:
            raise RuntimeError("no features.* tensors")
        feature_net.load_state_dict(features)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise WeightsUnavailable(
            f"vgg19 weights at {path} do not fit torchvision's vgg19 "
            f"({str(exc).splitlines()[0][:100]}); download {url} to {path}"
        ) from None
    return feature_net


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

    ``auto`` uses VGG-19 when its weights can be had and otherwise the random encoder,
    saying once on stderr which encoder runs and why (unless ``quiet``).
    """
    if name not in ENCODERS:
        raise unknown_name("encoder", name, ENCODERS)
    if name == "random":
        enc = random_encoder(seed, n_random, softmax=softmax)
        return enc, "asked for"
    try:
        features = load_vgg19_features(weights, download=download, retry=name == "vgg19")
        enc = VGGEncoder(features, softmax=softmax)
        return enc, "ImageNet weights"
    except WeightsUnavailable as exc:
        if name == "vgg19":
            raise
        reason = str(exc)
    enc = random_encoder(seed, n_random, softmax=softmax)
    if not quiet:
        print(f"droplab: using the random-weight encoder ({enc.describe()}) because {reason}",
              file=sys.stderr)
    return enc, reason
