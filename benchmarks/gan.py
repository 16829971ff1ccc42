"""GANs against mode collapse: D dropout beside the usual regularisers, at equal generator steps.

For a dataset (``mnist``, ``stacked-mnist``, ``ring`` or ``grid``) this trains ``droplab gan``
in every configuration of :data:`CONFIGS` (or those named by ``--configs``) for every seed,
all at the **same number of generator steps** (``--epochs`` epochs of the non-saturating
loss; WGAN-GP's 5 critic steps per generator step get 5× the epochs), and scores the EMA
generator on held-out real data:

- ``mnist``, ``stacked-mnist``: FID, KID, density/coverage (Naeem et al. 2020) and
  precision/recall on the features of one LeNet MNIST classifier trained by
  ``droplab train`` (per channel for Stacked MNIST), modes (MNIST: classes with ≥ 1 % of
  the samples; Stacked MNIST: modes with ≥ 1 of 26,000 samples, VEEGAN/PacGAN) and
  KL(mode histogram ‖ uniform);
- ``ring``, ``grid``: modes hit, share of high-quality samples (within 3σ), KL, and the
  Fréchet distance / density / coverage of the points.

A ``real data`` row scores held-out real data the same way (the reference a perfect
generator would reach at this sample size). The table gives mean ± std over seeds; the
JSON (``benchmarks/results/gan-<dataset>.json``) holds every run. Run folders are reused
when the study is restarted, so it can be stopped and continued.

Commands (the 3-seed tables need a quiet machine; see the README for measured figures)::

    python benchmarks/gan.py --dataset stacked-mnist --data-root /work/shared/datasets --jobs 2
    python benchmarks/gan.py --dataset mnist --data-root /work/shared/datasets --jobs 2
    python benchmarks/gan.py --dataset ring --jobs 2 ; python benchmarks/gan.py --dataset grid

Smoke test (a minute)::

    python benchmarks/gan.py --dataset ring --epochs 1 --seeds 0 --configs baseline d-dropout-0.3 \
        --out /tmp/gan-bench --results /tmp/gan-bench.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("DROPLAB_PROGRESS", "0")

import torch

from droplab.data.toy2d import TOY_DATASETS
from droplab.engine.gan import GanConfig, load_gan_data
from droplab.evaluate.gan import ClassifierFeatures, gan_scores, mode_coverage
from droplab.evaluate.gan_modes import StackedFeatures, point_scores
from droplab.runs import atomic_write_json
from droplab.tasks.gan import STACKED_MODE_SAMPLES, run

HERE = Path(__file__).resolve().parent

#: name → (what it is, GAN options). Every configuration uses the non-saturating loss
#: unless it says otherwise; dropout rates are drop probabilities.
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "baseline": ("DCGAN / MLP, nothing against collapse", {}),
    "d-dropout-0.3": ("D dropout 0.3 after every hidden block", {"d_dropout": 0.3}),
    "d-dropout-0.5": ("D dropout 0.5 after every hidden block", {"d_dropout": 0.5}),
    "d-dropout-0.3-input": ("D dropout 0.3 on D's input", {"d_dropout": 0.3,
                                                           "d_dropout_where": "input"}),
    "d-dropout-0.3-all": ("D dropout 0.3 on the input and every block",
                          {"d_dropout": 0.3, "d_dropout_where": "all"}),
    "d-spatial-0.3": ("D spatial (channel) dropout 0.3, hidden", {"d_dropout": 0.3,
                                                                  "d_dropout_kind": "spatial"}),
    "instance-noise": ("instance noise σ₀ = 0.1 annealed to 0", {"instance_noise": 0.1}),
    "diffaugment": ("DiffAugment color, translation, cutout",
                    {"diffaugment": "color,translation,cutout"}),
    "spectral-norm": ("spectral norm in D", {"spectral_norm": True}),
    "wgan-gp": ("WGAN-GP, 5 critic steps per G step", {"loss": "wgan-gp"}),
    "wgan-gp-1": ("WGAN-GP, 1 critic step per G step (about the others' compute)",
                  {"loss": "wgan-gp", "n_critic": 1}),
    "minibatch-std": ("minibatch std feature in D", {"minibatch_std": True}),
    "dropout-gan": ("Dropout-GAN: 3 Ds, feedback dropout 0.5",
                    {"discriminators": 3, "d_feedback_dropout": 0.5}),
}
#: the scores kept of a run scored again (``--rescore``)
SCORE_KEYS = ("modes", "high_quality", "kl_uniform", "fid", "kid_mean", "density", "coverage",
              "precision", "recall")
#: configurations that only make sense on images
IMAGE_ONLY = ("d-spatial-0.3", "diffaugment")


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="stacked-mnist",
                   choices=("mnist", "stacked-mnist", *TOY_DATASETS))
    p.add_argument("--data-root", default="/work/shared/datasets", help="folder holding MNIST/raw")
    p.add_argument("--configs", nargs="+", default=None, help=f"subset of {', '.join(CONFIGS)}")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--single-seed", nargs="+", default=[], metavar="CONFIG",
                   help="configurations run with the first seed only (to fit a CPU budget; "
                   "the table gives every row's number of seeds)")
    p.add_argument("--rescore", action="store_true",
                   help="score again finished runs scored before the EMA generator had "
                   "BatchNorm statistics of its own (commit 3bef40d); their training is "
                   "unchanged by that fix, so this equals rerunning them")
    p.add_argument("--busy", action="store_true",
                   help="record that other jobs shared the machine (machine_busy in the JSON)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs of the 1-critic-step configurations (default: mnist 12, "
                   "stacked-mnist 3, ring/grid 100 = 6,200 steps)")
    p.add_argument("--limit", type=int, default=None, help="images per class / points per mode")
    p.add_argument("--batch-size", type=int, default=None, help="default 64 (ring/grid 256)")
    p.add_argument("--width", type=int, default=None, help="default 32 (ring/grid 128)")
    p.add_argument("--eval-samples", type=int, default=None,
                   help="samples for FID & co. (default 2000; ring/grid 2500 as in PacGAN)")
    p.add_argument("--mode-samples", type=int, default=None,
                   help="samples for the mode count (default: stacked-mnist 26,000 as in "
                   "VEEGAN/PacGAN, else --eval-samples); the real-data row uses as many")
    p.add_argument("--note", default="", help="recorded in the JSON (e.g. 'machine busy')")
    p.add_argument("--classifier", default=None, metavar="RUN",
                   help="an MNIST `droplab train` run (default: train a LeNet into OUT/classifier)")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (one process each)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--out", default=None, help="folder of the run folders")
    p.add_argument("--results", default=None)
    args = p.parse_args()
    toy = args.dataset in TOY_DATASETS
    defaults = {"epochs": {"mnist": 12, "stacked-mnist": 3}.get(args.dataset, 100),
                "batch_size": 256 if toy else 64, "width": 128 if toy else 32,
                "eval_samples": 2500 if toy else 2000}
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.configs = args.configs or [c for c in CONFIGS if not (toy and c in IMAGE_ONLY)]
    bad = [c for c in [*args.configs, *args.single_seed] if c not in CONFIGS]
    if bad:
        p.error(f"unknown configuration(s) {', '.join(bad)}; choose from {', '.join(CONFIGS)}")
    args.out = args.out or str(HERE / "runs" / f"gan-{args.dataset}")
    args.results = args.results or str(HERE / "results" / f"gan-{args.dataset}.json")
    return args


def _classifier(args: argparse.Namespace, out: Path) -> str | None:
    """An MNIST LeNet made by ``droplab train`` (reused when already there)."""
    if args.dataset in TOY_DATASETS:
        return None
    if args.classifier:
        return str(args.classifier)
    path = out / "classifier"
    if not (path / "summary.json").exists():
        from droplab.cli import main

        argv = ["train", "--dataset", "mnist", "--data-root", args.data_root, "--model", "lenet",
                "--epochs", "2", "--limit", "2000", "--device", "cpu", "--out", str(path)]
        if (path / "config.json").exists():
            argv.append("--resume")
        print("training the feature classifier: droplab " + " ".join(argv), file=sys.stderr)
        if main(argv) != 0:
            raise SystemExit("droplab train failed")
    return str(path)


def gan_options(args: argparse.Namespace, name: str, seed: int, clf: str | None,
                out: Path) -> dict[str, Any]:
    """The flat ``droplab gan`` options of one configuration and seed (equal G steps)."""
    opts = dict(CONFIGS[name][1])
    n_critic = opts.get("n_critic", 5 if opts.get("loss") == "wgan-gp" else 1)
    return {"dataset": args.dataset, "data_root": args.data_root, "limit": args.limit,
            "width": args.width, "batch_size": args.batch_size,
            "epochs": args.epochs * n_critic, "eval_samples": args.eval_samples,
            "mode_samples": args.mode_samples,
            "feature_extractor": clf, "seed": seed, "device": "cpu",
            "out": str(out / f"{name}-s{seed}"), **opts}


def _one(job: tuple[dict[str, Any], int, bool]) -> dict[str, Any]:
    """Train and score one run, or continue it; a finished run (same options, checked by
    ``droplab gan --resume``) returns its summary — scored again with ``rescore`` when it
    was scored with the trained generator's BatchNorm statistics."""
    opts, threads, rescore = job
    torch.set_num_threads(threads)
    folder = Path(opts["out"])
    cfg = GanConfig.build(**opts)
    old = json.loads((folder / "summary.json").read_text()) if (folder / "summary.json").exists() else None
    if old is not None and not (rescore and not old.get("ema_own_stats")):
        return run(cfg, resume=True)  # the stored summary (refused if the options changed)
    if old is not None:  # score again: only the EMA generator's statistics change
        (folder / "summary.json").unlink()
    cpu0 = time.process_time()
    summary = run(cfg, resume=(folder / "config.json").exists())
    cpu = time.process_time() - cpu0  # this process's CPU seconds (1 thread)
    if old is not None:
        summary.update({"rescored": True, "rescore_cpu_s": cpu,  # cpu_s: training + 1 scoring
                        "cpu_s": old.get("cpu_s"),
                        "load_average_1min_at_end": old.get("load_average_1min_at_end"),
                        "scores_before_rescore": {k: old.get(k) for k in SCORE_KEYS}})
    else:
        summary.update({"cpu_s": cpu, "load_average_1min_at_end": round(os.getloadavg()[0], 2)})
    summary["ema_own_stats"] = True
    atomic_write_json(folder / "summary.json", summary)
    return summary


