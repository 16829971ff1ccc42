"""Where dropout pays (issue 20): test accuracy, NLL and ECE against the dropout rate across
training-set sizes, model sizes and dropout kinds, and the CV pick against the oracle.

For every dataset × model size × training fraction × kind × seed, every rate is
cross-validated on the training subset (stratified k-fold, the sweep's own objective:
:func:`droplab.tasks.sweep.objective.train_and_score`, same folds and seeds for every
rate) and refitted on the whole subset and scored on the full test split (the oracle).
The sweep's pick rules (:func:`droplab.tasks.sweep.pick.choose`: best CV mean, and the
one-standard-error rule) choose a rate from CV alone; the figure of merit is

    pick_minus_oracle = mean over seeds of test acc at the seed's CV pick
                        − max over rates of the mean test acc            (goal ≥ −0.003)

Every fit runs at least ``--steps`` optimiser steps (more epochs on small subsets), so small
training sets are trained long enough to overfit. Results go to
``benchmarks/results/atlas.json`` (``atlas-small.json`` with ``--small``) and the figures
``atlas_best_rate.png`` (oracle-best and CV-picked rate against training-set size) and
``atlas_curves.png`` (test acc / NLL / ECE against the rate, one line per size).

    python benchmarks/atlas.py --root ../shared/datasets            # the full study: hours
    python benchmarks/atlas.py --root ../shared/datasets --small    # minutes (a smoke study)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("DROPLAB_PROGRESS", "0")

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from droplab.data import DatasetBundle, ImageData, channel_stats, kfold_splits, load_dataset
from droplab.plots import save_figure
from droplab.runs import atomic_write_json
from droplab.tasks.sweep import SweepConfig
from droplab.tasks.sweep.objective import Prepared, fold_seed, refit_and_test, train_and_score
from droplab.tasks.sweep.pick import choose

RESULTS = Path(__file__).resolve().parent / "results"
#: model sizes per dataset: (zoo name, widths)
MODELS: dict[str, dict[str, tuple[str, tuple[int, ...]]]] = {
    "mnist": {"small": ("mlp", (256, 256)), "large": ("mlp", (1024, 1024))},
    "digits": {"small": ("mlp", (128, 128)), "large": ("mlp", (512, 512))},
    "cifar10": {"small": ("convnet", (16, 32, 64)), "large": ("convnet", (32, 64, 128))},
}


def subset(full: DatasetBundle, fraction: float) -> DatasetBundle:
    """The first ``fraction`` of every class of the training part (the full test part),
    with the subset's own channel statistics."""
    labels = full.train.labels
    keep = torch.zeros(len(labels), dtype=torch.bool)
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).reshape(-1)
        keep[idx[: max(1, round(fraction * len(idx)))]] = True
    train = ImageData(full.train.images[keep].contiguous(), labels[keep].contiguous())
    mean, std = channel_stats(train.images)
    return DatasetBundle(full.name, train, full.test, full.classes, full.in_shape, mean, std)


def epochs_for(n: int, batch: int, folds: int, args: argparse.Namespace) -> int:
    """Enough epochs for ``--steps`` optimiser steps on a fold's training part."""
    per_epoch = max(1, math.ceil(n * (folds - 1) / folds / batch))
    return int(min(args.max_epochs, max(args.min_epochs, math.ceil(args.steps / per_epoch))))


