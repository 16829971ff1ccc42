"""Transfer-learning study: does fine-tuning beat scratch, and where does head dropout help?

Pretrain a convnet on CIFAR-10 classes 0-4 with ``droplab train``, then fine-tune on
classes 5-9 with K labels per class (10, 100, 1000): scratch vs linear probe vs full vs
gradual, each with head dropout 0 / 0.25 / 0.5, over seeds; report mean ± std of test
accuracy and the gap to scratch at 100 labels (target: ≥ 10 points).

    python benchmarks/transfer.py --data-root ../shared/datasets            # full grid
    python benchmarks/transfer.py --data-root ../shared/datasets --labels 10,100 --seeds 0,1,2

Run folders go to ``benchmarks/runs/transfer/`` (an existing finished run is reused, so an
interrupted study continues where it stopped); results to
``benchmarks/results/transfer.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
RUNS = HERE / "runs" / "transfer"
RESULTS = HERE / "results" / "transfer.json"
#: epochs per label budget: small budgets need more passes for a comparable step count
EPOCHS = {10: 30, 100: 15, 1000: 6}


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t]


def _floats(text: str) -> list[float]:
    return [float(t) for t in text.split(",") if t]


def pretrain(args: argparse.Namespace) -> str:
    from droplab.runs import RunDir
    from droplab.tasks.classify import ClassifyConfig, run

    out = RUNS / "pretrain"
    if (out / "summary.json").exists():
        return str(out)
    cfg = ClassifyConfig.build(dataset="cifar10", data_root=args.data_root,
                         classes=[str(i) for i in range(5)], model="convnet", dropout=0.2,
                         dropout_where="all", epochs=args.pretrain_epochs, batch_size=128,
                         lr=0.1, lr_schedule="onecycle", augment="on", channels_last=True,
                         device=args.device, seed=0, out=str(out))
    resume = (out / "config.json").exists()
    s = run(cfg, resume=resume)
    print(f"pretrain: test_acc {s['test_acc']:.4f} in {s['time_s']:.0f} s", flush=True)
    RunDir.open(out)
    return str(out)


def finetune(args: argparse.Namespace, source: str, labels: int, strategy: str,
             dropout: float, seed: int) -> dict[str, Any]:
    from droplab.tasks.finetune import FinetuneConfig, run

    out = RUNS / f"k{labels}-{strategy}-p{dropout:g}-s{seed}"
    if (out / "summary.json").exists():
        return json.loads((out / "summary.json").read_text())
    cfg = FinetuneConfig.build(dataset="cifar10", data_root=args.data_root,
                         classes=[str(i) for i in range(5, 10)], labels_per_class=labels,
                         from_run=source, strategy=strategy, dropout=dropout,
                         epochs=EPOCHS.get(labels, 10), batch_size=32 if labels <= 100 else 64,
                         val_fraction=0.0, seed=seed, device=args.device, out=str(out))
    return run(cfg, resume=(out / "config.json").exists())


def _memoise_datasets() -> None:
    """Decode each dataset once per study: every fine-tuning run loads the same CIFAR
    classes, and decoding 30,000 JPEGs would otherwise dominate the small-budget runs."""
    import functools

    from droplab import data

    original = data.load_dataset

    @functools.lru_cache(maxsize=8)
    def cached(name: str, root: str | None, classes: tuple[str, ...] | None,
               image_size: int | None, seed: int) -> data.DatasetBundle:
        return original(name, root, list(classes) if classes else None,
                        image_size=image_size, seed=seed)

    def load(name: str, root: str | None = None, classes: list[str] | None = None, *,
             image_size: int | None = None, seed: int = 0, **kw: Any) -> data.DatasetBundle:
        if kw:
            return original(name, root, classes, image_size=image_size, seed=seed, **kw)
        return cached(name, root, tuple(classes) if classes else None, image_size, seed)

    data.load_dataset = load  # type: ignore[assignment]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", required=True, help="folder holding cifar10-jpg/")
    p.add_argument("--labels", type=_ints, default=[10, 100, 1000])
    p.add_argument("--strategies", default="scratch,linear-probe,full,gradual")
    p.add_argument("--dropouts", type=_floats, default=[0.0, 0.25, 0.5])
    p.add_argument("--seeds", type=_ints, default=[0, 1, 2])
    p.add_argument("--seeds-1000", type=_ints, default=None,
                   help="seeds for the 1000-label budget (default: --seeds)")
    p.add_argument("--pretrain-epochs", type=int, default=15)
    p.add_argument("--epochs", default=None,
                   help="fine-tuning epochs per budget, e.g. 10:30,100:15,1000:6")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    strategies = args.strategies.split(",")
    if args.epochs:
        EPOCHS.update({int(k): int(v) for k, v in (t.split(":") for t in args.epochs.split(","))})
    _memoise_datasets()

    t0 = time.perf_counter()
    source = pretrain(args)
    pre = json.loads((Path(source) / "summary.json").read_text())
    rows: list[dict[str, Any]] = []
    for labels in args.labels:
        seeds = args.seeds_1000 if labels >= 1000 and args.seeds_1000 else args.seeds
        for strategy in strategies:
            for dropout in args.dropouts:
                accs = []
                for seed in seeds:
                    s = finetune(args, source, labels, strategy, dropout, seed)
                    accs.append(s["test_acc"])
                    print(f"K={labels:<5} {strategy:<13} p={dropout:<5} seed={seed} "
                          f"acc={s['test_acc']:.4f} ({s['time_s']:.0f} s)", flush=True)
                rows.append({"labels_per_class": labels, "strategy": strategy,
                             "dropout": dropout, "seeds": seeds, "accs": accs,
                             "mean": statistics.fmean(accs),
                             "std": statistics.stdev(accs) if len(accs) > 1 else 0.0})

    def best(labels: int, strategy: str) -> float | None:
        vals = [r["mean"] for r in rows
                if r["labels_per_class"] == labels and r["strategy"] == strategy]
        return max(vals) if vals else None

    gaps = {}
    for labels in args.labels:
        scratch = best(labels, "scratch")
        tuned = [b for s in strategies if s != "scratch" and (b := best(labels, s)) is not None]
        if scratch is not None and tuned:
            gaps[str(labels)] = max(tuned) - scratch
    result = {
        "command": "python benchmarks/transfer.py " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "pretrain": {"classes": "0-4", "test_acc": pre["test_acc"], "epochs": pre["epochs"]},
        "rows": rows,
        "best_finetune_minus_scratch": gaps,
        "target_gap_at_100": 0.10,
        "pass_gap_at_100": gaps.get("100", -1.0) >= 0.10 if "100" in gaps else None,
        "wall_s": time.perf_counter() - t0,
        "torch_threads": torch.get_num_threads(),
    }
    from droplab.runs import atomic_write_json

    atomic_write_json(RESULTS, result)
    print("\n| labels/class | strategy | p=" + " | p=".join(f"{d:g}" for d in args.dropouts) + " |")
    print("|---|---|" + "---|" * len(args.dropouts))
    for labels in args.labels:
        for strategy in strategies:
            cells = []
            for d in args.dropouts:
                r = next(r for r in rows if r["labels_per_class"] == labels
                         and r["strategy"] == strategy and r["dropout"] == d)
                cells.append(f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f}")
            print(f"| {labels} | {strategy} | " + " | ".join(cells) + " |")
    print(json.dumps({"best_finetune_minus_scratch": gaps, "wall_s": result["wall_s"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
