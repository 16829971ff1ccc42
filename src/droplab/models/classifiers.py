"""Image classifiers with configurable dropout: ``mlp``, ``lenet``, ``convnet``,
``resnet18-cifar``, ``airbench``/``airbench-res`` (:mod:`droplab.models.airbench`, which
registers itself with :func:`register_model`) and any torchvision classifier as ``tv:<name>``.

Every model has ``forward_features(x)`` (the penultimate features, flat ``(N, D)``) and
``head`` (the final classifier layer), and ``forward(x) = head(dropout(forward_features(x)))``.

Dropout placement (:class:`ModelConfig`):

- ``dropout_where="head"``: before the classifier layer, and (``mlp``) after every hidden
  layer, as in Srivastava et al. (JMLR 2014). Flat features take the element-wise kinds
  ``dropout``, ``gaussian``, ``alpha``, ``concrete``, and ``dropconnect`` (Wan et al. 2013),
  which turns the Linear layers that follow into DropConnect layers instead of inserting a
  module.
- ``dropout_where="conv"``: after every convolutional stage (after its pooling); takes the
  element-wise kinds plus ``spatial`` (Tompson et al. 2015) and ``dropblock`` (Ghiasi et al.
  2018, block size chosen from the stage's map size); ``dropconnect`` wraps every Conv2d.
  For ``resnet18-cifar``, ``droppath`` is stochastic depth (Huang et al. 2016) on every
  residual branch with the linear decay rule (block ``l`` of ``L`` drops with ``p·l/L``).
- ``dropout_where="all"``: both. The map-only kinds (``spatial``, ``dropblock``,
  ``droppath``) mean nothing on a flat vector, so with ``all`` the head gets standard
  dropout at the same rate; with ``head`` alone they are an error.
- ``input_dropout``: element-wise dropout on the (normalised) input (the configured kind
  when it is element-wise, else standard dropout), e.g. 0.2 as in Srivastava et al.

A rate of 0 inserts no module at all.

Why this module is long: the placement rules above are shared by all five builders (and
by :class:`ModelConfig`'s checks); one file keeps every rule next to the code applying it.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from droplab.config import Config, option
from droplab.errors import InvalidValue, WeightsUnavailable, unknown_name
from droplab.fileio import UnreadableFile, UnsafeFile, read_torch_file, third_party_weights
from droplab.layers import KINDS, make_dropout
from droplab.surgery import add_dropconnect, add_dropout

__all__ = [
    "MODELS",
    "WHERE",
    "Classifier",
    "ModelConfig",
    "apply_max_norm",
    "build_model",
    "parse_widths",
    "register_model",
]

MODELS = ("mlp", "lenet", "convnet", "resnet18-cifar", "airbench", "airbench-res", "tv:<name>")
WHERE = ("head", "conv", "all")
#: kinds that act element-wise and so work on flat features
FLAT_KINDS = ("dropout", "gaussian", "alpha", "concrete", "dropconnect")
#: kinds that need feature maps (or residual branches)
MAP_KINDS = ("spatial", "dropblock", "droppath")

DEFAULT_WIDTHS: dict[str, tuple[int, ...]] = {
    "mlp": (800, 800),          # Srivastava et al. 2014 use 2×800 … 3×1024 on MNIST
    "lenet": (32, 64, 128, 256),  # three conv stages + one hidden FC layer
    "convnet": (32, 64, 128),   # VGG-style, two convs per stage
}


def parse_widths(text: str) -> tuple[int, ...]:
    """``--widths`` text: ``800,800`` or ``800x800`` → ``(800, 800)``."""
    parts = [p.strip() for p in text.replace("x", ",").split(",")]
    if not all(p.isdigit() for p in parts):
        raise InvalidValue(f"--widths takes integers like 512,256, got {text!r}")
    return tuple(int(p) for p in parts)


@dataclass
class ModelConfig(Config):
    """What :func:`build_model` builds.

    ``widths``: hidden sizes (``mlp``), conv widths then the FC width (``lenet``) or stage
    widths (``convnet``); ``None`` for the default. ``max_norm``: the max-norm constraint
    (Srivastava et al. 2014) applied at build time; training must re-apply it after every
    step (``TrainConfig.max_norm``, which is also where tasks take it from). ``pretrained``:
    the torchvision weights enum's default (``tv:`` models only). ``weights``: a
    state-dict file (a droplab state dict of the same model, a checkpoint holding one under
    ``"model"``, or for ``tv:`` models a plain torchvision state dict).
    """

    name: str = option("lenet", flag="--model", metavar="NAME",
                       help="classifier: mlp, lenet, convnet, resnet18-cifar, airbench, "
                       "airbench-res or tv:NAME (any torchvision classifier)")
    widths: tuple[int, ...] | None = option(None, ge=1, parse=parse_widths, metavar="W,W,…",
                                            help="layer widths, e.g. 800,800 (mlp) or 32,64,128 "
                                            "(default: the model's own)")
    dropout: float = option(0.0, rate=True, metavar="P",
                            help="drop probability of the main dropout layers")
    dropout_kind: str = option("dropout", choices=tuple(KINDS), what="dropout kind",
                               metavar="KIND", help=f"{', '.join(KINDS)}")
    dropout_where: str = option("head", choices=WHERE, what="dropout placement",
                                help="head (before the classifier and, for mlp, after every "
                                "hidden layer), conv (after every conv stage) or all")
    input_dropout: float = option(0.0, rate=True, metavar="P",
                                  help="drop probability on the input (0.2 in Srivastava et al.)")
    max_norm: float | None = option(None, gt=0, cli=False, help="max-norm cap applied at build")
    pretrained: bool = option(False, help="start tv: models from their weights enum's default "
                              "(torch hub cache, else downloaded)")
    weights: str | None = option(None, cli=False, help="a state-dict file to start from")


# ----------------------------------------------------------------------------- dropout helpers


def _make(kind: str, p: float, **kw: Any) -> nn.Module:
    return make_dropout(kind, p, **kw)


def _flat_kind(cfg: ModelConfig, where: str) -> str:
    """The kind used on flat features for placement ``where`` ('head' or 'input')."""
    kind = cfg.dropout_kind
    if kind in MAP_KINDS:
        if where == "head" and cfg.dropout_where == "head" and cfg.dropout > 0:
            raise InvalidValue(
                f"dropout kind {kind!r} acts on feature maps, not on the flat features before "
                "the head; use --dropout-where conv (or all), or an element-wise kind "
                f"({', '.join(FLAT_KINDS)}) for the head"
            )
        return "dropout"
    if where == "input" and kind == "dropconnect":
        return "dropout"
    return kind


def _flat_drop(cfg: ModelConfig, p: float, where: str = "head") -> nn.Module:
    """A dropout module for flat features, or Identity (p = 0 or DropConnect)."""
    kind = _flat_kind(cfg, where)
    if p == 0 or kind == "dropconnect":
        return nn.Identity()
    return _make(kind, p)


def _linear(cfg: ModelConfig, n_in: int, n_out: int, *, dropped: bool) -> nn.Module:
    """``nn.Linear``, or a DropConnect linear layer when that is the configured kind."""
    if dropped and cfg.dropout > 0 and cfg.dropout_kind == "dropconnect":
        return _make("dropconnect", cfg.dropout, in_features=n_in, out_features=n_out)
    return nn.Linear(n_in, n_out)


def _head_on(cfg: ModelConfig) -> bool:
    return cfg.dropout > 0 and cfg.dropout_where in ("head", "all")


def _conv_on(cfg: ModelConfig) -> bool:
    return cfg.dropout > 0 and cfg.dropout_where in ("conv", "all")


def _block_size(size: int) -> int:
    """DropBlock block size for a ``size``-pixel map: ≈ a third of it, 1..7 (7 as in
    Ghiasi et al. for 14- and 28-pixel maps)."""
    return max(1, min(7, (size + 2) // 3))


def _map_drop(cfg: ModelConfig, size: int) -> nn.Module:
    """Dropout after a conv stage whose output maps are ``size`` pixels wide."""
    if not _conv_on(cfg) or cfg.dropout_kind == "dropconnect":
        return nn.Identity()
    kind = cfg.dropout_kind
    if kind == "droppath":
        raise InvalidValue(
            "dropout kind 'droppath' (stochastic depth) drops residual branches; use it with "
            "--model resnet18-cifar, or pick spatial/dropblock/dropout for conv stages"
        )
    if kind == "dropblock":
        return _make(kind, cfg.dropout, block_size=_block_size(size))
    return _make(kind, cfg.dropout)


def _wrap_convs(model: nn.Module, cfg: ModelConfig) -> None:
    """DropConnect on every Conv2d (conv placement with ``dropout_kind="dropconnect"``)."""
    if _conv_on(cfg) and cfg.dropout_kind == "dropconnect":
        add_dropconnect(model, cfg.dropout, where=nn.Conv2d)


# ----------------------------------------------------------------------------- models


class Classifier(nn.Module, abc.ABC):
    """Base: ``forward(x) = head(head_drop(forward_features(x)))``."""

    head: nn.Module
    head_drop: nn.Module

    @abc.abstractmethod
    def forward_features(self, x: Tensor) -> Tensor:
        """The penultimate features, flat ``(N, D)``."""

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.head_drop(self.forward_features(x)))


class MLP(Classifier):
    """Fully connected ReLU network (Srivastava et al. 2014's MNIST nets: 2×800 default)."""

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, cfg: ModelConfig) -> None:
        super().__init__()
        widths = cfg.widths or DEFAULT_WIDTHS["mlp"]
        if cfg.dropout_where == "conv" and cfg.dropout > 0:
            raise InvalidValue("mlp has no conv layers; use --dropout-where head (or all)")
        on = _head_on(cfg)
        layers: list[nn.Module] = [nn.Flatten(), _flat_drop(cfg, cfg.input_dropout, "input")]
        n = math.prod(in_shape)
        for i, w in enumerate(widths):
            # DropConnect replaces the layer; dropout follows the previous hidden layer
            layers += [_linear(cfg, n, w, dropped=on and i > 0), nn.ReLU(inplace=True)]
            if i < len(widths) - 1:
                layers.append(_flat_drop(cfg, cfg.dropout if on else 0.0))
            n = w
        self.features = nn.Sequential(*layers)
        self.head_drop = _flat_drop(cfg, cfg.dropout if on else 0.0)
        self.head = _linear(cfg, n, num_classes, dropped=on)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)


