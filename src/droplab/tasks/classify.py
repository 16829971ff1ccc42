"""``droplab train`` and ``droplab evaluate``: train a classifier with dropout, evaluate a run.

:func:`run` is the library's :func:`droplab.engine.classifier.train_classifier` (the recipe
also ``droplab gan`` uses for its feature classifier); :class:`ClassifyConfig` comes from
there too.

:func:`evaluate_run` re-evaluates a run folder: accuracy, NLL, expected calibration error
(Guo et al. 2017), Brier score; with ``mc=T`` Monte-Carlo dropout (Gal & Ghahramani 2016)
accuracy/ECE/NLL, mean predictive entropy and mutual information; with ``ood=DATASET``
the AUROC of telling test images from another dataset's images by MC mutual information
and by the maximum softmax probability (Hendrycks & Gimpel 2017). It writes
``reliability.png``, ``confusion.png``, ``evaluation.json`` and (with ``mc``)
``uncertainty.npz``. Models are restored by :func:`droplab.runs.restore.load_run`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from droplab import data as D
from droplab import plots
from droplab.config import Config, option
from droplab.engine import Callback, predict_proba
from droplab.engine.classifier import TASK, ClassifyConfig, train_classifier
from droplab.engine.config import ClassifyDataConfig, RunConfig, parse_device
from droplab.errors import InvalidValue, UserError
from droplab.evaluate import selective as S
from droplab.models.tta import TTA_MODES, with_tta
from droplab.runs import RunDir, atomic_write_bytes, atomic_write_json
from droplab.runs.restore import CLASSIFIER_TASKS, load_run
from droplab.runtime import resolve_device
from droplab.uncertainty import (
    brier_score,
    expected_calibration_error,
    mc_predict,
    mutual_information,
    negative_log_likelihood,
    ood_auroc,
    predictive_entropy,
    stack_members,
)


def run(cfg: ClassifyConfig, resume: bool = False, *,
        callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """``droplab train``: :func:`droplab.engine.classifier.train_classifier`."""
    return train_classifier(cfg, resume, callbacks=callbacks)


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
    tta: str = option("none", choices=TTA_MODES, what="test-time augmentation",
                      help="test-time augmentation of the deterministic figures: none, flip "
                      "or flip-translate")
    device: str = option("auto", parse=parse_device, metavar="DEVICE",
                         help="auto, cpu, cuda[:N] or mps")
    temperature: bool = option(False, help="fit temperature scaling on the run's validation "
                               "split and store it in RUN/temperature.json (used from then "
                               "on by evaluate and serve)")
    ensemble: list[str] = option(factory=list, nargs="+", metavar="RUN",
                                 help="more runs of the same classes: also evaluate the deep "
                                 "ensemble of RUN and these (with --mc: MC over the ensemble)")


def evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    """``droplab evaluate``: :func:`evaluate_run` with the command's options."""
    return evaluate_run(cfg.run_dir, mc=cfg.mc, ood=cfg.ood, device=cfg.device,
                        data_root=cfg.data_root, batch_size=cfg.batch_size, limit=cfg.limit,
                        seed=cfg.seed, temperature=cfg.temperature, ensemble=cfg.ensemble,
                        tta=cfg.tta)


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
    temperature: bool = False,
    ensemble: Sequence[str | Path] = (),
    tta: str = "none",
) -> dict[str, Any]:
    """Evaluate a trained run on its test split; write figures and ``evaluation.json``.

    ``mc=T`` adds MC-dropout figures from ``T`` stochastic passes. ``ood=DATASET`` (any
    :func:`droplab.data.load_dataset` name, e.g. ``fashion-mnist`` or
    ``imagefolder:PATH``) adds the AUROC of separating the test set from that dataset's
    test images (converted to the run's channels and size) by MC mutual information
    (``T = mc`` or ``ood_samples``) and by ``1 - max softmax probability``. ``limit`` caps
    images per class of both sets (quick checks). ``tta`` averages the deterministic
    figures over flipped/shifted views (:mod:`droplab.models.tta`; the MC passes do not).

    Beside MC dropout (:mod:`droplab.evaluate.selective`): adaptive ECE and AURC for every
    prediction; ``temperature=True`` fits temperature scaling on the run's validation split
    and stores it (``temperature.json``); a stored temperature adds ``ts_*`` (and with
    ``mc``, ``mc_ts_*``) figures; ``ensemble`` (other run folders) adds the deep ensemble's
    ``ens_*`` figures. Writes ``risk_coverage.png`` beside the other figures.
    """
    if int(mc) < 0:
        raise InvalidValue(f"--mc must be a number of passes >= 0, got {mc}")
    loaded = load_run(run_dir, device, tasks=CLASSIFIER_TASKS)
    device = resolve_device(device)
    try:
        data = ClassifyDataConfig.from_section(loaded.config, "data")
        run_seed = RunConfig.from_section(loaded.config, "run").seed
    except UserError as exc:  # a value nobody typed: the stored file is wrong
        raise UserError(f"{RunDir(loaded.run_dir).config_path} does not hold a valid config "
                        f"({exc}); restore it from a copy of the run") from None
    root = data_root if data_root is not None else data.data_root
    bundle = D.load_dataset(data.dataset, root, data.classes, image_size=data.image_size,
                            seed=run_seed,
                            download=data.download,
                            limit=limit if limit is not None else data.limit)
    kw = dict(batch_size=batch_size, shuffle=False, mean=loaded.mean, std=loaded.std, device=device)
    test_loader = D.Loader(bundle.test, None, **kw)
    model = loaded.model
    probs, labels = predict_proba(with_tta(model, tta), test_loader, device)
    out: dict[str, Any] = {
        "run_dir": str(loaded.run_dir),
        "tta": tta,
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
        out.update(S.ood_metrics(mi_in, mi_out, "mutual_information"))
        out.update(S.ood_metrics(1 - probs.max(1).values, 1 - p_out.max(1).values, "max_prob"))
    run = RunDir(loaded.run_dir)
    curves: dict[str, tuple[Tensor, Tensor, Tensor | None]] = {"deterministic": (probs, labels,
                                                                                 None)}
    out.update(S.selective_metrics(probs, labels))
    if mc_in is not None and mc > 0:
        out.update(S.selective_metrics(mc_in.mean(0), labels, "mc_"))
        curves[f"MC T={mc} by mutual information"] = (mc_in.mean(0), labels,
                                                      mutual_information(mc_in))
    if temperature:
        val = S.run_validation(loaded.config, bundle.train)
        if val is None:
            raise InvalidValue(f"{loaded.run_dir} was trained without a validation split "
                               "(--val-fraction 0); temperature scaling needs one")
        val_loader = D.Loader(val, None, **kw)
        p_val, y_val = predict_proba(model, val_loader, device)
        record = S.fit_run_temperature(
            p_val, y_val, _mc_probs(model, val_loader, int(mc), seed + 2) if mc > 0 else None)
        S.write_temperature(run.path, record)
    temps = S.read_temperature(run.path)
    if temps is not None and "deterministic" in temps:
        t = temps["deterministic"]
        ts = t.apply_to_probs(probs)
        extra[f"temperature {t.temperature:.2f}"] = ts
        out.update(_figures(ts, labels, n_bins, "ts_"), temperature=t.temperature)
        curves["temperature scaled"] = (ts, labels, None)
    if temps is not None and "mc" in temps and mc_in is not None and mc > 0:
        t = temps["mc"]
        mc_ts = t.apply_to_probs(mc_in).mean(0)
        out.update(_figures(mc_ts, labels, n_bins, "mc_ts_"), mc_temperature=t.temperature)
    if ensemble:
        members = S.ensemble_members(ensemble, device, loaded)
        ens = _ensemble_probs([loaded, *members], bundle.test, batch_size, device, int(mc), seed)
        mean = ens.mean(0)
        extra[f"ensemble of {len(members) + 1}"] = mean
        out.update(_figures(mean, labels, n_bins, "ens_"), ensemble_size=len(members) + 1,
                   ens_mutual_information=float(mutual_information(ens).mean()))
        curves[f"ensemble of {len(members) + 1}"] = (mean, labels, None)
    S.risk_coverage_plot(curves, run / "risk_coverage.png",
                         title=f"Risk–coverage ({bundle.name}, test)")
    plots.reliability_diagram(probs, labels, run / "reliability.png", n_bins=n_bins, extra=extra,
                              title=f"Reliability ({bundle.name}, test)")
    plots.confusion_matrix_plot(labels, probs.argmax(1), loaded.classes, run / "confusion.png",
                                title=f"Confusion matrix ({bundle.name}, test)")
    out["figures"] = [str(run / "reliability.png"), str(run / "confusion.png"),
                      str(run / "risk_coverage.png")]
    if mc_in is not None:  # per-image uncertainty, for the report's histograms
        _write_uncertainty(run / "uncertainty.npz", mc_in, labels)
    atomic_write_json(run / "evaluation.json", out)
    return out


def _figures(probs: Tensor, labels: Tensor, n_bins: int, prefix: str) -> dict[str, float]:
    """Accuracy, NLL, ECE, Brier, adaptive ECE and AURC under ``prefix``."""
    return {f"{prefix}acc": float((probs.argmax(1) == labels).double().mean()),
            f"{prefix}nll": _nll(probs, labels),
            f"{prefix}ece": float(expected_calibration_error(probs, labels, n_bins)),
            f"{prefix}brier": float(brier_score(probs, labels)),
            **S.selective_metrics(probs, labels, prefix)}


def _ensemble_probs(runs: Sequence[Any], test: D.ImageData, batch_size: int,
                    device: torch.device, mc: int, seed: int) -> Tensor:
    """Members' test probabilities stacked as passes: ``(M, N, K)``, or ``(M·T, N, K)``
    with MC dropout inside each member. Each member normalises with its own statistics."""
    parts = []
    for i, r in enumerate(runs):
        loader = D.Loader(test, None, batch_size=batch_size, shuffle=False, mean=r.mean,
                          std=r.std, device=device)
        parts.append(_mc_probs(r.model, loader, mc, seed + 10 * i) if mc > 0
                     else predict_proba(r.model, loader, device)[0])
    return stack_members(parts).float()


def _write_uncertainty(path: Path, mc_probs: Tensor, labels: Tensor) -> None:
    """``uncertainty.npz``: per test image MC predictive entropy, mutual information and
    whether the MC prediction is correct (atomic)."""
    buf = io.BytesIO()
    np.savez(buf, mc_entropy=predictive_entropy(mc_probs).numpy(),
             mc_mutual_information=mutual_information(mc_probs).numpy(),
             correct=(mc_probs.mean(0).argmax(1) == labels).numpy())
    atomic_write_bytes(path, buf.getvalue())


__all__ = ["TASK", "ClassifyConfig", "EvaluateConfig", "evaluate", "evaluate_run",
           "run"]
