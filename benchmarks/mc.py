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

``--matrix`` runs issue 13's compatibility matrix instead (torchvision, timm and droplab
models, ``weights=None``): for each model the cached MC time (T passes, the default
``mc_predict``) and T full passes, both divided by one eval forward of the same batch,
where the deterministic prefix ends and its share of the forward FLOPs; it writes
``benchmarks/results/mc_matrix.json``::

    python benchmarks/mc.py --matrix --batch 8 --size 224 --repeats 3   # quiet machine
    python benchmarks/mc.py --matrix --batch 2 --size 64 --repeats 1    # a quick look
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
from droplab.surgery import add_dropout, find_dropout, set_dropout_rate
from droplab.tasks.inspect import describe
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


def _matrix_models(size: int) -> dict[str, Callable[[], torch.nn.Module]]:
    """Issue 13's matrix for ``size``-pixel inputs; models without any source get a
    dropout head (p = 0.2)."""
    import timm

    from droplab.models.classifiers import ModelConfig, build_model

    def tv(name: str, head: bool = False, **kw: Any) -> Callable[[], torch.nn.Module]:
        def build() -> torch.nn.Module:
            model = torchvision.models.get_model(name, weights=None, **kw)
            if head:
                add_dropout(model, "head", p=0.2)
            return model
        return build

    def tm(name: str, **kw: Any) -> Callable[[], torch.nn.Module]:
        return lambda: timm.create_model(name, pretrained=False, **kw)

    def dl(name: str, **kw: Any) -> Callable[[], torch.nn.Module]:
        return lambda: build_model(ModelConfig(name=name, dropout=0.3, **kw), (3, 32, 32), 10)

    return {
        "tv:resnet18+head": tv("resnet18", head=True),
        "tv:mobilenet_v3_small": tv("mobilenet_v3_small"),
        "tv:efficientnet_b0": tv("efficientnet_b0"),
        "tv:convnext_tiny": tv("convnext_tiny"),
        "tv:densenet121(drop_rate=0.2)": tv("densenet121", drop_rate=0.2),
        "tv:regnet_y_400mf+head": tv("regnet_y_400mf", head=True),
        "tv:swin_t": tv("swin_t"),
        "tv:vit_b_16(dropout=0.1,attention_dropout=0.1)": tv("vit_b_16", dropout=0.1,
                                                             attention_dropout=0.1,
                                                             image_size=size),
        "timm:resnet18(drop_rate=0.2,drop_path_rate=0.1)": tm("resnet18", drop_rate=0.2,
                                                            drop_path_rate=0.1),
        "timm:vit_tiny_patch16_224(0.1,0.1,0.1)": tm("vit_tiny_patch16_224", drop_rate=0.1,
                                                     attn_drop_rate=0.1, drop_path_rate=0.1,
                                                     img_size=size),
        "timm:convnext_atto(drop_path_rate=0.1)": tm("convnext_atto", drop_path_rate=0.1),
        "timm:efficientnet_b0(head rate 0.2)": tm("efficientnet_b0"),
        "droplab:mlp": dl("mlp"),
        "droplab:lenet": dl("lenet"),
        "droplab:convnet": dl("convnet", dropout_where="all"),
        "droplab:resnet18-cifar": dl("resnet18-cifar"),
        "droplab:tv:resnet18": dl("tv:resnet18"),
    }


def _percent(share: float | None) -> str:
    return "?" if share is None else f"{100 * share:.0f}%"


def _ratios(model: torch.nn.Module, x: torch.Tensor, T: int,
            repeats: int) -> tuple[float, float, float]:
    """Seconds of one eval forward, of cached MC (T passes) and of T full passes."""

    def forward() -> None:
        with torch.no_grad():
            model(x)

    return (_time(forward, repeats), _time(lambda: mc_predict(model, x, T), repeats),
            _time(lambda: mc_predict(model, x, T, chunk_size=1, cache_prefix=False), repeats))


def matrix(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--matrix`` run (module docstring)."""
    torch.set_num_threads(args.threads)
    T = args.samples
    rows: dict[str, Any] = {}
    for name, build in _matrix_models(args.size).items():
        if args.models and not any(m in name for m in args.models):
            continue
        torch.manual_seed(0)
        model = build().eval()
        if name.startswith("timm:efficientnet_b0"):
            set_dropout_rate(model, 0.2)  # its F.dropout head exists at rate 0
        size = 32 if name.startswith("droplab:") else args.size
        x = torch.randn(args.batch, 3, size, size)
        info = describe(model, x)

        t_ref, t_cached, t_full = _ratios(model, x, T, args.repeats)
        plan = info["plan"]
        rows[name] = {
            "input": list(x.shape),
            "sources": len(find_dropout(model)),
            "counts": info["counts"],
            "prefix_ends_at": plan.get("first_stochastic"),
            "prefix_flop_share": plan.get("prefix_share"),
            "fallback": None if plan["cached"] else plan["reason"],
            "one_forward_s": t_ref,
            "cached_mc_ratio": t_cached / t_ref,
            "full_passes_ratio": t_full / t_ref,
        }
        print(f"{name:>48}: {rows[name]['sources']:3d} sources, cached {t_cached / t_ref:6.2f}×, "
              f"full {t_full / t_ref:6.2f}× one forward; prefix ends at "
              f"{plan.get('first_stochastic')} ({_percent(plan.get('prefix_share'))} of FLOPs)",
              flush=True)
        _write_matrix(args, rows)  # after every model: a long run keeps what it measured
    return _write_matrix(args, rows, final=True)


def _write_matrix(args: argparse.Namespace, rows: dict[str, Any],
                  final: bool = False) -> dict[str, Any]:
    summary = {
        "benchmark": "mc-matrix",
        "samples": args.samples,
        "batch": args.batch,
        "size": args.size,
        "repeats": args.repeats,
        "threads": args.threads,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "machine": platform.machine(),
        "note": args.note,
        "models": rows,
        "complete": final,
    }
    out = args.out if args.out != str(HERE / "results" / "mc.json") else str(
        HERE / "results" / "mc_matrix.json")
    atomic_write_json(out, summary)
    if final:
        print(f"wrote {out}")
    return summary


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
    ap.add_argument("--matrix", action="store_true", help="issue 13's model matrix")
    ap.add_argument("--models", nargs="*", default=[], help="matrix: only names containing these")
    ap.add_argument("--note", default="", help="recorded in the JSON (e.g. 'machine busy')")
    args = ap.parse_args(argv)
    if args.matrix:
        return matrix(args)

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