def real_reference(args: argparse.Namespace, clf: str | None) -> dict[str, Any]:
    """Held-out real data scored as if it were generated (training images vs test images)."""
    cfg = GanConfig.build(dataset=args.dataset, data_root=args.data_root, limit=args.limit)
    data = load_gan_data(cfg.data, seed=0)
    n = args.eval_samples
    if data.mixture is not None:
        real = data.real("test", n, seed=3)
        pts = point_scores(real, data.real("train", n, seed=4), data.mixture)
        return {**pts, "modes": pts["modes_hit"]}
    assert clf is not None
    fx: Any = ClassifierFeatures.from_run(clf)
    stacked = args.dataset == "stacked-mnist"
    fx = StackedFeatures(fx) if stacked else fx
    fake_like = data.real("train", n, seed=4)
    s = gan_scores(data.real("test", n, seed=3), fake_like, fx, mode_min_count=1 if stacked else None)
    if stacked:  # modes over as many training images as the generators' mode samples
        n_modes = args.mode_samples or STACKED_MODE_SAMPLES
        s.update(mode_coverage(fx.modes(data.real("train", n_modes, seed=5)),
                               fx.num_classes, min_count=1))
        s["mode_samples"] = n_modes
    s["modes"] = s.get("modes_covered")
    return s