def _cbr(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True)]


class LeNet(Classifier):
    """A small BatchNorm conv net for 8- to 32-pixel images (LeCun et al. 1998 in spirit).

    Stages ``conv3×3-BN-ReLU-maxpool`` of widths ``widths[:-1]`` (default 32, 64, 128),
    then a hidden FC layer of ``widths[-1]`` (256) units with BN and ReLU (the
    penultimate features), then the head. Pooling rounds up, so 8×8 digits work.
    """

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, cfg: ModelConfig) -> None:
        super().__init__()
        widths = cfg.widths or DEFAULT_WIDTHS["lenet"]
        if len(widths) < 2:
            raise InvalidValue("lenet widths are conv widths then the FC width, e.g. 32,64,128,256")
        c, h, _ = in_shape
        layers: list[nn.Module] = [_flat_drop(cfg, cfg.input_dropout, "input")]
        size = h
        for w in widths[:-1]:
            size = math.ceil(size / 2)
            layers += [*_cbr(c, w), nn.MaxPool2d(2, ceil_mode=True), _map_drop(cfg, size)]
            c = w
        self.conv = nn.Sequential(*layers)
        _wrap_convs(self.conv, cfg)
        n = c * size * math.ceil(in_shape[2] / 2 ** (len(widths) - 1))
        on = _head_on(cfg)
        self.fc = nn.Sequential(nn.Flatten(), _linear(cfg, n, widths[-1], dropped=False),
                                nn.BatchNorm1d(widths[-1]), nn.ReLU(inplace=True))
        self.head_drop = _flat_drop(cfg, cfg.dropout if on else 0.0)
        self.head = _linear(cfg, widths[-1], num_classes, dropped=on)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.fc(self.conv(x))


