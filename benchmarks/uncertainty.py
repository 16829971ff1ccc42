"""Calibration and OOD table: MC dropout beside the cheap baselines (issue 16).

Per dataset: train on classes 0–7 (a stratified 10 % of the training part held out for
validation), evaluate on the test images of classes 0–7, and score the test images of
classes 8–9 as out-of-distribution. Methods, all from the same trained runs:

* ``deterministic`` – member 0, dropout off;
* ``temperature`` – member 0 with one temperature fitted on the validation split;
* ``MC T=30`` – member 0 with 30 MC-dropout passes;
* ``MC + temperature`` – the MC passes with a temperature fitted on validation MC passes;
* ``ensemble of 5`` – the mean of 5 members trained with seeds 0–4 (dropout off);
* ``Laplace (last layer)`` – laplace-torch's Kronecker last-layer Laplace on member 0
  (only where laplace-torch is installed).

Columns: accuracy, NLL, ECE (15 bins), adaptive ECE, Brier, AURC (by max probability),
OOD AUROC / FPR@95TPR / AUPR-Out by predictive entropy. The CPU may be shared: training
lengths are options.

    python benchmarks/uncertainty.py --data-root ../shared/datasets --dataset mnist
    python benchmarks/uncertainty.py --data-root ../shared/datasets --dataset cifar10 \\
        --model convnet --dropout 0.1 --dropout-where all --epochs 10

Writes ``benchmarks/results/uncertainty-<dataset>.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from droplab import data as D
from droplab.engine import fit, predict_proba
from droplab.engine.config import TrainConfig
from droplab.models import ModelConfig, build_model
from droplab.runs import atomic_write_json
from droplab.runtime import seed_everything
from droplab.uncertainty import (
    adaptive_calibration_error,
    aurc,
    brier_score,
    ensemble_probs,
    expected_calibration_error,
    fit_temperature,
    fpr_at_tpr,
    logits_from_probs,
    mc_predict,
    negative_log_likelihood,
    ood_aupr,
    ood_auroc,
    predictive_entropy,
)
from droplab.uncertainty import laplace as LA

HERE = Path(__file__).resolve().parent


def _mc(model: nn.Module, loader: D.Loader, t: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([mc_predict(model, x, samples=t, reduce="none", generator=g).float()
                      for x, _ in loader], dim=1)


def _row(probs: Tensor, labels: Tensor, ood: Tensor) -> dict[str, float]:
    ent_in, ent_out = predictive_entropy(probs), predictive_entropy(ood)
    return {
        "acc": float((probs.argmax(1) == labels).double().mean()),
        "nll": negative_log_likelihood(probs, labels),
        "ece": expected_calibration_error(probs, labels),
        "adaptive_ece": adaptive_calibration_error(probs, labels),
        "brier": brier_score(probs, labels),
        "aurc": aurc(probs, labels),
        "ood_auroc": ood_auroc(ent_in, ent_out),
        "ood_fpr95": fpr_at_tpr(ent_in, ent_out),
        "ood_aupr": ood_aupr(ent_in, ent_out),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--model", default="lenet")
    ap.add_argument("--dropout", type=float, default=0.5)
    ap.add_argument("--dropout-where", default="head")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--limit", type=int, default=None, help="training images per class")
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--mc", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--scale", default="full",
                    help="label stored with the result, e.g. 'reduced: 1000 images per class'")
    ap.add_argument("--busy", default="",
                    help="note on the machine's load, e.g. 'machine busy (6 helpers)'")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0, cpu0, load0 = time.perf_counter(), time.process_time(), os.getloadavg()
    inn = D.load_dataset(args.dataset, args.data_root, [str(c) for c in range(8)], seed=0,
                         download=False, limit=args.limit)
    out_set = D.load_dataset(args.dataset, args.data_root, ["8", "9"], seed=0, download=False)
    train_idx, val_idx = D.stratified_split(inn.train.labels, 0.1, 0)
    kw = dict(mean=inn.mean, std=inn.std)
    train = D.Loader(inn.train, train_idx, batch_size=128, shuffle=True, seed=0,
                     augment=inn.in_shape[0] == 3, **kw)
    val = D.Loader(inn.train, val_idx, batch_size=1000, shuffle=False, **kw)
    test = D.Loader(inn.test, None, batch_size=1000, shuffle=False, **kw)
    ood = D.Loader(out_set.test, None, batch_size=1000, shuffle=False, **kw)
    mcfg = ModelConfig(name=args.model, dropout=args.dropout, dropout_where=args.dropout_where)
    tcfg = TrainConfig(epochs=args.epochs, batch_size=128, lr_schedule="onecycle")
    members: list[nn.Module] = []
    for seed in range(args.members):
        seed_everything(seed)
        model = build_model(mcfg, inn.in_shape, inn.num_classes)
        train.seed = seed
        fit(model, train, val, dataclasses.replace(tcfg), device="cpu")
        members.append(model.eval())
        print(f"member {seed} trained ({time.perf_counter() - t0:.0f} s)", file=sys.stderr,
              flush=True)
    m0 = members[0]
    p_val, y_val = predict_proba(m0, val, "cpu")
    p_test, y_test = predict_proba(m0, test, "cpu")
    p_ood, _ = predict_proba(m0, ood, "cpu")
    rows: dict[str, dict[str, float]] = {"deterministic": _row(p_test, y_test, p_ood)}
    temp = fit_temperature(logits_from_probs(p_val), y_val)
    rows["temperature"] = _row(temp.apply_to_probs(p_test), y_test, temp.apply_to_probs(p_ood))
    mc_val, mc_test, mc_ood = (_mc(m0, val, args.mc, 1), _mc(m0, test, args.mc, 2),
                               _mc(m0, ood, args.mc, 3))
    rows[f"MC T={args.mc}"] = _row(mc_test.mean(0), y_test, mc_ood.mean(0))
    mc_temp = fit_temperature(logits_from_probs(mc_val), y_val)
    rows[f"MC T={args.mc} + temperature"] = _row(
        mc_temp.apply_to_probs(mc_test).mean(0), y_test, mc_temp.apply_to_probs(mc_ood).mean(0))
    if len(members) > 1:
        ens_test = ensemble_probs([predict_proba(m, test, "cpu")[0] for m in members])
        ens_ood = ensemble_probs([predict_proba(m, ood, "cpu")[0] for m in members])
        rows[f"ensemble of {len(members)}"] = _row(ens_test.float(), y_test, ens_ood.float())
    laplace_note = ""
    if LA.available():
        plain = D.Loader(inn.train, train_idx, batch_size=256, shuffle=False, **kw)
        la = LA.fit_last_layer(m0, plain)
        rows["Laplace (last layer)"] = _row(
            torch.cat([LA.predict(la, x) for x, _ in test]), y_test,
            torch.cat([LA.predict(la, x) for x, _ in ood]))
    else:
        laplace_note = f"laplace-torch not installed ({LA.EXTRA})"
    result = {"dataset": inn.name, "in_classes": "0-7", "ood_classes": "8-9",
              "train_images": len(train_idx), "test_images": len(y_test),
              "ood_images": len(p_ood), "options": vars(args),
              "temperature": temp.temperature, "mc_temperature": mc_temp.temperature,
              "rows": rows, "laplace": laplace_note or "fitted",
              "scale": args.scale,
              "machine": {"cpu": platform.processor() or platform.machine(),
                          "cores": os.cpu_count(), "threads": args.threads,
                          "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
                          "loadavg_start": load0, "loadavg_end": os.getloadavg(),
                          "busy": args.busy},
              "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - cpu0}
    atomic_write_json(HERE / "results" / f"uncertainty-{inn.name}.json", result)
    cols = ["acc", "nll", "ece", "adaptive_ece", "brier", "aurc", "ood_auroc", "ood_fpr95",
            "ood_aupr"]
    print("| method | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r[c]:.4f}" for c in cols) + " |")
    return result


if __name__ == "__main__":
    main()
