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
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from droplab import data as D
from droplab import plots
from droplab.config import Config, option, section
from droplab.engine.config import ClassifyDataConfig, RunConfig, TrainConfig, parse_device
from droplab.engine.distributed import broadcast_object, init_distributed, shutdown_distributed
from droplab.engine.resume import open_run
from droplab.errors import InvalidValue, UserError
from droplab.models import ModelConfig, build_model
from droplab.plots import learning_curves
from droplab.runs import RunDir, atomic_write_bytes, atomic_write_json
from droplab.runs.restore import LoadedRun, load_run  # re-exported: moved to droplab.runs
from droplab.runtime import resolve_device, seed_everything
from droplab.train import fit, predict_proba
from droplab.uncertainty import (
    brier_score,
    expected_calibration_error,
    mc_predict,
    mutual_information,
    negative_log_likelihood,
    ood_auroc,
    predictive_entropy,
)

TASK = "train"


@dataclass
class ClassifyConfig(Config):
    """Everything that defines a classification run (``config.json`` stores it), in four
    sections that other tasks reuse:

    - ``data`` (:class:`~droplab.engine.config.ClassifyDataConfig`): dataset, classes,
      image size, per-class limit, validation share, augmentation;
    - ``model`` (:class:`~droplab.models.ModelConfig`): the classifier and its dropout
      (rate, kind, placement, input dropout);
    - ``train`` (:class:`~droplab.engine.config.TrainConfig`): the loop's options, incl.
      max-norm (applied at build time too) and the dropout schedule;
    - ``run`` (:class:`~droplab.engine.config.RunConfig`): seed, device, output folder.

    ``ClassifyConfig.build(dataset="digits", epochs=5)`` takes flat option names. The
    defaults train ``digits`` with an MLP to ≥ 0.95 test accuracy in 5 epochs.
    """

    data: ClassifyDataConfig = section(ClassifyDataConfig, title="data")
    model: ModelConfig = section(lambda: ModelConfig(name="mlp", dropout=0.5),
                                 title="model and dropout")
    train: TrainConfig = section(lambda: TrainConfig(batch_size=32), title="training")
    run: RunConfig = section(RunConfig, title="run")

    def train_config(self) -> TrainConfig:
        """The loop's options; a dropout schedule ramps towards ``--dropout``."""
        scheduled = self.train.dropout_schedule and self.model.dropout > 0
        return dataclasses.replace(self.train,
                                   dropout_p=self.model.dropout if scheduled else None)

    def model_config(self) -> ModelConfig:
        """The architecture, with the max-norm cap applied at build time as well."""
        return dataclasses.replace(self.model, max_norm=self.train.max_norm)


# ------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------
def _open_run_dir(cfg: ClassifyConfig, resume: bool, rank: int) -> RunDir:
    """Rank 0 creates (or reopens) the folder under the one resume rule; the other ranks
    learn its path (or the error)."""
    found: Any = None
    if rank == 0:
        try:
            found = str(open_run(cfg, TASK, resume=resume).path)
        except UserError as exc:
            found = exc
    found = broadcast_object(found)
    if isinstance(found, BaseException):
        raise found
    cfg.run.out = found
    return RunDir(found)


