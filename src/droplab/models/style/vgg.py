"""VGG-19 with ImageNet weights as a perceptual encoder (Gatys et al. 2016, "Image style
transfer using convolutional neural networks"): torchvision's layers, max-pooling replaced
by average pooling as Gatys et al. recommend; the weights come from the torch hub cache, a
given file, or a download (never needed: the offline encoders are in :mod:`.encoders`)."""

from __future__ import annotations

import datetime
import os
import socket
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path

import torch
import torch.hub
from torch import nn
from torchvision.models import VGG19_Weights
from torchvision.models.vgg import cfgs, make_layers

from droplab.errors import WeightsUnavailable
from droplab.fileio import (
    UnreadableFile,
    atomic_write_bytes,
    read_torch_file,
    third_party_weights,
)
from droplab.models.style.encoders import IMAGENET_MEAN, IMAGENET_STD, Encoder, norm_buffers

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
        norm_buffers(self, IMAGENET_MEAN, IMAGENET_STD)
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
                out[name] = self._read(h)
        return out


def vgg19_weights_path() -> Path:
    """Where torchvision keeps the VGG-19 ImageNet weights (``$TORCH_HOME/hub/checkpoints``)."""
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
