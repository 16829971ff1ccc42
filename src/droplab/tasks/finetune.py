"""Transfer learning with a dropout head: ``droplab finetune``.

A pretrained backbone (a torchvision classifier with its weights enum, a timm model, or a
droplab run folder) keeps its feature extractor; its classifier is replaced by a dropout
head (``Dropout → Linear`` or ``Dropout → Linear → ReLU → Dropout → Linear``). Strategies:

- ``linear-probe``: only the head trains;
- ``full``: everything trains, with discriminative learning rates (stage ``i`` from the
  top gets ``lr * lr_decay**i``; Howard & Ruder 2018, ULMFiT);
- ``gradual``: the head trains first, then one more backbone stage is unfrozen from the
  top every ``epochs / (stages + 1)`` epochs (fastai's ``fine_tune`` / Lightning's
  ``BackboneFinetuning``), with the same discriminative learning rates;
- ``scratch``: the same architecture from random weights, everything trains (the baseline
  transfer has to beat).

``freeze_bn`` keeps the backbone's BatchNorm statistics fixed (eval mode) while training,
the usual choice when the target set is small. DropPath / DropBlock can be added inside
the backbone through :mod:`droplab.surgery` (``drop_path``, ``dropblock``).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor, nn

from droplab import data as D
from droplab.errors import InvalidValue, UserError, check_rate, unknown_name
from droplab.layers import make_dropout
from droplab.runs import RunDir
from droplab.runtime import resolve_device, seed_everything

STRATEGIES = ("linear-probe", "full", "gradual", "scratch")
#: fine-tuning default learning rates (a fresh head on few labels wants a larger AdamW
#: step than training from scratch; 3e-3 beat 1e-3 for every strategy on digits 5-9)
DEFAULT_LR = {"adamw": 3e-3, "sgd": 0.05}
#: ImageNet statistics used with torchvision / timm weights
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class FinetuneConfig:
    """Options of :func:`run`. Exactly one of ``from_run`` and ``backbone`` is set.

    ``backbone`` is ``tv:<torchvision name>`` or ``timm:<timm name>``; ``weights`` is
    ``"DEFAULT"`` (the weights enum's default, from the torch hub cache or downloaded), a
    path to a state dict, or ``None`` (random init). ``labels_per_class`` samples a balanced, seeded training
    subset of the target set.
    """

    dataset: str = "digits"
    data_root: str | None = None
    classes: list[str] | None = None
    image_size: int | None = None
    labels_per_class: int | None = None
    from_run: str | None = None
    backbone: str | None = None
    weights: str | None = "DEFAULT"
    strategy: str = "gradual"
    dropout: float = 0.5
    dropout_kind: str = "dropout"
    hidden: int | None = None
    drop_path: float = 0.0
    dropblock: float = 0.0
    freeze_bn: bool = False
    lr_decay: float = 0.3
    max_stages: int = 4
    epochs: int = 6
    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float | None = None
    weight_decay: float | None = None
    lr_schedule: str = "cosine"
    label_smoothing: float = 0.0
    val_fraction: float = 0.1
    augment: str = "auto"
    seed: int = 0
    device: str = "auto"
    out: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if (self.from_run is None) == (self.backbone is None):
            raise InvalidValue(
                "give exactly one pretrained source: --from RUN (a droplab run folder) "
                "or --backbone tv:NAME / timm:NAME"
            )
        if self.strategy not in STRATEGIES:
            raise unknown_name("strategy", self.strategy, STRATEGIES)
        check_rate(self.dropout, "dropout")
        check_rate(self.drop_path, "drop-path")
        check_rate(self.dropblock, "dropblock")
        if not 0.0 < self.lr_decay <= 1.0:
            raise InvalidValue(f"--lr-decay must be in (0, 1], got {self.lr_decay}")
        if self.labels_per_class is not None and self.labels_per_class < 1:
            raise InvalidValue("--labels-per-class must be a positive integer")
        if self.epochs < 1:
            raise InvalidValue("--epochs must be at least 1")


# -- the model -----------------------------------------------------------------------------


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
        ``lr_decay**(i+1)``), read by :func:`droplab.train.make_optimizer`."""
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


class _TimmSource(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward_features(self, x: Tensor) -> Tensor:
        return self.model(x)  # timm with num_classes=0 returns pooled features


# -- building the source ---------------------------------------------------------------------


@dataclass
class Source:
    model: nn.Module
    num_features: int
    in_shape: tuple[int, int, int] | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    description: str


def load_source(cfg: FinetuneConfig, pretrained: bool = True) -> Source:
    """Build the pretrained (or, with ``pretrained=False``, freshly initialised) source."""
    if cfg.from_run:
        from droplab.tasks.classify import load_run

        loaded = load_run(cfg.from_run, device="cpu")
        model = loaded.model
        if not pretrained:
            model = copy.deepcopy(model)
            for m in model.modules():
                if hasattr(m, "reset_parameters") and m is not model:
                    m.reset_parameters()
        feats = _feature_dim(model, loaded.in_shape)
        return Source(model, feats, tuple(loaded.in_shape), tuple(loaded.mean),
                      tuple(loaded.std), f"run {cfg.from_run}")
    assert cfg.backbone is not None
    kind, _, name = cfg.backbone.partition(":")
    if kind == "tv" and name:
        from droplab.models import ModelConfig, build_model

        weights = cfg.weights if pretrained else None
        mcfg = ModelConfig(name=f"tv:{name}", pretrained=weights == "DEFAULT",
                           weights=None if weights in (None, "DEFAULT") else weights)
        model = build_model(mcfg, (3, 224, 224), 1000)
        return Source(model, _feature_dim(model, (3, 64, 64)), None, IMAGENET_MEAN,
                      IMAGENET_STD, f"torchvision {name} ({weights or 'random init'})")
    if kind == "timm" and name:
        try:
            import timm
        except ImportError:
            raise UserError("--backbone timm:… needs timm: pip install timm") from None
        try:
            net = timm.create_model(name, pretrained=pretrained and cfg.weights is not None,
                                    num_classes=0)
        except RuntimeError as exc:
            raise UserError(f"timm could not create {name!r}: {str(exc).splitlines()[0]}") from None
        except Exception as exc:  # hub download failed (offline)
            from droplab.errors import WeightsUnavailable

            raise WeightsUnavailable(
                f"timm weights for {name!r} are not cached and cannot be downloaded "
                f"({exc.__class__.__name__}); run once online or pass --weights none"
            ) from None
        source = _TimmSource(net)
        return Source(source, int(net.num_features), None, IMAGENET_MEAN, IMAGENET_STD,
                      f"timm {name}")
    raise InvalidValue(f"--backbone must be tv:NAME or timm:NAME, got {cfg.backbone!r}")


def _feature_dim(model: nn.Module, in_shape: tuple[int, ...]) -> int:
    was = model.training
    model.eval()
    with torch.no_grad():
        f = model.forward_features(torch.zeros(1, *in_shape))
    model.train(was)
    return int(torch.flatten(f, 1).shape[1])


# -- running ----------------------------------------------------------------------------------


def build(cfg: FinetuneConfig, bundle: D.DatasetBundle) -> tuple[FinetuneNet, Source]:
    """The fine-tuning network for ``bundle`` (source weights loaded per the strategy)."""
    src = load_source(cfg, pretrained=cfg.strategy != "scratch")
    return _assemble(cfg, src, len(bundle.classes), tuple(bundle.in_shape)), src


def _assemble(cfg: FinetuneConfig, src: Source, num_classes: int,
              in_shape: tuple[int, ...]) -> FinetuneNet:
    if src.in_shape is not None and tuple(src.in_shape[1:]) != tuple(in_shape[1:]):
        raise InvalidValue(
            f"the source run was trained on {src.in_shape[1]}×{src.in_shape[2]} images but "
            f"{cfg.dataset} has {in_shape[1]}×{in_shape[2]}; pass --image-size "
            f"{src.in_shape[1]}"
        )
    model = FinetuneNet(
        src.model, src.num_features, num_classes, dropout=cfg.dropout,
        dropout_kind=cfg.dropout_kind, hidden=cfg.hidden, in_channels=in_shape[0],
        source_channels=src.in_shape[0] if src.in_shape else 3, freeze_bn=cfg.freeze_bn,
        max_stages=cfg.max_stages,
    )
    if cfg.drop_path > 0 or cfg.dropblock > 0:
        from droplab import surgery

        if cfg.drop_path > 0:
            surgery.add_dropout(model.source, after=nn.Sequential, kind="droppath", p=cfg.drop_path)
        if cfg.dropblock > 0:
            surgery.add_dropout(model.source, after=nn.Conv2d, kind="dropblock", p=cfg.dropblock)
    n = len(model.stages)
    model.lr_scales = [cfg.lr_decay ** (n - i) for i in range(n)]  # top stage: lr_decay
    return model


def rebuild(config: dict[str, Any], num_classes: int, in_shape: tuple[int, ...]) -> FinetuneNet:
    """The architecture of a finetune run from its ``config.json``, without downloading.

    The weights come from the run's checkpoint afterwards, so torchvision and timm
    backbones are built randomly initialised; a ``--from RUN`` backbone needs that source
    run folder, which defines its architecture.
    """
    names = {f.name for f in fields(FinetuneConfig)}
    cfg = FinetuneConfig(**{k: v for k, v in config.items() if k in names})
    try:
        src = load_source(cfg, pretrained=cfg.from_run is not None)
    except UserError as exc:
        if cfg.from_run is None:
            raise
        raise UserError(f"this finetune run was built on the run {cfg.from_run}, which "
                        f"defines its architecture and cannot be loaded ({exc}); restore "
                        "that folder") from None
    return _assemble(cfg, src, num_classes, in_shape)


def _trainable_stages(cfg: FinetuneConfig, n_stages: int, epoch: int) -> int | None:
    """How many backbone stages train during (0-based) ``epoch``; ``None`` = all."""
    if cfg.strategy in ("full", "scratch"):
        return None
    if cfg.strategy == "linear-probe":
        return 0
    per = max(1, cfg.epochs // (n_stages + 1))
    return min(n_stages, epoch // per)


def run(cfg: FinetuneConfig, resume: bool = False) -> dict[str, Any]:
    """Fine-tune and evaluate; returns the summary written to ``summary.json``."""
    from droplab import train as T
    from droplab.uncertainty import expected_calibration_error, negative_log_likelihood

    cfg.validate()
    device = resolve_device(cfg.device)
    run_dir = RunDir.create(cfg.out, "finetune", resume=resume)
    if resume:
        stored = run_dir.read_config()
        if stored.get("task") != "finetune":
            raise UserError(f"{run_dir.path} is a {stored.get('task')} run, not a finetune run")
        done = run_dir.read_summary()
        if done is not None:
            return done
    else:
        run_dir.write_config(cfg, task="finetune")
    seed_everything(cfg.seed)
    t0 = time.perf_counter()

    bundle = D.load_dataset(cfg.dataset, cfg.data_root, cfg.classes, image_size=cfg.image_size,
                            seed=cfg.seed)
    train_idx = torch.arange(len(bundle.train.labels))
    if cfg.labels_per_class is not None:
        train_idx = D.subsample_per_class(bundle.train.labels, cfg.labels_per_class, cfg.seed)
    model, src = build(cfg, bundle)
    mean, std = src.mean, src.std
    if bundle.in_shape[0] == 1 and len(mean) == 3:  # grey images into an RGB backbone
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    labels = bundle.train.labels[train_idx]
    if cfg.val_fraction > 0 and len(train_idx) >= 4 * len(bundle.classes):
        tr, va = D.stratified_split(labels, cfg.val_fraction, cfg.seed)
        fit_idx, val_idx = train_idx[tr], train_idx[va]
    else:
        fit_idx, val_idx = train_idx, None
    augment = bundle.in_shape[0] == 3 if cfg.augment == "auto" else cfg.augment == "on"
    loader_kw = dict(mean=mean, std=std, device=device)
    train_loader = D.Loader(bundle.train, fit_idx, batch_size=cfg.batch_size, shuffle=True,
                            augment=augment, seed=cfg.seed, **loader_kw)
    val_loader = (D.Loader(bundle.train, val_idx, batch_size=256, shuffle=False, **loader_kw)
                  if val_idx is not None else None)
    test_loader = D.Loader(bundle.test, None, batch_size=256, shuffle=False, **loader_kw)

    lr = cfg.lr if cfg.lr is not None else DEFAULT_LR.get(cfg.optimizer)
    tcfg = T.TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, optimizer=cfg.optimizer,
                         lr=lr, weight_decay=cfg.weight_decay, lr_schedule=cfg.lr_schedule,
                         label_smoothing=cfg.label_smoothing)
    n_stages = len(model.stages)
    start_epoch = len(run_dir.read_metrics()) if resume else 0
    model.set_trainable_stages(_trainable_stages(cfg, n_stages, start_epoch))
    unfrozen_log: list[dict[str, Any]] = []

    def on_epoch(record: dict[str, Any]) -> None:
        k = _trainable_stages(cfg, n_stages, int(record["epoch"]))  # next epoch (0-based)
        model.set_trainable_stages(k)
        unfrozen_log.append({"after_epoch": record["epoch"], "trainable_stages": k})

    model.to(device)
    result = T.fit(model, train_loader, val_loader, tcfg, device=device, run=run_dir,
                   resume=resume, on_epoch=on_epoch,
                   meta={"classes": bundle.classes, "in_shape": bundle.in_shape,
                         "mean": mean, "std": std})
    probs, y = T.predict_proba(model, test_loader, device)
    test_acc = float((probs.argmax(1) == y).float().mean())
    summary = {
        "task": "finetune",
        "source": src.description,
        "strategy": cfg.strategy,
        "dropout": cfg.dropout,
        "labels_per_class": cfg.labels_per_class,
        "train_images": len(fit_idx),
        "stages": n_stages,
        "test_acc": test_acc,
        "test_loss": negative_log_likelihood(probs, y),
        "test_ece": float(expected_calibration_error(probs, y)),
        "best_val_acc": result.get("best_val_acc"),
        "epochs": cfg.epochs,
        "time_s": time.perf_counter() - t0,
        "run_dir": str(run_dir.path),
        "classes": bundle.classes,
    }
    run_dir.write_summary(summary)
    return summary


def parse_weights(text: str | None) -> str | None:
    """``--weights`` value: ``none`` → random init, ``default`` (or omitted) → the weights
    enum's default, anything else → a path to a state dict."""
    if text is None or text.lower() == "default":
        return "DEFAULT"
    if text.lower() == "none":
        return None
    return text


__all__ = ["STRATEGIES", "FinetuneConfig", "FinetuneNet", "build", "load_source", "run"]