def _cached_reference(args: argparse.Namespace, clf: str | None, out: Path) -> dict[str, Any]:
    """:func:`real_reference`, stored in ``OUT/real-reference.json`` for the same scale."""
    key = {"dataset": args.dataset, "limit": args.limit, "eval_samples": args.eval_samples,
           "mode_samples": args.mode_samples, "classifier": clf}
    path = out / "real-reference.json"
    if path.exists():
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            return stored["scores"]
    ref = real_reference(args, clf)
    atomic_write_json(path, {"key": key, "scores": ref})
    return ref


def _stats(values: list[float]) -> dict[str, float]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return {"mean": math.nan, "std": math.nan}
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def _keys(toy: bool) -> tuple[str, ...]:
    if toy:
        return ("modes", "high_quality", "kl_uniform", "fid", "density", "coverage",
                "g_steps", "train_time_s")
    return ("modes", "kl_uniform", "fid", "kid_mean", "density", "coverage", "precision",
            "recall", "g_steps", "train_time_s")


def _fmt(cell: dict[str, float], key: str) -> str:
    m, s = cell["mean"], cell["std"]
    if key in ("modes", "g_steps"):
        return f"{m:.1f} ± {s:.1f}" if s else f"{m:.0f}"
    if key == "train_time_s":
        return f"{m:.0f}"
    if key == "kid_mean":
        return f"{m * 1e3:.1f} ± {s * 1e3:.1f}"
    return f"{m:.3f} ± {s:.3f}"