def one_cell(full: DatasetBundle, dataset: str, size: str, fraction: float, kind: str,
             seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """CV and oracle figures of every rate for one (dataset, model, fraction, kind, seed)."""
    bundle = subset(full, fraction)
    name, widths = MODELS[dataset][size]
    epochs = epochs_for(len(bundle.train), args.batch_size, args.folds, args)
    cfg = SweepConfig.build(dataset=dataset, data_root=args.root, model=name, widths=widths,
                            epochs=epochs, batch_size=args.batch_size, rates=args.rates,
                            kinds=[kind], folds=args.folds, seed=seed, device=args.device,
                            attack_samples=1, objective="acc")
    prep = Prepared(cfg, bundle=bundle)
    prep.folds = kfold_splits(bundle.train.labels, args.folds, seed=seed)
    rows = []
    t0 = time.perf_counter()
    for params in cfg.space.settings():
        folds = [train_and_score(prep, params, tr, bundle.train, va, fold_seed(seed, i))
                 for i, (tr, va) in enumerate(prep.folds)]
        cv = {k: {"mean": statistics.fmean(f[k] for f in folds),
                  "std": statistics.stdev(f[k] for f in folds)} for k in ("acc", "nll", "ece")}
        rows.append({**params, "state": "complete", "trial": None, "folds_done": len(folds),
                     "cv": cv, "per_fold": {"acc": [f["acc"] for f in folds]},
                     "test": refit_and_test(prep, params)})
    chosen = choose(rows, cfg)
    print(f"[{dataset} {size} {fraction:g} {kind} seed {seed}] n={len(bundle.train)} "
          f"epochs={epochs}: CV pick {chosen['best']['rate']:g}, 1-SE {chosen['one_se']['rate']:g}"
          f" ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return {"n_train": len(bundle.train), "epochs": epochs,
            "rates": [{"rate": r["rate"], "cv_acc": r["cv"]["acc"]["mean"],
                       "cv_acc_std": r["cv"]["acc"]["std"], **r["test"]} for r in rows],
            "cv_pick": chosen["best"]["rate"], "one_se_pick": chosen["one_se"]["rate"]}


def summarise(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over seeds per rate, the oracle's best rate, and the CV picks' test accuracy."""
    rates = [r["rate"] for r in cells[0]["rates"]]

    def mean_of(key: str, rate: float) -> float:
        return statistics.fmean(next(r[key] for r in c["rates"] if r["rate"] == rate)
                                for c in cells)

    per_rate = [{"rate": p, **{k: mean_of(k, p) for k in ("test_acc", "test_nll", "test_ece",
                                                          "cv_acc")}} for p in rates]
    best = max(per_rate, key=lambda r: r["test_acc"])

    def at_pick(rule: str) -> float:
        return statistics.fmean(next(r["test_acc"] for r in c["rates"] if r["rate"] == c[rule])
                                for c in cells)

    cv_acc, se_acc = at_pick("cv_pick"), at_pick("one_se_pick")
    return {"n_train": cells[0]["n_train"], "epochs": cells[0]["epochs"], "seeds": len(cells),
            "per_rate": per_rate, "oracle_rate": best["rate"], "oracle_test_acc": best["test_acc"],
            "cv_picks": [c["cv_pick"] for c in cells], "one_se_picks": [c["one_se_pick"] for c in cells],
            "cv_pick_test_acc": cv_acc, "one_se_pick_test_acc": se_acc,
            "pick_minus_oracle": cv_acc - best["test_acc"],
            "one_se_minus_oracle": se_acc - best["test_acc"],
            "met": cv_acc - best["test_acc"] >= -0.003}


def figures(study: list[dict[str, Any]], out_dir: Path, tag: str) -> list[str]:
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for s in study:
        groups.setdefault((s["dataset"], s["model"], s["kind"]), []).append(s)
    fig = Figure(figsize=(8.5, 4.0), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    for (dataset, size, kind), rows in groups.items():
        rows = sorted(rows, key=lambda r: r["n_train"])
        xs = [r["n_train"] for r in rows]
        line, = ax.plot(xs, [r["oracle_rate"] for r in rows], "o-",
                        label=f"{dataset} {size} {kind}: oracle")
        ax.plot(xs, [statistics.fmean(r["cv_picks"]) for r in rows], "x--", color=line.get_color(),
                label=f"{dataset} {size} {kind}: CV pick (mean)")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())  # minor log labels overlap
    ax.set_xlabel("training images")
    ax.set_ylabel("best dropout rate p")
    ax.set_title("oracle-best rate (o) and CV pick (x, mean over seeds)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    paths = [out_dir / f"atlas_best_rate{tag}.png"]
    save_figure(fig, paths[0])

    fig = Figure(figsize=(12.0, 3.6 * len(groups)), layout="constrained")
    for g, ((dataset, size, kind), rows) in enumerate(groups.items()):
        for k, (key, label) in enumerate((("test_acc", "test accuracy"), ("test_nll", "test NLL"),
                                          ("test_ece", "test ECE"))):
            ax = fig.add_subplot(len(groups), 3, 3 * g + k + 1)
            for r in sorted(rows, key=lambda r: r["n_train"]):
                ax.plot([p["rate"] for p in r["per_rate"]], [p[key] for p in r["per_rate"]],
                        "o-", label=f"n={r['n_train']}")
            ax.set_title(f"{dataset} {size} {kind}", fontsize=9)
            ax.set_xlabel("dropout rate p")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    paths.append(out_dir / f"atlas_curves{tag}.png")
    save_figure(fig, paths[1])
    return [str(p) for p in paths]


def fractions_of(spec: str, dataset: str) -> list[float]:
    """``0.01,0.1`` for every dataset, or ``mnist=0.01,0.1;digits=0.1,1`` per dataset."""
    if "=" not in spec:
        return [float(f) for f in spec.split(",")]
    per = dict(part.split("=", 1) for part in spec.split(";") if part.strip())
    return [float(f) for f in per.get(dataset, "").split(",") if f.strip()]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--root", default="/work/shared/datasets")
    p.add_argument("--datasets", default="mnist,cifar10")
    p.add_argument("--models", default="small,large")
    p.add_argument("--fractions", default="0.01,0.1,1",
                   help="training fractions, or per dataset: 'mnist=0.01,0.1;digits=0.1,1'")
    p.add_argument("--kinds", default="dropout,gaussian")
    p.add_argument("--rates", default="0,0.1,0.2,0.3,0.5,0.7")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=4000, help="optimiser steps per fit (at least)")
    p.add_argument("--min-epochs", type=int, default=10)
    p.add_argument("--max-epochs", type=int, default=200)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    p.add_argument("--tag", default=None,
                   help="suffix of the result files (default: '-small' with --small, else none)")
    p.add_argument("--note", default=None,
                   help="free text for the results (e.g. reduced scale, machine busy)")
    p.add_argument("--small", action="store_true",
                   help="MNIST only, small mlp, fractions 0.01/0.1, rates 0/0.25/0.5, 1 seed, "
                   "600 steps: a smoke study for a busy machine")
    p.add_argument("--replot", metavar="JSON", default=None,
                   help="redraw the figures of a results file (no training)")
    args = p.parse_args()
    if args.replot:
        src = Path(args.replot)
        tag = src.stem.removeprefix("atlas")
        print("\n".join(figures(json.loads(src.read_text())["study"], src.parent, tag)))
        return 0
    if args.small:
        args.datasets, args.models, args.fractions = "mnist", "small", "0.01,0.1"
        args.kinds, args.rates, args.seeds = "dropout", "0,0.25,0.5", "0"
        args.steps, args.min_epochs, args.max_epochs = 600, 5, 60
    torch.set_num_threads(args.threads or max(1, os.cpu_count() or 1))
    t0, c0, load0 = time.perf_counter(), time.process_time(), os.getloadavg()
    study = []
    for dataset in args.datasets.split(","):
        full = load_dataset(dataset, args.root, download=False)
        for size in args.models.split(","):
            for fraction in fractions_of(args.fractions, dataset):
                for kind in args.kinds.split(","):
                    cells = [one_cell(full, dataset, size, fraction, kind, int(s), args)
                             for s in args.seeds.split(",")]
                    study.append({"dataset": dataset, "model": size, "fraction": fraction,
                                  "kind": kind, **summarise(cells), "cells": cells})
    tag = args.tag if args.tag is not None else ("-small" if args.small else "")
    result = {"setup": {k: v for k, v in vars(args).items()}, "cpu_count": os.cpu_count(),
              "command": " ".join(["python", *sys.argv]),
              "load_avg_at_start": load0, "load_avg_at_end": os.getloadavg(),
              "time_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
              "study": study,
              "all_met": all(s["met"] for s in study),
              "plots": figures(study, RESULTS, tag)}
    out = RESULTS / f"atlas{tag}.json"
    atomic_write_json(out, result)
    table = [{k: s[k] for k in ("dataset", "model", "kind", "n_train", "oracle_rate", "cv_picks",
                                "pick_minus_oracle", "met")} for s in study]
    print(json.dumps(table, indent=1))
    print(f"wrote {out} ({result['time_s']:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
