"""Does dropout in the discriminator change GAN quality? DCGAN on MNIST, D-dropout 0/0.3/0.5.

For every discriminator dropout rate and seed this trains ``droplab gan`` (DCGAN,
non-saturating loss, dropout after every discriminator block) with the same epochs and
data, then scores 2,000 EMA-generator samples against 2,000 training images with the
features of one MNIST classifier trained by ``droplab train`` (LeNet): FID, KID, IS,
precision/recall, modes covered (classes with ≥ 1 % of samples) and KL(class histogram ‖
uniform). It prints a table with mean ± std over seeds, FID and time ratios against the
p = 0 reference measured in the same run, and writes ``benchmarks/results/gan.json``.

Full study (≈ 20–30 min on 2 free cores; every run folder is reused if the study is
restarted)::

    python benchmarks/gan.py --data-root /work/shared/datasets

Smoke test::

    python benchmarks/gan.py --data-root /work/shared/datasets --seeds 0 --epochs 1 \
        --limit 50 --eval-samples 300 --classifier-limit 200 --classifier-epochs 1 \
        --out /tmp/gan-bench
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from droplab.runs import atomic_write_json
from droplab.tasks.gan import GanConfig, run

HERE = Path(__file__).resolve().parent
KEYS = ("fid", "kid_mean", "inception_score", "modes_covered", "kl_uniform", "precision",
        "recall", "train_time_s")


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default="/work/shared/datasets", help="folder holding MNIST/raw")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--rates", type=float, nargs="+", default=[0.0, 0.3, 0.5])
    p.add_argument("--where", default="hidden", help="input|hidden|all (default hidden)")
    p.add_argument("--kind", default="dropout", help="discriminator dropout kind")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--limit", type=int, default=500, help="GAN training images per class")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--loss", default="ns")
    p.add_argument("--eval-samples", type=int, default=2000)
    p.add_argument("--classifier", default=None, metavar="RUN",
                   help="an MNIST `droplab train` run (default: train one into OUT/classifier)")
    p.add_argument("--classifier-epochs", type=int, default=2)
    p.add_argument("--classifier-limit", type=int, default=2000, help="images per class")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", default=str(HERE / "runs" / "gan"), help="folder of the run folders")
    p.add_argument("--results", default=str(HERE / "results" / "gan.json"))
    return p.parse_args()


def _classifier(args: argparse.Namespace, out: Path) -> str:
    """An MNIST classifier made by ``droplab train`` (reused when already there)."""
    if args.classifier:
        return args.classifier
    path = out / "classifier"
    if not (path / "summary.json").exists():
        from droplab.cli import main

        argv = ["train", "--dataset", args.dataset, "--data-root", args.data_root,
                "--model", "lenet", "--epochs", str(args.classifier_epochs),
                "--limit", str(args.classifier_limit), "--device", "cpu", "--out", str(path)]
        if (path / "config.json").exists():
            argv.append("--resume")
        print("training the feature classifier: droplab " + " ".join(argv), file=sys.stderr)
        if main(argv) != 0:
            raise SystemExit("droplab train failed")
    return str(path)


def _one(args: argparse.Namespace, clf: str, rate: float, seed: int, out: Path) -> dict[str, Any]:
    folder = out / f"d{rate:g}-s{seed}"
    done = folder / "summary.json"
    if done.exists():
        return json.loads(done.read_text())
    cfg = GanConfig(
        dataset=args.dataset, data_root=args.data_root, limit=args.limit, width=args.width,
        loss=args.loss, d_dropout=rate, d_dropout_kind=args.kind, d_dropout_where=args.where,
        epochs=args.epochs, batch_size=args.batch_size, eval_samples=args.eval_samples,
        feature_extractor=clf, seed=seed, device="cpu", out=str(folder),
    )
    return run(cfg, resume=(folder / "config.json").exists())


def _stats(values: list[float]) -> dict[str, float]:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(values), "max": max(values)}


def main() -> None:
    args = _parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    t0 = time.perf_counter()
    clf = _classifier(args, out)
    clf_acc = json.loads((Path(clf) / "summary.json").read_text()).get("test_acc")
    runs: list[dict[str, Any]] = []
    for seed in args.seeds:
        for rate in args.rates:
            s = _one(args, clf, rate, seed, out)
            print(f"d_dropout={rate:g} seed={seed}: FID {s['fid']:.2f}  KID {s['kid_mean']:.4f}  "
                  f"modes {s['modes_covered']}/{s['num_classes']}  KL {s['kl_uniform']:.4f}  "
                  f"({s['train_time_s']:.0f} s)", file=sys.stderr)
            runs.append({"d_dropout": rate, "seed": seed, **{k: s[k] for k in KEYS},
                         "kid_std": s["kid_std"], "run_dir": s["run_dir"]})

    ref_rate = args.rates[0]
    table: list[dict[str, Any]] = []
    ref: dict[str, dict[str, float]] = {}
    for rate in args.rates:
        rows = [r for r in runs if r["d_dropout"] == rate]
        agg = {k: _stats([float(r[k]) for r in rows]) for k in KEYS}
        if rate == ref_rate:
            ref = agg
        n = len(rows)
        d_fid = agg["fid"]["mean"] - ref["fid"]["mean"]
        se = math.sqrt((agg["fid"]["std"] ** 2 + ref["fid"]["std"] ** 2) / n) if n > 1 else float("nan")
        table.append({
            "d_dropout": rate, "seeds": n, **agg,
            "fid_ratio": agg["fid"]["mean"] / ref["fid"]["mean"],
            "fid_delta": d_fid,
            "fid_delta_se": se,
            "time_ratio": agg["train_time_s"]["mean"] / ref["train_time_s"]["mean"],
            "all_seeds_cover_all_classes": all(r["modes_covered"] == 10 for r in rows),
        })

    print(f"\nDCGAN on {args.dataset} ({args.limit}/class, {args.epochs} epochs, loss {args.loss}), "
          f"D dropout {args.kind}@{args.where}; features: LeNet (test acc {clf_acc:.4f}); "
          f"{len(args.seeds)} seed(s); mean ± std over seeds; ratios vs p={ref_rate:g}\n")
    print("| D dropout | FID | FID ratio | ΔFID ± s.e. | KID ×10³ | IS | modes | KL | precision | recall | time ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for t in table:
        def pm(k: str, f: str = ".2f", s: float = 1.0, t: dict[str, Any] = t) -> str:
            return f"{t[k]['mean'] * s:{f}} ± {t[k]['std'] * s:{f}}"

        print(f"| {t['d_dropout']:g} | {pm('fid')} | {t['fid_ratio']:.3f} | "
              f"{t['fid_delta']:+.2f} ± {t['fid_delta_se']:.2f} | {pm('kid_mean', '.2f', 1e3)} | "
              f"{pm('inception_score')} | {pm('modes_covered', '.1f')} | {pm('kl_uniform', '.3f')} | "
              f"{pm('precision', '.3f')} | {pm('recall', '.3f')} | {t['time_ratio']:.2f} |")
    best = min(table, key=lambda t: t["fid"]["mean"])
    print(f"\nbest setting by FID: D dropout {best['d_dropout']:g}: modes covered "
          f"{best['modes_covered']['mean']:.1f}/10 (all seeds 10/10: "
          f"{best['all_seeds_cover_all_classes']}), KL {best['kl_uniform']['mean']:.4f} "
          f"(target ≤ 0.05: {best['kl_uniform']['mean'] <= 0.05})")
    result = {
        "benchmark": "gan",
        "config": vars(args),
        "classifier": clf,
        "classifier_test_acc": clf_acc,
        "reference": f"d_dropout={ref_rate:g}",
        "table": table,
        "runs": runs,
        "wall_s": time.perf_counter() - t0,
        "torch_threads": torch.get_num_threads(),
    }
    atomic_write_json(args.results, result)
    print(f"wrote {args.results}", file=sys.stderr)


if __name__ == "__main__":
    main()