def run(
    cfg: ClassifyConfig,
    resume: bool = False,
    *,
    on_epoch: Any = None,
) -> dict[str, Any]:
    """Train and test a classifier; return the summary written to ``summary.json``.

    ``resume=True`` continues the run in ``cfg.run.out`` from its checkpoint (same options
    required, else :class:`~droplab.errors.ResumeError`; see
    :mod:`droplab.engine.resume`); a finished run returns its stored summary without
    training. ``on_epoch(record)`` is passed to :func:`droplab.train.fit` (a sweep may
    raise from it to prune). Under ``torchrun`` each process trains on its shard
    (``batch_size`` is the global batch) and only rank 0 writes files.
    """
    t0 = time.perf_counter()
    device = resolve_device(cfg.run.device)
    rank, world, device = init_distributed(device)
    data, tcfg = cfg.data, cfg.train_config()
    try:
        run_dir = _open_run_dir(cfg, resume, rank)
        if resume:
            done = run_dir.read_summary()
            if done is not None:
                return done

        seed = cfg.run.seed
        seed_everything(seed)
        bundle = D.load_dataset(data.dataset, data.data_root, data.classes,
                                image_size=data.image_size, seed=seed, download=data.download,
                                limit=data.limit)
        all_idx = torch.arange(len(bundle.train))
        if data.val_fraction > 0:
            train_idx, val_idx = D.stratified_split(bundle.train.labels, data.val_fraction, seed)
        else:
            train_idx, val_idx = all_idx, None
        per_rank = max(1, tcfg.batch_size // world)
        shard = -(-len(train_idx) // world)
        common = dict(mean=bundle.mean, std=bundle.std, device=device,
                      channels_last=tcfg.channels_last)
        train_loader = D.Loader(
            bundle.train, train_idx, batch_size=per_rank, shuffle=True,
            augment=data.resolved_augment(bundle.in_shape[0]), seed=seed,
            drop_last=shard % per_rank == 1,  # a batch of one breaks BatchNorm
            rank=rank, world_size=world, **common,
        )
        eval_bs = max(256, tcfg.batch_size)
        val_loader = (D.Loader(bundle.train, val_idx, batch_size=eval_bs, shuffle=False, **common)
                      if val_idx is not None else None)
        test_loader = D.Loader(bundle.test, None, batch_size=eval_bs, shuffle=False, **common)

        seed_everything(seed)
        model_cfg = cfg.model_config()
        model = build_model(model_cfg, bundle.in_shape, bundle.num_classes)
        num_params = sum(p.numel() for p in model.parameters())
        meta = {"model_config": model_cfg.to_dict(), "classes": bundle.classes,
                "in_shape": tuple(bundle.in_shape), "mean": tuple(bundle.mean),
                "std": tuple(bundle.std), "dataset": bundle.name}
        result = fit(model, train_loader, val_loader, tcfg, device=device,
                     run=run_dir, resume=resume, on_epoch=on_epoch, meta=meta)

        probs, labels = predict_proba(model, test_loader, device)
        summary = {
            "task": TASK,
            "dataset": bundle.name,
            "model": cfg.model.name,
            "dropout": cfg.model.dropout,
            "dropout_kind": cfg.model.dropout_kind,
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
            learning_curves(run_dir.read_metrics(), run_dir / "learning_curves.png",
                            title=f"{cfg.model.name} on {bundle.name}, "
                            f"dropout {cfg.model.dropout:g}")
            run_dir.write_summary(summary)
        return summary
    finally:
        if world > 1:
            shutdown_distributed()


def _nll(probs: Tensor, labels: Tensor) -> float:
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
    gen = torch.Generator().manual_seed(seed)
    out = []
    for x, _ in loader:
        out.append(mc_predict(model, x, samples=samples, reduce="none", generator=gen).float().cpu())
    return torch.cat(out, dim=1)


@dataclass
class EvaluateConfig(Config):
    """Options of ``droplab evaluate`` (:func:`evaluate_run`)."""

    run_dir: str = option("", positional=True, required=True, metavar="RUN",
                          help="run folder of droplab train or droplab finetune")
    mc: int = option(0, ge=0, metavar="T", help="also run T Monte-Carlo-dropout passes (e.g. 30)")
    ood: str | None = option(None, metavar="DATASET",
                             help="out-of-distribution set (e.g. fashion-mnist, "
                             "imagefolder:PATH): AUROC")
    data_root: str | None = option(None, metavar="DIR", help="dataset folder (default: the run's)")
    batch_size: int = option(256, ge=1, help="evaluation batch size")
    limit: int | None = option(None, ge=1, metavar="N", help="at most N test images per class")
    seed: int = option(0, help="seed of the MC passes")
    device: str = option("auto", parse=parse_device, metavar="DEVICE",
                         help="auto, cpu, cuda[:N] or mps")


def evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    """``droplab evaluate``: :func:`evaluate_run` with the command's options."""
    return evaluate_run(cfg.run_dir, mc=cfg.mc, ood=cfg.ood, device=cfg.device,
                        data_root=cfg.data_root, batch_size=cfg.batch_size, limit=cfg.limit,
                        seed=cfg.seed)


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
    if int(mc) < 0:
        raise InvalidValue(f"--mc must be a number of passes >= 0, got {mc}")
    loaded = load_run(run_dir, device)
    device = resolve_device(device)
    data = ClassifyDataConfig.from_section(loaded.config, "data")
    root = data_root if data_root is not None else data.data_root
    bundle = D.load_dataset(data.dataset, root, data.classes, image_size=data.image_size,
                            seed=RunConfig.from_section(loaded.config, "run").seed,
                            download=data.download,
                            limit=limit if limit is not None else data.limit)
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
        other = D.load_dataset(ood, root, None, seed=seed, download=data.download,
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
    buf = io.BytesIO()
    np.savez(buf, mc_entropy=predictive_entropy(mc_probs).numpy(),
             mc_mutual_information=mutual_information(mc_probs).numpy(),
             correct=(mc_probs.mean(0).argmax(1) == labels).numpy())
    atomic_write_bytes(path, buf.getvalue())


__all__ = ["ClassifyConfig", "EvaluateConfig", "LoadedRun", "evaluate", "evaluate_run", "load_run",
           "run"]
