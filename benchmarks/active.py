"""Active learning benchmarks: Gal, Islam & Ghahramani (2017) Table 1, and pool-scoring cost.

``table`` – the paper's MNIST protocol through ``droplab.tasks.active``: 20 balanced initial
labels, 10 acquired per round, a validation set of 100, the paper's CNN (conv 4×4 ×32 –
ReLU – conv 4×4 ×32 – ReLU – max-pool 2 – dropout 0.25 – dense 128 – ReLU – dropout 0.5 –
dense 10, Keras' MNIST example as the paper says), MC dropout with ``--mc`` passes on a
random ``--pool-subset`` of the pool per round (the paper's code: 2,000 images, 100
passes), retrained from scratch each round with Adam. For every acquisition function and
seed it records the number of *acquired* images (labels − 20) at which the test error first
reaches 10 % and 5 %, beside the paper's figures. A run that never reaches a level within
``--rounds`` is reported as "> acquired so far".

``scoring`` – the cost of scoring a ``--pool`` image pool with ``T = --mc`` consistent MC
passes (prefix cached) relative to one deterministic pass over it, beside the uncached
loop of T full passes, on droplab's ``lenet`` (dropout before the head) and on the paper's
CNN. Medians of ``--repeats``; the CPU may be shared, so only ratios mean something.

    python benchmarks/active.py table --data-root ../shared/datasets --seeds 0,1,2 \\
        --rounds 100 --functions bald,variation-ratios,max-entropy,mean-std,random
    python benchmarks/active.py scoring --data-root ../shared/datasets --pool 10000 --mc 20

Writes ``benchmarks/results/active-<dataset>.json`` (``table``) and ``active-scoring.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from droplab import data as D
from droplab.models import ModelConfig, build_model
from droplab.runs import atomic_write_json
from droplab.tasks import active
from droplab.uncertainty import pool_mc_probs

HERE = Path(__file__).resolve().parent
#: Gal et al. (2017) Table 1: acquired images to reach 10 % / 5 % MNIST test error
PAPER = {"bald": (145, 335), "variation-ratios": (120, 295), "max-entropy": (165, 355),
         "mean-std": (230, 695), "random": (255, 835)}


class GalCNN(nn.Module):
    """The Bayesian CNN of Gal et al. (2017, §5.1) for 28×28 greyscale digits."""

    def __init__(self, num_classes: int = 10, channels: int = 1, size: int = 28) -> None:
        super().__init__()
        side = (size - 6) // 2
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, 4), nn.ReLU(), nn.Conv2d(32, 32, 4), nn.ReLU(),
            nn.MaxPool2d(2), nn.Dropout(0.25), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(32 * side * side, 128), nn.ReLU(), nn.Dropout(0.5),
                                  nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def gal_build(cfg: active.ActiveConfig, bundle: D.DatasetBundle) -> nn.Module:
    c, h, _ = bundle.in_shape
    return GalCNN(bundle.num_classes, c, h)


def _machine(args: argparse.Namespace, load0: tuple[float, float, float]) -> dict[str, Any]:
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"), "loadavg_start": load0,
            "loadavg_end": os.getloadavg(), "busy": args.busy, "scale": args.scale,
            "cpu_s": time.process_time()}


def _test_subset(bundle: D.DatasetBundle, n: int | None) -> D.DatasetBundle:
    """The bundle with a stratified ``n``-image subset of its test split (cheaper rounds)."""
    if n is None or n >= len(bundle.test.labels):
        return bundle
    _, idx = D.stratified_split(bundle.test.labels, n / len(bundle.test.labels), 0)
    return dataclasses.replace(bundle, test=bundle.test.subset(idx))


def table(args: argparse.Namespace) -> dict[str, Any]:
    load0 = os.getloadavg()
    name = args.name or f"active-{args.dataset}"
    bundle = _test_subset(D.load_dataset(args.dataset, args.data_root, None, seed=0,
                                         download=False), args.test_subset)
    build: Callable[..., nn.Module] = gal_build if args.model == "gal" else active.default_build
    runs: list[dict[str, Any]] = []
    for fn in args.functions.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            with tempfile.TemporaryDirectory() as tmp:
                cfg = active.ActiveConfig.build(
                    dataset=args.dataset, model="lenet" if args.model == "gal" else args.model,
                    dropout=0.5, acquisition=fn, initial=20, step=10, rounds=args.rounds,
                    mc=args.mc, pool_subset=args.pool_subset, val_size=100,
                    train_steps=args.train_steps, batch_size=args.batch_size,
                    optimizer="adamw", lr=1e-3, weight_decay=args.weight_decay,
                    lr_schedule="constant", seed=seed, device="cpu", out=str(Path(tmp) / "r"))
                s = active.run(cfg, build=build, bundle=bundle)
            acquired = {k: (v - 20 if v is not None else None)
                        for k, v in active.labels_to_error(
                            [{"labels": n, "test_acc": a}
                             for n, a in zip(s["labels"], s["test_acc"])], (0.10, 0.05)).items()}
            runs.append({"acquisition": fn, "seed": seed, "acquired_to_error": acquired,
                         "labels": s["labels"], "test_acc": s["test_acc"],
                         "wall_s": s["wall_s"]})
            print(f"{fn} seed {seed}: {acquired} in {s['wall_s']:.0f} s", file=sys.stderr,
                  flush=True)
            atomic_write_json(HERE / "results" / f"{name}.partial.json",
                              {"protocol": vars(args), "runs": runs})
    rows = {}
    max_acq = args.rounds * 10
    for fn in args.functions.split(","):
        mine = [r for r in runs if r["acquisition"] == fn]
        row: dict[str, Any] = {"paper": PAPER.get(fn)}
        for level in ("0.1", "0.05"):
            vals = [r["acquired_to_error"][level] for r in mine]
            reached = [v for v in vals if v is not None]
            row[level] = {"per_seed": vals,
                          "mean": statistics.mean(reached) if len(reached) == len(vals) else None,
                          "std": statistics.stdev(reached) if len(reached) == len(vals) > 1
                          else None,
                          "reached": f"{len(reached)}/{len(vals)} within {max_acq}"}
        rows[fn] = row
    result = {"protocol": vars(args), "test_images": len(bundle.test.labels),
              "machine": _machine(args, load0), "rows": rows, "runs": runs}
    atomic_write_json(HERE / "results" / f"{name}.json", result)
    (HERE / "results" / f"{name}.partial.json").unlink(missing_ok=True)
    return result


def _median_time(fn: Callable[[Any], Any], batches: list[Any], repeats: int) -> float:
    """Median seconds of ``fn(batches)`` over ``repeats`` runs, after one warm-up run on
    the first batch only (the uncached loop is too dear to run whole just to warm up)."""
    fn(batches[:1])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(batches)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def scoring(args: argparse.Namespace) -> dict[str, Any]:
    bundle = D.load_dataset(args.dataset, args.data_root, None, seed=0, download=False)
    n = min(args.pool, len(bundle.train))
    loader = D.Loader(bundle.train, torch.arange(n), batch_size=args.batch, shuffle=False,
                      mean=bundle.mean, std=bundle.std)
    batches = [x for x, _ in loader]
    c, h, _ = bundle.in_shape
    torch.manual_seed(0)
    models = {"lenet (dropout before the head)": build_model(
                  ModelConfig(name="lenet", dropout=0.5), bundle.in_shape, bundle.num_classes),
              "Gal et al. CNN (dropout after the convs)": GalCNN(bundle.num_classes, c, h)}
    keep = args.models.split(",")
    models = {k: v for k, v in models.items() if k.split()[0].lower() in keep}
    load0 = os.getloadavg()
    out: dict[str, Any] = {"pool": n, "mc": args.mc, "batch": args.batch,
                           "repeats": args.repeats, "models": {}}
    for name, model in models.items():
        model.eval()

        def deterministic(bs: list[torch.Tensor], model: nn.Module = model) -> None:
            with torch.no_grad():
                for x in bs:
                    model(x)

        one = _median_time(deterministic, batches, args.repeats)
        cached = _median_time(lambda bs, model=model: pool_mc_probs(model, bs, args.mc),
                              batches, args.repeats)
        full = _median_time(lambda bs, model=model: pool_mc_probs(model, bs, args.mc,
                                                                  cache_prefix=False),
                            batches, args.repeats)
        out["models"][name] = {"deterministic_s": one, "cached_s": cached, "uncached_s": full,
                               "cached_ratio": cached / one, "uncached_ratio": full / one}
        print(f"{name}: one pass {one:.2f} s, T={args.mc} cached {cached / one:.2f}×, "
              f"uncached {full / one:.2f}×", file=sys.stderr, flush=True)
        out["machine"] = _machine(args, load0)
        atomic_write_json(HERE / "results" / "active-scoring.json", out)
    out["machine"] = _machine(args, load0)
    atomic_write_json(HERE / "results" / "active-scoring.json", out)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    t = sub.add_parser("table", help="Gal et al. 2017 Table 1 on MNIST")
    t.add_argument("--dataset", default="mnist")
    t.add_argument("--data-root", default=None)
    t.add_argument("--functions", default="bald,variation-ratios,max-entropy,mean-std,random")
    t.add_argument("--seeds", default="0,1,2")
    t.add_argument("--rounds", type=int, default=100)
    t.add_argument("--mc", type=int, default=20)
    t.add_argument("--pool-subset", type=int, default=2000)
    t.add_argument("--train-steps", type=int, default=500)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--weight-decay", type=float, default=1e-4)
    t.add_argument("--model", default="gal", help="gal (the paper's CNN) or a droplab model")
    t.add_argument("--name", default=None,
                   help="result file name (default active-DATASET): results/NAME.json")
    t.add_argument("--test-subset", type=int, default=None,
                   help="score each round on a stratified subset of N test images")
    s = sub.add_parser("scoring", help="pool scoring cost vs one deterministic pass")
    s.add_argument("--dataset", default="mnist")
    s.add_argument("--data-root", default=None)
    s.add_argument("--pool", type=int, default=10000)
    s.add_argument("--mc", type=int, default=20)
    s.add_argument("--batch", type=int, default=1000)
    s.add_argument("--repeats", type=int, default=3)
    s.add_argument("--models", default="lenet,gal", help="lenet and/or gal")
    for p in (t, s):
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--scale", default="full", help="label stored with the result")
        p.add_argument("--busy", default="", help="note on the machine's load")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    return table(args) if args.what == "table" else scoring(args)


if __name__ == "__main__":
    main()