def best_row(table: list[dict[str, Any]], toy: bool, dataset: str) -> dict[str, Any]:
    """The best configuration: most modes, then (mixtures) most high-quality samples or
    (images) the lowest KL."""
    rows = [t for t in table if t["config"] != "real data"]
    if toy:
        return max(rows, key=lambda t: (t["modes"]["mean"], t["high_quality"]["mean"]))
    return max(rows, key=lambda t: (t["modes"]["mean"], -t["kl_uniform"]["mean"]))


def main() -> None:
    args = _parse()
    out = Path(args.out)
    toy = args.dataset in TOY_DATASETS
    t0 = time.perf_counter()
    load_start = [round(v, 2) for v in os.getloadavg()]
    clf = _classifier(args, out)
    names = [(name, seed) for seed in args.seeds for name in args.configs
             if seed == args.seeds[0] or name not in args.single_seed]
    jobs = [(gan_options(args, name, seed, clf, out), args.threads, args.rescore)
            for name, seed in names]
    runs: list[dict[str, Any]] = []
    keys = _keys(toy)
    if args.jobs > 1:
        pool = ProcessPoolExecutor(args.jobs)
        results = pool.map(_one, jobs)
    else:
        results = map(_one, jobs)
    for (name, seed), s in zip(names, results, strict=True):
        rec = {"config": name, "seed": seed, **{k: s.get(k) for k in keys},
               "cpu_s": s.get("cpu_s"), "rescored": bool(s.get("rescored")),
               "ema_own_stats": bool(s.get("ema_own_stats")),
               "load_average_1min_at_end": s.get("load_average_1min_at_end"),
               "run_dir": s["run_dir"]}
        runs.append(rec)
        print(f"{name} seed {seed}: " + "  ".join(
            f"{k} {rec[k]:.4g}" for k in keys if isinstance(rec[k], int | float)), file=sys.stderr)
    if args.jobs > 1:
        pool.shutdown()
    ref = _cached_reference(args, clf, out)
    table = [{"config": "real data", "what": "held-out real data scored as samples", "seeds": 1,
              **{k: {"mean": float(ref[k]), "std": 0.0} for k in keys if k in ref}}]
    for name in args.configs:
        rows = [r for r in runs if r["config"] == name]
        table.append({"config": name, "what": CONFIGS[name][0], "seeds": len(rows),
                      **{k: _stats([r[k] for r in rows]) for k in keys}})
    best = best_row(table, toy, args.dataset)
    first = GanConfig.build(**jobs[0][0]).resolved().to_dict()  # nets, loss, Adam, EMA

    clf_acc = (json.loads((Path(clf) / "summary.json").read_text()).get("test_acc")
               if clf else None)
    print(f"\n{args.dataset}: {args.epochs} epochs of 1-step configurations "
          f"({table[1]['g_steps']['mean']:.0f} generator steps each), batch {args.batch_size}, "
          f"width {args.width}, {len(args.seeds)} seed(s), mean ± std over seeds; "
          + (f"features: LeNet (test acc {clf_acc:.4f})" if clf_acc else "points as features"))
    cols = [k for k in keys if k not in ("g_steps",)]
    print("| configuration | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for t in table:
        print(f"| {t['config']} | " + " | ".join(_fmt(t[k], k) if k in t else "–" for k in cols)
              + " |")
    print(f"\nbest configuration: {best['config']} ({best['what']})")
    atomic_write_json(args.results, {
        "benchmark": f"gan-{args.dataset}", "config": vars(args), "classifier": clf,
        "classifier_test_acc": clf_acc, "table": table, "best": best["config"], "runs": runs,
        "real_reference": {k: v for k, v in ref.items() if not isinstance(v, list)},
        "first_run_options": {k: v for k, v in first.items() if k in ("model", "train")},
        "wall_s": time.perf_counter() - t0, "torch_threads": args.threads,
        "cpu_s_runs": sum(r.get("cpu_s") or 0.0 for r in runs),
        "load_average_at_start": load_start,
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "note": args.note,
        "machine_busy": args.busy,
    })
    print(f"wrote {args.results}", file=sys.stderr)


if __name__ == "__main__":
    main()
