"""Transfer-learning networks: a backbone's feature extractor and a fresh dropout head.

:class:`FinetuneNet` is what ``droplab finetune`` trains and what
:func:`droplab.runs.restore.load_run` rebuilds from a finetune run folder. The backbone
(a :class:`Source`) is a droplab classifier (anything with ``forward_features``), a
torchvision classifier (:func:`backbone_source` ``tv:NAME``) or a timm model
(``timm:NAME``); :func:`assemble` puts source and head together from a
:class:`TransferSpec` — the architecture options a run's ``config.json`` stores, so a run
can be rebuilt without its training code and without downloading weights (its checkpoint
holds them).

The head is ``Dropout → Linear`` or ``Dropout → Linear → ReLU → Dropout → Linear``;
``stages`` lists the backbone's parameterised blocks from input to output, the units of
gradual unfreezing (fastai's ``fine_tune``, Lightning's ``BackboneFinetuning``) and of
discriminative learning rates (Howard & Ruder 2018, ULMFiT: stage ``i`` from the top gets
``lr * lr_decay**i``).
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from droplab import surgery
from droplab.config import Config, option
from droplab.errors import InvalidValue, UserError, WeightsUnavailable
from droplab.fileio import UnsafeFile, third_party_weights
from droplab.layers import KINDS, make_dropout
from droplab.models.classifiers import ModelConfig, build_model

#: ImageNet statistics used with torchvision / timm weights
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FinetuneNet(nn.Module):
    """A backbone's feature extractor followed by a fresh dropout head.

    ``stages`` lists the backbone's parameterised blocks from input to output; they are
    the units of gradual unfreezing and discriminative learning rates.
    """

    def __init__(
        self,
        source: nn.Module,
        num_features: int,
        num_classes: int,
        *,
        dropout: float,
        dropout_kind: str = "dropout",
        hidden: int | None = None,
        in_channels: int | None = None,
        source_channels: int | None = None,
        freeze_bn: bool = False,
        max_stages: int = 4,
    ) -> None:
        super().__init__()
        self.source = source
        if hasattr(source, "head"):
            source.head = nn.Identity()
        self.adapter: nn.Module = nn.Identity()
        if in_channels is not None and source_channels is not None and in_channels != source_channels:
            if in_channels == 1 and source_channels == 3:
                self.adapter = _RepeatChannels(3)
            else:
                raise InvalidValue(
                    f"the backbone expects {source_channels}-channel images but the dataset "
                    f"has {in_channels}; pick a dataset or backbone that match"
                )
        layers: list[nn.Module] = [make_dropout(dropout_kind, dropout)]
        if hidden:
            layers += [nn.Linear(num_features, hidden), nn.ReLU(inplace=True),
                       make_dropout(dropout_kind, dropout)]
            layers.append(nn.Linear(hidden, num_classes))
        else:
            layers.append(nn.Linear(num_features, num_classes))
        self.head = nn.Sequential(*layers)
        self.freeze_bn = freeze_bn
        self.stages = _stages(source, max_stages)
        self.lr_scales: list[float] = [1.0] * len(self.stages)

    def forward_features(self, x: Tensor) -> Tensor:
        return torch.flatten(self.source.forward_features(self.adapter(x)), 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))

    def train(self, mode: bool = True) -> FinetuneNet:
        super().train(mode)
        if mode and self.freeze_bn:
            for m in self.source.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def lr_groups(self) -> list[tuple[list[nn.Parameter], float]]:
        """Parameter groups with learning-rate multipliers (head 1, stage i from the top
        ``lr_decay**(i+1)``), read by the engine's optimiser factory."""
        groups: list[tuple[list[nn.Parameter], float]] = [(list(self.head.parameters()), 1.0)]
        seen = {id(p) for p in self.head.parameters()}
        for stage, scale in zip(self.stages, self.lr_scales):
            params = [p for p in stage.parameters() if id(p) not in seen]
            seen.update(id(p) for p in params)
            if params:
                groups.append((params, scale))
        rest = [p for p in self.parameters() if id(p) not in seen]
        if rest:
            groups.append((rest, self.lr_scales[-1] if self.lr_scales else 1.0))
        return groups

    def set_trainable_stages(self, n: int | None) -> None:
        """Train the head and the top ``n`` stages (``None``: everything)."""
        for p in self.source.parameters():
            p.requires_grad_(n is None)
        if n is not None:
            for stage in self.stages[len(self.stages) - n:] if n > 0 else []:
                for p in stage.parameters():
                    p.requires_grad_(True)
        for p in self.head.parameters():
            p.requires_grad_(True)


