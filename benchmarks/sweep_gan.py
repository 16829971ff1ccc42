"""Does ``droplab sweep --task gan`` pick the discriminator dropout rate a seed table would?

Issue 18's target: "the sweep's pick for D dropout (by held-out FID) is within one standard
error of the best rate in the 3-seed table". This script measures it in three steps, at
one scale (``--limit`` MNIST images per class, ``--epochs``, DCGAN width 32, batch 64,
``--eval-samples`` held-out real images, one LeNet feature classifier for both):

1. **the table**: ``benchmarks/gan.py --dataset mnist`` for the configurations
   ``baseline`` / ``d-dropout-0.3`` / ``d-dropout-0.5`` (D dropout after every hidden
   block, rates 0 / 0.3 / 0.5) and seeds 0, 1, 2 (its own run folders and JSON);
2. **the sweep**: ``droplab sweep --task gan --rates 0,0.3,0.5 --folds 3 --objective fid``
   with the same options and the table's classifier as ``--feature-extractor`` (its folds
   are three other seeds, scored on one half of the held-out test images), run beside the
   table (one process each, one thread) once the table's classifier exists;
3. **the check**: the table's best rate (lowest mean FID) and its standard error
   ``std/√3``; the sweep's pick passes when its table mean is within best + SE.

Both steps reuse their folders, so a stopped run continues. Reduced scale (the figures in
the README say which)::

    OMP_NUM_THREADS=1 python benchmarks/sweep_gan.py --data-root ../shared/datasets \\
        --limit 300 --epochs 3 --eval-samples 1500 --note "busy machine"

The issue's scale would be ``--limit`` unset (60,000 images) and ``--epochs 12``
(benchmarks/gan.py's MNIST default), about 14 CPU-hours at one thread (19 GANs × 11,250 steps × 0.23 CPU-s a step).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from droplab.runs import atomic_write_json

HERE = Path(__file__).resolve().parent
#: benchmarks/gan.py configuration → D dropout rate (dropout after every hidden block)
CONFIG_RATE = {"baseline": 0.0, "d-dropout-0.3": 0.3, "d-dropout-0.5": 0.5}


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default="/work/shared/datasets")
    p.add_argument("--limit", type=int, default=300, help="MNIST images per class")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--eval-samples", type=int, default=2000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="the table's seeds")
    p.add_argument("--folds", type=int, default=3, help="the sweep's seeds")
    p.add_argument("--note", default="")
    p.add_argument("--out", default=str(HERE / "runs" / "sweep-gan"))
    p.add_argument("--results", default=str(HERE / "results" / "sweep-gan-mnist.json"))
    return p.parse_args()


def main() -> None:
    args = _parse()
    out = Path(args.out)
    env = {**os.environ, "DROPLAB_PROGRESS": "0"}
    t0, c0 = time.perf_counter(), os.times()
    load_start = [round(v, 2) for v in os.getloadavg()]
    common = ["--data-root", args.data_root, "--limit", str(args.limit), "--epochs",
              str(args.epochs), "--eval-samples", str(args.eval_samples)]
    table_json = out / "table.json"
    table_cmd = [sys.executable, str(HERE / "gan.py"), "--dataset", "mnist", *common,
                 "--configs", *CONFIG_RATE, "--seeds", *map(str, args.seeds),
                 "--batch-size", "64", "--width", "32", "--threads", "1",
                 "--out", str(out / "table"), "--results", str(table_json),
                 "--note", args.note]
    table = subprocess.Popen(table_cmd, env=env)  # the sweep runs beside it, once the
    print("$ " + " ".join(table_cmd), file=sys.stderr)  # table's classifier is there
    clf = out / "table" / "classifier"
    while not (clf / "summary.json").exists():
        if table.poll() is not None:
            raise SystemExit(f"benchmarks/gan.py stopped (exit {table.returncode})")
        time.sleep(2)
    sweep_out = out / "sweep"
    sweep_cmd = [sys.executable, "-m", "droplab", "sweep", "--task", "gan", "--dataset", "mnist",
                 *common, "--batch-size", "64", "--width", "32",
                 "--rates", ",".join(str(r) for r in CONFIG_RATE.values()),
                 "--folds", str(args.folds), "--objective", "fid", "--feature-extractor",
                 str(clf), "--threads", "1", "--device", "cpu", "--out", str(sweep_out), "--json"]
    if (sweep_out / "summary.json").exists():
        summary = json.loads((sweep_out / "summary.json").read_text())
    else:
        if (sweep_out / "config.json").exists():
            sweep_cmd = [*sweep_cmd[:4], "--out", str(sweep_out), "--resume", "--threads", "1",
                         "--device", "cpu", "--json"]
        print("$ " + " ".join(sweep_cmd), file=sys.stderr)
        res = subprocess.run(sweep_cmd, check=True, env=env, capture_output=True, text=True)
        summary = json.loads(res.stdout)
    if table.wait() != 0:
        raise SystemExit(f"benchmarks/gan.py failed (exit {table.returncode})")

    table = json.loads(table_json.read_text())
    per_rate = {CONFIG_RATE[c]: [r["fid"] for r in table["runs"] if r["config"] == c]
                for c in CONFIG_RATE}
    stats = {rate: {"mean": statistics.fmean(v), "std": statistics.stdev(v),
                    "se": statistics.stdev(v) / math.sqrt(len(v)), "n": len(v), "fid": v}
             for rate, v in per_rate.items()}
    best = min(stats, key=lambda r: stats[r]["mean"])
    pick = float(summary["pick"]["rate"])
    threshold = stats[best]["mean"] + stats[best]["se"]
    sweep_rows = {float(r["rate"]): {"mean": r["cv"]["fid"]["mean"], "std": r["cv"]["fid"]["std"],
                                     "se": r["cv"]["fid"]["std"] / math.sqrt(args.folds),
                                     "fid": r["per_fold"]["fid"]}
                  for r in summary["settings"]}
    c1 = os.times()
    result = {
        "benchmark": "sweep-gan-mnist", "target": "the sweep's pick for D dropout (by held-out "
        "FID) is within one standard error of the best rate in the 3-seed table",
        "scale": {"dataset": "mnist", "limit_per_class": args.limit, "epochs": args.epochs,
                  "g_steps": summary["test"].get("g_steps"), "batch_size": 64, "width": 32,
                  "eval_samples": args.eval_samples, "table_seeds": args.seeds,
                  "sweep_folds": args.folds, "d_dropout": "after every hidden block"},
        "table": {str(r): s for r, s in stats.items()}, "table_best_rate": best,
        "table_best_se": stats[best]["se"], "threshold": threshold,
        "sweep": {str(r): s for r, s in sweep_rows.items()}, "sweep_pick": pick,
        "sweep_pick_table_mean": stats[pick]["mean"],
        "met": bool(stats[pick]["mean"] <= threshold),
        "sweep_test_fid": summary.get("test_fid"), "classifier": str(clf),
        "classifier_test_acc": table.get("classifier_test_acc"),
        "commands": {"table": " ".join(table_cmd[1:]), "sweep": " ".join(sweep_cmd[2:])},
        "wall_s": time.perf_counter() - t0,
        "cpu_s_children": (c1.children_user + c1.children_system)
        - (c0.children_user + c0.children_system),
        "load_average_at_start": load_start,
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "note": args.note,
    }
    atomic_write_json(args.results, result)
    for rate in sorted(stats):
        s, w = stats[rate], sweep_rows.get(rate)
        print(f"D dropout {rate}: table FID {s['mean']:.2f} ± {s['se']:.2f} (SE, {s['n']} seeds)"
              + (f"; sweep {w['mean']:.2f} ± {w['se']:.2f}" if w else ""), file=sys.stderr)
    print(f"table best {best} (+SE threshold {threshold:.2f}); sweep pick {pick} (table mean "
          f"{stats[pick]['mean']:.2f}): {'met' if result['met'] else 'NOT met'}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
