"""Cost of T-sample MC dropout relative to one deterministic forward pass.

torchvision ``resnet18`` (``weights=None``) with a dropout head added by
:func:`droplab.surgery.add_dropout` (``p=0.5`` before ``fc``), eval mode, a random batch.
Each method predicts ``T`` softmax samples; the reference is one plain eval forward of
the same batch measured in the same run. Methods:

* ``cached_loop``   – :func:`droplab.uncertainty.mc_predict`, prefix cached, suffix looped
* ``cached_auto``   – the default (``chunk_size=None``: measures loop vs replicas)
* ``cached_batched``– prefix cached, all ``T`` suffix replicas in one batch
* ``full_loop``     – ``T`` full forward passes (``cache_prefix=False, chunk_size=1``)
* ``replicate``     – the input repeated ``T`` times in one batch (what baal and
  torch-uncertainty do by default; ``cache_prefix=False, chunk_size=T``)

Times are medians of ``--repeats`` runs after one warm-up; the CPU may be shared, so
only the ratios mean something. ``--threads`` sets torch's intra-op threads (1 is the
stable choice on a loaded machine). Writes ``benchmarks/results/mc.json``.

    python benchmarks/mc.py                       # 16×3×128×128, T = 30
    python benchmarks/mc.py --batch 32 --size 224 --repeats 3   # the full-size case
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision

from droplab.runs import atomic_write_json
from droplab.surgery import add_dropout
from droplab.uncertainty import mc_predict, prefix_plan

HERE = Path(__file__).resolve().parent


def _time(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up (also builds and caches the fx plan)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-replicate", action="store_true",
                    help="skip the T-fold replicated batch (the memory-hungry method)")
    ap.add_argument("--out", default=str(HERE / "results" / "mc.json"))
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    add_dropout(model, "head", p=0.5)
    model.eval()
    x = torch.randn(args.batch, 3, args.size, args.size)
    T = args.samples
    plan = prefix_plan(model)
    assert plan is not None

    def reference() -> None:
        with torch.no_grad():
            model(x)

    methods: dict[str, Callable[[], Any]] = {
        "cached_loop": lambda: mc_predict(model, x, T, chunk_size=1),
        "cached_auto": lambda: mc_predict(model, x, T),
        "cached_batched": lambda: mc_predict(model, x, T, chunk_size=T),
        "full_loop": lambda: mc_predict(model, x, T, chunk_size=1, cache_prefix=False),
    }
    if not args.skip_replicate:
        methods["replicate"] = lambda: mc_predict(model, x, T, chunk_size=T, cache_prefix=False)

    t_ref = _time(reference, args.repeats)
    print(f"one deterministic forward ({args.batch}×3×{args.size}×{args.size}): {t_ref * 1e3:.1f} ms")
    results: dict[str, Any] = {}
    for name, fn in methods.items():
        t = _time(fn, args.repeats)
        results[name] = {"seconds": t, "ratio_to_one_forward": t / t_ref}
        print(f"{name:>15}: {t * 1e3:9.1f} ms  {t / t_ref:6.2f}× one forward")
    summary = {
        "benchmark": "mc",
        "model": "torchvision resnet18 (weights=None) + dropout head p=0.5 before fc",
        "input": [args.batch, 3, args.size, args.size],
        "samples": T,
        "repeats": args.repeats,
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "prefix_ops": plan.n_prefix,
        "suffix_ops": plan.n_suffix,
        "one_forward_s": t_ref,
        "methods": results,
        "speedup_cached_vs_full_loop": results["full_loop"]["seconds"]
        / results["cached_auto"]["seconds"],
    }
    atomic_write_json(args.out, summary)
    print(f"wrote {args.out}")
    return summary


if __name__ == "__main__":
    main()