class _RepeatChannels(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def forward(self, x: Tensor) -> Tensor:
        return x.expand(-1, self.n, *x.shape[2:])


def _stages(source: nn.Module, max_stages: int) -> list[nn.Module]:
    """The source's parameterised top-level blocks (descending into a lone container),
    grouped into at most ``max_stages`` consecutive stages."""
    blocks = [m for name, m in source.named_children() if name != "head" and _has_params(m)]
    while len(blocks) == 1 and len(list(blocks[0].children())) > 1:
        blocks = [m for m in blocks[0].children() if _has_params(m)]
    if not blocks:
        return []
    k = min(max_stages, len(blocks))
    size = -(-len(blocks) // k)
    return [nn.ModuleList(blocks[i: i + size]) for i in range(0, len(blocks), size)]


def _has_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters())


class TimmFeatures(nn.Module):
    """A timm model built with ``num_classes=0``: its output is the pooled features."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward_features(self, x: Tensor) -> Tensor:
        return self.model(x)


# -- sources and the spec --------------------------------------------------------------------


@dataclass
class Source:
    """A backbone with what feeding it needs (``in_shape`` ``None``: any size)."""

    model: nn.Module
    num_features: int
    in_shape: tuple[int, int, int] | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    description: str


@dataclass
class TransferSpec(Config):
    """The architecture options of a finetune run (stored in its ``config.json``), declared
    once: ``droplab finetune``'s head section extends this class with the strategy."""

    dropout: float = option(0.5, rate=True, metavar="P", help="head dropout rate")
    dropout_kind: str = option("dropout", choices=tuple(KINDS), what="dropout kind",
                               metavar="KIND", help="dropout kind of the head")
    hidden: int | None = option(None, ge=1, metavar="H", help="hidden width of the head")
    drop_path: float = option(0.0, rate=True, metavar="P",
                              help="stochastic depth on the backbone's residual branches, "
                              "block l of L at P·l/L")
    dropblock: float = option(0.0, rate=True, metavar="P",
                              help="add DropBlock after the backbone's convolutions")
    freeze_bn: bool = option(False, help="keep the backbone's BatchNorm in eval mode")
    lr_decay: float = option(0.3, gt=0, le=1, metavar="F",
                             help="learning-rate factor per stage going down (discriminative "
                             "learning rates)")
    max_stages: int = option(4, ge=1, help="backbone stages for unfreezing and LR decay")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TransferSpec:
        """The spec's fields out of a flat run config (other keys are ignored)."""
        return cls(**{f.name: config[f.name] for f in fields(TransferSpec) if f.name in config})

    def spec(self) -> TransferSpec:
        """Only the architecture fields (drops what a subclass adds)."""
        return TransferSpec(**{f.name: getattr(self, f.name) for f in fields(TransferSpec)})


def feature_dim(model: nn.Module, in_shape: tuple[int, ...]) -> int:
    """Length of ``model.forward_features`` for one input of ``in_shape`` (eval mode)."""
    was = model.training
    model.eval()
    with torch.no_grad():
        f = model.forward_features(torch.zeros(1, *in_shape))
    model.train(was)
    return int(torch.flatten(f, 1).shape[1])


def backbone_source(backbone: str, weights: str | None = "DEFAULT", *,
                    pretrained: bool = True, drop_path: float = 0.0) -> Source:
    """A torchvision (``tv:NAME``) or timm (``timm:NAME``) backbone.

    ``weights`` is ``"DEFAULT"`` (the weights enum's default / timm's pretrained tag), a
    state-dict path (torchvision) or ``None``; ``pretrained=False`` builds the same
    architecture randomly initialised and never touches the network or the cache.
    ``drop_path`` goes to ``timm.create_model(drop_path_rate=…)`` (timm's own route to
    stochastic depth; torchvision backbones get it in :func:`assemble`).
    """
    kind, _, name = backbone.partition(":")
    if kind == "tv" and name:
        w = weights if pretrained else None
        mcfg = ModelConfig(name=f"tv:{name}", pretrained=w == "DEFAULT",
                           weights=None if w in (None, "DEFAULT") else w)
        model = build_model(mcfg, (3, 224, 224), 1000)
        return Source(model, feature_dim(model, (3, 64, 64)), None, IMAGENET_MEAN,
                      IMAGENET_STD, f"torchvision {name} ({w or 'random init'})")
    if kind == "timm" and name:
        try:  # timm is optional: deferred so droplab imports without it
            import timm
        except ImportError:
            raise UserError("--backbone timm:… needs timm: pip install timm") from None
        try:
            with third_party_weights():  # cached hub files are read, never run
                net = timm.create_model(name, pretrained=pretrained and weights is not None,
                                        num_classes=0, drop_path_rate=drop_path)
        except pickle.UnpicklingError:
            raise UnsafeFile(f"refused to load the cached timm weights for {name!r}: the file "
                             "asks to run code; nothing in it was run. Delete it from the "
                             "torch hub / Hugging Face cache to download it again") from None
        except RuntimeError as exc:
            raise UserError(f"timm could not create {name!r}: {str(exc).splitlines()[0]}") from None
        except Exception as exc:  # hub download failed (offline)
            raise WeightsUnavailable(
                f"timm weights for {name!r} are not cached and cannot be downloaded "
                f"({exc.__class__.__name__}); run once online or pass --weights none"
            ) from None
        return Source(TimmFeatures(net), int(net.num_features), None, IMAGENET_MEAN,
                      IMAGENET_STD, f"timm {name}")
    raise InvalidValue(f"--backbone must be tv:NAME or timm:NAME, got {backbone!r}")


def assemble(src: Source, spec: TransferSpec, num_classes: int, in_shape: tuple[int, ...],
             dataset: str = "the dataset") -> FinetuneNet:
    """``src`` plus a dropout head for ``num_classes`` classes of ``in_shape`` images.

    Stochastic depth on the residual branches (:func:`droplab.surgery.add_stochastic_depth`,
    the linear depth rule) and DropBlock after every convolution are added inside the
    backbone through :mod:`droplab.surgery` when the spec asks for them.
    """
    if src.in_shape is not None and tuple(src.in_shape[1:]) != tuple(in_shape[1:]):
        raise InvalidValue(
            f"the source run was trained on {src.in_shape[1]}×{src.in_shape[2]} images but "
            f"{dataset} has {in_shape[1]}×{in_shape[2]}; pass --image-size "
            f"{src.in_shape[1]}"
        )
    model = FinetuneNet(
        src.model, src.num_features, num_classes, dropout=spec.dropout,
        dropout_kind=spec.dropout_kind, hidden=spec.hidden, in_channels=in_shape[0],
        source_channels=src.in_shape[0] if src.in_shape else 3, freeze_bn=spec.freeze_bn,
        max_stages=spec.max_stages,
    )
    if spec.drop_path > 0 or spec.dropblock > 0:
        if spec.drop_path > 0:
            surgery.add_stochastic_depth(model.source, spec.drop_path)
        if spec.dropblock > 0:
            surgery.add_dropout(model.source, after=nn.Conv2d, kind="dropblock",
                                p=spec.dropblock)
    n = len(model.stages)
    model.lr_scales = [spec.lr_decay ** (n - i) for i in range(n)]  # top stage: lr_decay
    return model


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "FinetuneNet", "Source", "TimmFeatures",
           "TransferSpec", "assemble", "backbone_source", "feature_dim"]
