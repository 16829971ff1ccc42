"""Image classification with dropout: train, evaluate, reload.

``run(ClassifyConfig(...))`` loads a named dataset (:mod:`droplab.data`), holds out a
stratified validation split of the training part, builds a classifier from the zoo
(:mod:`droplab.models`) with the requested dropout, trains it with the one loop
(:func:`droplab.train.fit`), evaluates it once on the test part and writes a run folder::

    config.json       the ClassifyConfig (task "train")
    metrics.jsonl     one record per epoch
    checkpoint.pt     model/optimiser/schedulers/RNG (+ meta needed by load_run)
    summary.json      test_acc, test_loss (NLL), test_ece, test_brier, best_val_acc, …
    learning_curves.png

:func:`evaluate_run` re-evaluates a run folder: accuracy, NLL, expected calibration error
(Guo et al. 2017), Brier score; with ``mc=T`` Monte-Carlo dropout (Gal & Ghahramani 2016)
accuracy/ECE/NLL, mean predictive entropy and mutual information; with ``ood=DATASET``
the AUROC of telling test images from another dataset's images by MC mutual information
and by the maximum softmax probability (Hendrycks & Gimpel 2017). It writes
``reliability.png``, ``confusion.png`` and ``evaluation.json``.

Reloading a run's model lives in the library: :func:`droplab.runs.restore.load_run`
(re-exported here as ``load_run`` until every caller imports it from there).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from droplab.errors import InvalidValue, ResumeError, UserError, check_rate
from droplab.runs import RunDir, atomic_write_json, to_jsonable
from droplab.runs.restore import LoadedRun, load_run  # re-exported: moved to droplab.runs
from droplab.runtime import resolve_device, seed_everything
from droplab.train import (
    TrainConfig,
    distributed_env,
    fit,
    init_distributed,
    predict_proba,
    shutdown_distributed,
)

TASK = "train"
AUGMENT_CHOICES = ("auto", "on", "off")

#: config fields that may differ when resuming (they do not change the numbers)
RUNTIME_FIELDS = frozenset({"device", "out", "tensorboard", "checkpoint_every", "download"})


@dataclass
class ClassifyConfig:
    """Everything that defines a classification run (``config.json`` stores it).

    Data: ``dataset`` (``digits``, ``mnist``, ``fashion-mnist``, ``cifar10``,
    ``imagefolder:PATH``), ``data_root``, ``classes`` (names or index strings),
    ``image_size``, ``limit`` (images per class, for quick runs), ``val_fraction`` (a
    stratified share of the training part; 0 disables validation), ``augment``
    (``auto``: random crops+flips for colour images, none for greyscale digits).

    Model (:class:`droplab.models.ModelConfig`): ``model``, ``widths``, ``dropout`` (rate
    of the main dropout layers), ``dropout_kind``, ``dropout_where`` (``head``, ``conv``,
    ``all``), ``input_dropout`` (rate on the input, 0.2 in Srivastava et al. 2014),
    ``max_norm`` (per-unit weight-norm cap ``c``, 3–4 in the paper), ``dropout_schedule``
    (a :func:`droplab.schedules.make_schedule` spec, stepped per batch).

    Training (:class:`droplab.train.TrainConfig`): ``epochs``, ``batch_size``,
    ``optimizer``, ``lr``, ``momentum``, ``weight_decay``, ``lr_schedule``,
    ``warmup_epochs``, ``label_smoothing``, ``amp``, ``channels_last``,
    ``checkpoint_every``. Run: ``seed``, ``device``, ``out``, ``tensorboard``.

    The defaults train ``digits`` with an MLP to ≥ 0.95 test accuracy in 5 epochs.
    """

    dataset: str = "digits"
    data_root: str | None = None
    classes: list[str] | None = None
    image_size: int | None = None
    limit: int | None = None
    download: bool = True
    # model
    model: str = "mlp"
    widths: list[int] | None = None
    dropout: float = 0.5
    dropout_kind: str = "dropout"
    dropout_where: str = "head"
    input_dropout: float = 0.0
    max_norm: float | None = None
    dropout_schedule: str | None = None
    # training
    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float | None = None
    lr_schedule: str = "cosine"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    amp: str = "auto"
    channels_last: bool = False
    checkpoint_every: int = 0
    # data split / augmentation
    val_fraction: float = 0.1
    augment: str = "auto"
    # run
    seed: int = 0
    device: str = "auto"
    out: str | None = None
    tensorboard: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every option early with a one-line message."""
        check_rate(self.dropout, "--dropout")
        check_rate(self.input_dropout, "--input-dropout")
        if not 0.0 <= float(self.val_fraction) < 1.0:
            raise InvalidValue(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if isinstance(self.augment, bool):
            self.augment = "on" if self.augment else "off"
        if self.augment not in AUGMENT_CHOICES:
            raise InvalidValue(f"augment must be one of {', '.join(AUGMENT_CHOICES)}, got {self.augment!r}")
        if self.classes is not None:
            self.classes = [str(c) for c in self.classes]
        if self.widths is not None:
            self.widths = [int(w) for w in self.widths]
        self.train_config()  # validates the training options

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassifyConfig:
        """Rebuild from ``config.json`` (unknown keys such as ``task`` are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs, batch_size=self.batch_size, optimizer=self.optimizer,
            lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay,
            lr_schedule=self.lr_schedule, warmup_epochs=self.warmup_epochs,
            label_smoothing=self.label_smoothing, max_norm=self.max_norm,
            dropout_schedule=self.dropout_schedule,
            dropout_p=self.dropout if self.dropout_schedule and self.dropout > 0 else None,
            amp=self.amp, tensorboard=self.tensorboard, channels_last=self.channels_last,
            checkpoint_every=self.checkpoint_every,
        )

    def model_config(self) -> Any:
        from droplab.models import ModelConfig

        kw: dict[str, Any] = dict(
            name=self.model, dropout=self.dropout, dropout_kind=self.dropout_kind,
            dropout_where=self.dropout_where, input_dropout=self.input_dropout,
            max_norm=self.max_norm,
        )
        if self.widths is not None:
            kw["widths"] = tuple(self.widths)
        return ModelConfig(**kw)

    def resolved_augment(self, dataset_name: str, channels: int) -> bool:
        if self.augment == "auto":
            return channels == 3  # crops+flips for colour photos; none for digits
        return self.augment == "on"


# ------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------
def _check_resume(stored: dict[str, Any], cfg: ClassifyConfig, path: Path) -> None:
    """A resumed run must have the same configuration (runtime options aside)."""
    if stored.get("task") != TASK:
        raise ResumeError(f"{path} is a {stored.get('task')!r} run, not a training run; "
                          "pass the folder of a `droplab train` run")
    now = to_jsonable(cfg)
    for key in ("model", "dataset", "classes", "widths", "image_size", "dropout_kind",
                "dropout_where", *sorted(now)):
        if key in RUNTIME_FIELDS or key not in now:
            continue
        if stored.get(key) != now[key]:
            raise ResumeError(
                f"{path} was trained with {key}={stored.get(key)!r} but this resume asks for "
                f"{key}={now[key]!r}; resume with the same options or start a new --out folder"
            )


def _make_run_dir(cfg: ClassifyConfig, resume: bool, rank: int, world: int) -> RunDir:
    """Rank 0 creates (or reopens) the folder; other ranks learn its path."""
    if world == 1:
        return RunDir.create(cfg.out, TASK, resume=resume)
    import torch.distributed as dist

    box: list[Any] = [None]
    if rank == 0:
        try:
            box[0] = str(RunDir.create(cfg.out, TASK, resume=resume).path)
        except UserError as exc:
            box[0] = exc
    dist.broadcast_object_list(box, src=0)
    if isinstance(box[0], BaseException):
        raise box[0]
    return RunDir(box[0])


def run(
    cfg: ClassifyConfig,
    resume: bool = False,
    *,
    on_epoch: Any = None,
) -> dict[str, Any]:
    """Train and test a classifier; return the summary written to ``summary.json``.

    ``resume=True`` continues the run in ``cfg.out`` from its checkpoint (same options
    required, else :class:`~droplab.errors.ResumeError`); a finished run returns its
    stored summary without training. ``on_epoch(record)`` is passed to
    :func:`droplab.train.fit` (a sweep may raise from it to prune). Under ``torchrun``
    each process trains on its shard (``batch_size`` is the global batch) and only rank
    0 writes files.
    """
    from droplab import data as D
    from droplab.models import build_model
    from droplab.uncertainty import brier_score, expected_calibration_error

    cfg.validate()
    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    rank, world, device = init_distributed(device)
    try:
        run_dir = _make_run_dir(cfg, resume, rank, world)
        if resume:
            _check_resume(run_dir.read_config(), cfg, run_dir.path)
            done = run_dir.read_summary()
            if done is not None:
                return done
        elif rank == 0:
            run_dir.write_config(cfg, task=TASK)

        seed_everything(cfg.seed)
        bundle = D.load_dataset(cfg.dataset, cfg.data_root, cfg.classes, image_size=cfg.image_size,
                                seed=cfg.seed, download=cfg.download, limit=cfg.limit)
        all_idx = torch.arange(len(bundle.train))
        if cfg.val_fraction > 0:
            train_idx, val_idx = D.stratified_split(bundle.train.labels, cfg.val_fraction, cfg.seed)
        else:
            train_idx, val_idx = all_idx, None
        per_rank = max(1, cfg.batch_size // world)
        shard = -(-len(train_idx) // world)
        common = dict(mean=bundle.mean, std=bundle.std, device=device,
                      channels_last=cfg.channels_last)
        train_loader = D.Loader(
            bundle.train, train_idx, batch_size=per_rank, shuffle=True,
            augment=cfg.resolved_augment(bundle.name, bundle.in_shape[0]), seed=cfg.seed,
            drop_last=shard % per_rank == 1,  # a batch of one breaks BatchNorm
            rank=rank, world_size=world, **common,
        )
        eval_bs = max(256, cfg.batch_size)
        val_loader = (D.Loader(bundle.train, val_idx, batch_size=eval_bs, shuffle=False, **common)
                      if val_idx is not None else None)
        test_loader = D.Loader(bundle.test, None, batch_size=eval_bs, shuffle=False, **common)

        seed_everything(cfg.seed)
        model_cfg = cfg.model_config()
        model = build_model(model_cfg, bundle.in_shape, bundle.num_classes)
        num_params = sum(p.numel() for p in model.parameters())
        meta = {"model_config": asdict(model_cfg), "classes": bundle.classes,
                "in_shape": tuple(bundle.in_shape), "mean": tuple(bundle.mean),
                "std": tuple(bundle.std), "dataset": bundle.name}
        result = fit(model, train_loader, val_loader, cfg.train_config(), device=device,
                     run=run_dir, resume=resume, on_epoch=on_epoch, meta=meta)

        probs, labels = predict_proba(model, test_loader, device)
        summary = {
            "task": TASK,
            "dataset": bundle.name,
            "model": cfg.model,
            "dropout": cfg.dropout,
            "dropout_kind": cfg.dropout_kind,
            "classes": bundle.classes,
            "num_classes": bundle.num_classes,
            "in_shape": list(bundle.in_shape),
            "train_images": len(train_idx),
            "test_images": len(labels),
            "test_acc": float((probs.argmax(1) == labels).double().mean()),
            "test_loss": _nll(probs, labels),
            "test_ece": float(expected_calibration_error(probs, labels)),
            "test_brier": float(brier_score(probs, labels)),
            "best_val_acc": result.get("best_val_acc"),
            "val_acc": result.get("val_acc"),
            "train_acc": result.get("train_acc"),
            "epochs": result.get("epochs"),
            "time_s": result.get("time_s"),
            "wall_s": time.perf_counter() - t0,
            "images_per_s": result.get("images_per_s"),
            "num_params": num_params,
            "world_size": world,
            "device": str(device),
            "run_dir": str(run_dir.path),
        }
        if rank == 0:
            from droplab.plots import learning_curves

            learning_curves(run_dir.read_metrics(), run_dir / "learning_curves.png",
                            title=f"{cfg.model} on {bundle.name}, dropout {cfg.dropout:g}")
            run_dir.write_summary(summary)
        return summary
    finally:
        if world > 1:
            shutdown_distributed()


def _nll(probs: Tensor, labels: Tensor) -> float:
    from droplab.uncertainty import negative_log_likelihood

    return float(negative_log_likelihood(probs, labels))


# ------------------------------------------------------------------------------------------
# reloading and evaluating
# ------------------------------------------------------------------------------------------
def _convert(images: Tensor, in_shape: tuple[int, int, int]) -> Tensor:
    """uint8 ``(N, C, H, W)`` to the run's channel count and size (bilinear, antialiased)."""
    c, h, w = in_shape
    x = images
    if x.shape[1] != c:
        if c == 1:  # ITU-R 601 luma
            wts = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            x = (x.float() * wts).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
        else:
            x = x[:, :1].expand(-1, c, -1, -1)
    if tuple(x.shape[-2:]) != (h, w):
        x = F.interpolate(x.float(), size=(h, w), mode="bilinear", antialias=True,
                          align_corners=False).round().clamp(0, 255).to(torch.uint8)
    return x.contiguous()


def _mc_probs(model: nn.Module, loader: Any, samples: int, seed: int) -> Tensor:
    """``(T, N, K)`` MC-dropout probabilities, batch by batch, reproducible by ``seed``."""
    from droplab.uncertainty import mc_predict

    gen = torch.Generator().manual_seed(seed)
    out = []
    for x, _ in loader:
        out.append(mc_predict(model, x, samples=samples, reduce="none", generator=gen).float().cpu())
    return torch.cat(out, dim=1)


def evaluate_run(
    run_dir: str | Path,
    mc: int = 0,
    ood: str | None = None,
    *,
    device: str | torch.device = "cpu",
    data_root: str | None = None,
    batch_size: int = 256,
    n_bins: int = 15,
    ood_samples: int = 30,
    limit: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Evaluate a trained run on its test split; write figures and ``evaluation.json``.

    ``mc=T`` adds MC-dropout figures from ``T`` stochastic passes. ``ood=DATASET`` (any
    :func:`droplab.data.load_dataset` name, e.g. ``fashion-mnist`` or
    ``imagefolder:PATH``) adds the AUROC of separating the test set from that dataset's
    test images (converted to the run's channels and size) by MC mutual information
    (``T = mc`` or ``ood_samples``) and by ``1 - max softmax probability``. ``limit`` caps
    images per class of both sets (quick checks).
    """
    from droplab import data as D
    from droplab import plots
    from droplab.uncertainty import (
        brier_score,
        expected_calibration_error,
        mutual_information,
        ood_auroc,
        predictive_entropy,
    )

    if int(mc) < 0:
        raise InvalidValue(f"--mc must be a number of passes >= 0, got {mc}")
    loaded = load_run(run_dir, device)
    device = resolve_device(device)
    cfg = loaded.config
    root = data_root if data_root is not None else cfg.get("data_root")
    bundle = D.load_dataset(cfg["dataset"], root, cfg.get("classes"),
                            image_size=cfg.get("image_size"), seed=cfg.get("seed", 0),
                            download=cfg.get("download", True),
                            limit=limit if limit is not None else cfg.get("limit"))
    kw = dict(batch_size=batch_size, shuffle=False, mean=loaded.mean, std=loaded.std, device=device)
    test_loader = D.Loader(bundle.test, None, **kw)
    model = loaded.model
    probs, labels = predict_proba(model, test_loader, device)
    out: dict[str, Any] = {
        "run_dir": str(loaded.run_dir),
        "dataset": bundle.name,
        "test_images": len(labels),
        "acc": float((probs.argmax(1) == labels).double().mean()),
        "nll": _nll(probs, labels),
        "ece": float(expected_calibration_error(probs, labels, n_bins)),
        "brier": float(brier_score(probs, labels)),
    }
    extra: dict[str, Tensor] = {}
    mc_in: Tensor | None = None
    if mc > 0:
        mc_in = _mc_probs(model, test_loader, int(mc), seed)
        mean = mc_in.mean(0)
        extra[f"MC dropout T={mc}"] = mean
        out.update({
            "mc_samples": int(mc),
            "mc_acc": float((mean.argmax(1) == labels).double().mean()),
            "mc_nll": _nll(mean, labels),
            "mc_ece": float(expected_calibration_error(mean, labels, n_bins)),
            "mc_brier": float(brier_score(mean, labels)),
            "mc_entropy": float(predictive_entropy(mc_in).mean()),
            "mc_mutual_information": float(mutual_information(mc_in).mean()),
        })
    if ood:
        other = D.load_dataset(ood, root, None, seed=seed, download=cfg.get("download", True),
                               limit=limit)
        images = _convert(other.test.images, loaded.in_shape)
        ood_loader = D.Loader(D.ImageData(images, other.test.labels), None, **kw)
        t = int(mc) if mc > 0 else int(ood_samples)
        if mc_in is None or mc_in.shape[0] != t:
            mc_in = _mc_probs(model, test_loader, t, seed)
        mc_out = _mc_probs(model, ood_loader, t, seed + 1)
        p_out, _ = predict_proba(model, ood_loader, device)
        mi_in, mi_out = mutual_information(mc_in), mutual_information(mc_out)
        out.update({
            "ood_dataset": other.name,
            "ood_images": len(images),
            "ood_samples": t,
            "ood_auroc_mutual_information": ood_auroc(mi_in, mi_out),
            "ood_auroc_max_prob": ood_auroc(1 - probs.max(1).values, 1 - p_out.max(1).values),
            "ood_auroc_mc_entropy": ood_auroc(predictive_entropy(mc_in), predictive_entropy(mc_out)),
            "mutual_information_in": float(mi_in.mean()),
            "mutual_information_out": float(mi_out.mean()),
        })
    run = RunDir(loaded.run_dir)
    plots.reliability_diagram(probs, labels, run / "reliability.png", n_bins=n_bins, extra=extra,
                              title=f"Reliability ({bundle.name}, test)")
    plots.confusion_matrix_plot(labels, probs.argmax(1), loaded.classes, run / "confusion.png",
                                title=f"Confusion matrix ({bundle.name}, test)")
    out["figures"] = [str(run / "reliability.png"), str(run / "confusion.png")]
    if mc_in is not None:  # per-image uncertainty, for the report's histograms
        _write_uncertainty(run / "uncertainty.npz", mc_in, labels)
    atomic_write_json(run / "evaluation.json", out)
    return out


def _write_uncertainty(path: Path, mc_probs: Tensor, labels: Tensor) -> None:
    """``uncertainty.npz``: per test image MC predictive entropy, mutual information and
    whether the MC prediction is correct (atomic)."""
    import io

    import numpy as np

    from droplab.runs import atomic_write_bytes
    from droplab.uncertainty import mutual_information, predictive_entropy

    buf = io.BytesIO()
    np.savez(buf, mc_entropy=predictive_entropy(mc_probs).numpy(),
             mc_mutual_information=mutual_information(mc_probs).numpy(),
             correct=(mc_probs.mean(0).argmax(1) == labels).numpy())
    atomic_write_bytes(path, buf.getvalue())


__all__ = ["ClassifyConfig", "LoadedRun", "distributed_env", "evaluate_run", "load_run", "run"]