class ConvNet(Classifier):
    """VGG-style BatchNorm conv net for 32-pixel colour images (Simonyan & Zisserman 2015).

    Per stage of width ``w`` (default 32, 64, 128): two ``conv3×3-BN-ReLU``, a 2×2 max-pool
    and (conv placement) a dropout layer; then global average pooling (any input size,
    8×8 digits included) gives the penultimate features, then the head.
    """

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, cfg: ModelConfig) -> None:
        super().__init__()
        widths = cfg.widths or DEFAULT_WIDTHS["convnet"]
        c, size = in_shape[0], in_shape[1]
        layers: list[nn.Module] = [_flat_drop(cfg, cfg.input_dropout, "input")]
        for w in widths:
            size = math.ceil(size / 2)
            layers += [*_cbr(c, w), *_cbr(w, w), nn.MaxPool2d(2, ceil_mode=True),
                       _map_drop(cfg, size)]
            c = w
        self.conv = nn.Sequential(*layers)
        _wrap_convs(self.conv, cfg)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        on = _head_on(cfg)
        self.head_drop = _flat_drop(cfg, cfg.dropout if on else 0.0)
        self.head = _linear(cfg, c, num_classes, dropped=on)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.pool(self.conv(x))


class TorchvisionClassifier(Classifier):
    """A torchvision network whose final Linear layer is moved out to ``.head``.

    ``net`` computes the penultimate features (its head slot is ``nn.Identity``); 1-channel
    inputs are repeated to 3 channels when the network expects colour.
    """

    def __init__(self, net: nn.Module, head_name: str, num_classes: int, in_channels: int,
                 grey_to_rgb: bool = False) -> None:
        super().__init__()
        old = net.get_submodule(head_name)
        assert isinstance(old, nn.Linear)
        parent, _, leaf = head_name.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, leaf, nn.Identity())
        self.net = net
        self.head_name = head_name
        self.grey_to_rgb = grey_to_rgb
        self.input_drop: nn.Module = nn.Identity()
        self.head_drop = nn.Identity()
        self.head = nn.Linear(old.in_features, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        if self.grey_to_rgb and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        out = self.net(self.input_drop(x))
        if hasattr(out, "logits"):  # GoogLeNet / Inception outputs in training mode
            out = out.logits
        return torch.flatten(out, 1)


def _resnet18_cifar(in_shape: tuple[int, int, int], num_classes: int,
                    cfg: ModelConfig) -> TorchvisionClassifier:
    """ResNet-18 for 32-pixel images (He et al. 2016): 3×3 stride-1 stem, no max-pool."""
    from torchvision.models import resnet18

    if cfg.widths is not None:
        raise InvalidValue("resnet18-cifar has fixed widths (64, 128, 256, 512); drop --widths")
    net = resnet18(weights=None)
    net.conv1 = nn.Conv2d(in_shape[0], 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    if _conv_on(cfg):
        blocks = [b for layer in (net.layer1, net.layer2, net.layer3, net.layer4) for b in layer]
        if cfg.dropout_kind == "droppath":  # Huang et al. 2016 linear decay
            for i, b in enumerate(blocks, 1):
                b.bn2 = nn.Sequential(b.bn2, _make("droppath", cfg.dropout * i / len(blocks)))
        elif cfg.dropout_kind == "dropconnect":
            _wrap_convs(net, cfg)
        else:  # after every stage; the stages' maps are 32, 16, 8, 4 px for 32-px inputs
            size = in_shape[1]
            for name in ("layer1", "layer2", "layer3", "layer4"):
                layer = getattr(net, name)
                size = size if name == "layer1" else math.ceil(size / 2)
                setattr(net, name, nn.Sequential(layer, _map_drop(cfg, size)))
    model = TorchvisionClassifier(net, "fc", num_classes, in_shape[0])
    model.input_drop = _flat_drop(cfg, cfg.input_dropout, "input")
    if _head_on(cfg):
        model.head_drop = _flat_drop(cfg, cfg.dropout)
        if cfg.dropout_kind == "dropconnect":
            model.head = _linear(cfg, model.head.in_features, num_classes, dropped=True)
    return model


def _last_linear(net: nn.Module) -> str | None:
    names = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else None


def _tv_model(name: str, in_shape: tuple[int, int, int], num_classes: int,
              cfg: ModelConfig) -> TorchvisionClassifier:
    """``tv:<name>``: torchvision's classifier with a new head and surgery-placed dropout."""
    import torchvision.models as tvm

    valid = tvm.list_models(module=tvm)
    if name not in valid:
        raise unknown_name("torchvision classifier", f"tv:{name}", [f"tv:{v}" for v in valid])
    if cfg.widths is not None:
        raise InvalidValue(f"tv:{name} has fixed widths; drop --widths")
    if cfg.dropout > 0 and cfg.dropout_where != "head":
        raise InvalidValue(
            f"tv:{name} supports --dropout-where head only; place other dropout with "
            "droplab.surgery.add_dropout(model, after=...)"
        )
    if cfg.dropout > 0 and cfg.dropout_kind in MAP_KINDS:
        _flat_kind(cfg, "head")  # raises the map-kind error
    kwargs: dict[str, Any] = {}
    if name in ("googlenet", "inception_v3"):
        kwargs["aux_logits"] = False
        kwargs["init_weights"] = True
    weights = None
    if cfg.pretrained:
        weights = tvm.get_model_weights(name).DEFAULT
        kwargs.pop("init_weights", None)
        kwargs.pop("aux_logits", None)
    try:
        with third_party_weights():  # the hub cache is a file like any other: never run it
            net = tvm.get_model(name, weights=weights, **kwargs)
    except (OSError, RuntimeError, ValueError, pickle.UnpicklingError) as e:  # URLError: OSError
        if weights is None:
            raise
        from torch.hub import get_dir

        file = weights.url.rsplit("/", 1)[-1]
        where = Path(get_dir()) / "checkpoints" / file
        if isinstance(e, pickle.UnpicklingError):
            raise UnsafeFile(
                f"refused to load the cached weights {where}: the file asks to run code, which "
                f"weights never do; nothing in it was run. Delete it to download {file} again"
            ) from None
        reason = str(e).splitlines()[0][:100] if str(e) else type(e).__name__
        raise WeightsUnavailable(
            f"pretrained weights for tv:{name} are not cached and could not be downloaded "
            f"({reason}); put {file} (from {weights.url}) at {where}, or drop --pretrained"
        ) from None
    if hasattr(net, "aux_logits") and getattr(net, "AuxLogits", None) is not None:
        net.aux_logits, net.AuxLogits = False, None
    if hasattr(net, "aux1"):
        net.aux_logits, net.aux1, net.aux2 = False, None, None
    sd = _read_weights(cfg.weights) if cfg.weights else None
    if sd is not None and not any(k.startswith("net.") for k in sd):
        _load(net, sd, f"tv:{name}")  # a plain torchvision state dict
        sd = None
    head = _last_linear(net)
    if head is None:
        raise InvalidValue(
            f"tv:{name} has no final Linear layer; droplab supports torchvision classifiers "
            "that end in one (resnet*, vgg*, mobilenet*, efficientnet*, convnext*, vit*, …)"
        )
    channels = _conv_in_channels(net)
    if in_shape[0] not in (channels, 1) and channels is not None:
        raise InvalidValue(
            f"tv:{name} expects {channels}-channel images, the data has {in_shape[0]}"
        )
    model = TorchvisionClassifier(net, head, num_classes, in_shape[0],
                                  grey_to_rgb=in_shape[0] == 1 and channels == 3)
    model.input_drop = _flat_drop(cfg, cfg.input_dropout, "input")
    if cfg.dropout > 0:
        if cfg.dropout_kind == "dropconnect":
            add_dropconnect(model, cfg.dropout, where="head")
        else:
            add_dropout(model, after="head", kind=cfg.dropout_kind, p=cfg.dropout)
    if sd is not None:
        _load(model, sd, f"tv:{name}")
    return model


def _conv_in_channels(net: nn.Module) -> int | None:
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    return None


# ----------------------------------------------------------------------------- weights


def _read_weights(path: str) -> dict[str, Tensor]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsUnavailable(f"weights file {p} does not exist; pass a state-dict file (.pt)")
    try:
        obj = read_torch_file(p, what="weights file", advice="pass a torch state dict (.pt)")
    except UnreadableFile as e:
        raise WeightsUnavailable(str(e)) from None
    for key in ("model", "state_dict", "model_state"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise WeightsUnavailable(f"weights file {p} holds no state dict of tensors")
    return obj


def _load(model: nn.Module, sd: dict[str, Tensor], what: str) -> None:
    """Load ``sd`` strictly, except that head tensors of another shape (a different class
    count) are skipped with a warning, so a model can start from another task's weights."""
    own = model.state_dict()
    skipped = [k for k, v in sd.items() if k in own and own[k].shape != v.shape]
    if skipped and not all(k.startswith(("head", "fc", "classifier")) for k in skipped):
        raise InvalidValue(
            f"weights do not fit {what}: {len(skipped)} tensors have other shapes "
            f"(first: {skipped[0]}); were they saved from another model or width?"
        )
    sd = {k: v for k, v in sd.items() if k not in skipped}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if k not in skipped]
    if missing or unexpected:
        first = (missing or unexpected)[0]
        raise InvalidValue(
            f"weights do not fit {what}: {len(missing)} missing and {len(unexpected)} "
            f"unexpected tensors (first: {first}); were they saved from another model?"
        )
    if skipped:
        warnings.warn(f"weights: kept the new {', '.join(skipped)} (other class count)",
                      stacklevel=3)


# ----------------------------------------------------------------------------- public API

_BUILDERS: dict[str, Callable[[tuple[int, int, int], int, ModelConfig], nn.Module]] = {
    "mlp": MLP,
    "lenet": LeNet,
    "convnet": ConvNet,
    "resnet18-cifar": _resnet18_cifar,
}


def register_model(name: str,
                   builder: Callable[[tuple[int, int, int], int, ModelConfig], nn.Module]) -> None:
    """Add ``builder(in_shape, num_classes, cfg)`` to the zoo as ``name`` (for model modules
    that build on the helpers here, e.g. :mod:`droplab.models.airbench`)."""
    _BUILDERS[name] = builder


def build_model(cfg: ModelConfig, in_shape: tuple[int, int, int] | list[int],
                num_classes: int) -> nn.Module:
    """Build the classifier ``cfg.name`` for ``(C, H, W)`` images and ``num_classes``.

    Unknown names, bad placements and unusable weights raise one-line
    :class:`~droplab.errors.UserError`\\ s.
    """
    if isinstance(cfg, dict):
        cfg = ModelConfig(**{k: v for k, v in cfg.items()
                             if k in {f.name for f in dataclasses.fields(ModelConfig)}})
    shape = tuple(int(s) for s in in_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise InvalidValue(f"in_shape must be (C, H, W), got {in_shape!r}")
    if int(num_classes) < 2:
        raise InvalidValue(f"a classifier needs at least 2 classes, got {num_classes}")
    name = cfg.name
    if name.startswith("tv:"):
        model = _tv_model(name[3:], shape, int(num_classes), cfg)
        _check_forward(model, shape, name)  # own models fit any size by construction
    else:
        if name not in _BUILDERS:
            raise unknown_name("model", name, MODELS)
        if cfg.pretrained:
            raise InvalidValue(f"--pretrained is for tv:<name> models; {name} has no pretrained weights")
        model = _BUILDERS[name](shape, int(num_classes), cfg)
        if cfg.weights:
            _load(model, _read_weights(cfg.weights), name)
    if cfg.max_norm is not None:
        apply_max_norm(model, cfg.max_norm)
    return model


def _check_forward(model: nn.Module, shape: tuple[int, int, int], name: str) -> None:
    """One dummy eval forward pass, turning shape errors into one-line user errors."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *shape))
    except RuntimeError as e:
        raise InvalidValue(
            f"model {name} cannot take {shape[0]}×{shape[1]}×{shape[2]} images "
            f"({str(e).splitlines()[0][:100]}); use --image-size or another model"
        ) from None
    finally:
        model.train(was)


@torch.no_grad()
def apply_max_norm(model: nn.Module, c: float) -> None:
    """Max-norm constraint (Srivastava et al. 2014, §5.1): rescale every unit's incoming
    weight vector so its L2 norm is at most ``c``.

    Applies to the weight of every Linear and Conv layer (incl. DropConnect wrappers):
    rows of ``(out, in)`` matrices and whole ``(in, kh, kw)`` filters of convolutions.
    Call it after each optimiser step.
    """
    if not c > 0:
        raise InvalidValue(f"max-norm must be positive (e.g. 3 or 4), got {c!r}")
    seen: set[int] = set()
    for m in model.modules():
        w = getattr(m, "weight", None)
        if not isinstance(w, Tensor) or w.dim() < 2 or id(w) in seen:
            continue
        if isinstance(m, nn.Embedding):
            continue
        seen.add(id(w))
        w.copy_(torch.renorm(w, 2, 0, c))
