"""Benchmark droplab's dropout layers against torch, timm and torchvision.

Forward + backward time of every variant on one (N, C, H, W) float32 tensor
(64×128×28×28 by default), as a ratio to ``torch.nn.Dropout`` and ``torch.nn.Dropout2d``
measured in the same run (variants interleaved so that load changes hit all of them
alike): the median wall-clock time, and the CPU time of each variant's best round (on a
machine shared with other jobs the CPU-time ratios are the steadier figure), plus each variant's measured drop fraction at p = 0.1, block 7,
and the DropBlock drop fraction at p = 0.1 for several map sizes (droplab vs timm vs
torchvision).

DropConnect cannot sit between layers, so it is timed on layers that fit the tensor:
``DropConnectConv2d`` wrapping ``nn.Conv2d(C, C, 1)`` (a 1×1 convolution over the whole
tensor) and ``DropConnectLinear`` wrapping ``nn.Linear(W, W)`` (applied to the last dim);
the plain layers are timed too, so their overhead can be read off.

    python benchmarks/layers.py            # full run, ~ a few minutes on 2 busy cores
    python benchmarks/layers.py --quick    # fewer repeats, smaller fraction samples
    python benchmarks/layers.py --channels-last   # the input in channels-last layout

Writes ``benchmarks/results/layers.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from droplab import layers as L
from droplab.runs import atomic_write_json

RESULTS = Path(__file__).resolve().parent / "results" / "layers.json"


def optional_baselines(p: float, block: int) -> dict[str, nn.Module]:
    """timm's and torchvision's DropBlock, when installed."""
    out: dict[str, nn.Module] = {}
    try:
        import timm
        from timm.layers import drop as timm_drop

        out[f"timm {timm.__version__} DropBlock2d (couple_channels=True)"] = (
            timm_drop.DropBlock2d(p, block, couple_channels=True))
        out[f"timm {timm.__version__} DropBlock2d (couple_channels=False)"] = (
            timm_drop.DropBlock2d(p, block, couple_channels=False))
        if hasattr(timm_drop, "drop_block_fast_2d"):  # older timm: separate fast variant
            out[f"timm {timm.__version__} DropBlock2d (fast=True)"] = timm_drop.DropBlock2d(
                p, block, fast=True)
            out[f"timm {timm.__version__} DropBlock2d (fast=False)"] = timm_drop.DropBlock2d(
                p, block, fast=False)
    except ImportError:
        pass
    try:
        import torchvision
        from torchvision.ops import DropBlock2d as TVDropBlock2d

        out[f"torchvision {torchvision.__version__} DropBlock2d"] = TVDropBlock2d(p, block)
    except ImportError:
        pass
    return out


def variants(p: float, block: int, channels: int, width: int) -> dict[str, nn.Module]:
    conv = nn.Conv2d(channels, channels, 1)
    lin = nn.Linear(width, width)
    mods: dict[str, nn.Module] = {
        "torch nn.Dropout": nn.Dropout(p),
        "torch nn.Dropout2d": nn.Dropout2d(p),
        "droplab Dropout": L.Dropout(p),
        "droplab SpatialDropout": L.SpatialDropout(p),
        "droplab GaussianDropout": L.GaussianDropout(p),
        "droplab AlphaDropout": L.AlphaDropout(p),
        f"droplab DropBlock2d (block {block})": L.DropBlock2d(p, block),
        f"droplab DropBlock2d (block {block}, shared_channels)": L.DropBlock2d(
            p, block, shared_channels=True),
        "droplab DropPath (row)": L.DropPath(p),
        "droplab ConcreteDropout (no layer)": L.ConcreteDropout(p),
        f"plain nn.Conv2d({channels}, {channels}, 1)": conv,
        f"droplab DropConnectConv2d.from_module(nn.Conv2d({channels}, {channels}, 1))": (
            L.DropConnectConv2d.from_module(conv, p)),
        f"plain nn.Linear({width}, {width}) on the last dim": lin,
        f"droplab DropConnectLinear.from_module(nn.Linear({width}, {width}))": (
            L.DropConnectLinear.from_module(lin, p)),
    }
    mods.update(optional_baselines(p, block))
    return mods


#: variants whose output zeros are the dropped units (others add noise or act on weights)
ZEROING = ("torch nn.Dropout", "droplab Dropout", "droplab SpatialDropout", "droplab DropPath")


def is_zeroing(name: str) -> bool:
    return name.startswith(ZEROING) or "DropBlock2d" in name


def time_forward_backward(mods: dict[str, nn.Module], x: torch.Tensor, repeats: int,
                          warmup: int = 2) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall-clock and CPU seconds (``time.process_time``: all threads) of each variant.

    On a machine shared with other jobs the wall clock also counts the time this process
    waited for a core; CPU time does not, so its ratios are the steadier figure there.
    """
    grad = torch.ones_like(x)
    wall: dict[str, list[float]] = {name: [] for name in mods}
    cpu: dict[str, list[float]] = {name: [] for name in mods}
    for r in range(warmup + repeats):
        for name, mod in mods.items():  # interleaved: every round times every variant
            x.grad = None
            start, start_cpu = time.perf_counter(), time.process_time()
            y = mod(x)
            y.backward(grad)
            elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
            if r >= warmup:
                wall[name].append(elapsed)
                cpu[name].append(elapsed_cpu)
    return wall, cpu


@torch.no_grad()
def zero_fraction(mod: nn.Module, shape: tuple[int, ...], calls: int) -> float:
    """Fraction of exact zeros in ``mod(ones)``, pooled over ``calls`` fresh draws."""
    x = torch.ones(shape)
    return sum(float((mod(x) == 0).double().mean()) for _ in range(calls)) / calls


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats and samples")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds (default 15, quick 5)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--channels", type=int, default=128)
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--p", type=float, default=0.1)
    ap.add_argument("--block", type=int, default=7)
    ap.add_argument("--channels-last", action="store_true",
                    help="time on a channels-last input (as in channels_last training)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (1 is steadier on a shared CPU)")
    ap.add_argument("--note", default="", help="free text stored with the results "
                    "(e.g. 'machine busy')")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (5 if args.quick else 15)
    torch.manual_seed(0)

    n, c, s = args.batch, args.channels, args.size
    mods = variants(args.p, args.block, c, s)
    for m in mods.values():
        m.train()
    x = torch.randn(n, c, s, s)
    if args.channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    print(f"timing {len(mods)} variants on {tuple(x.shape)} float32, {repeats} rounds",
          file=sys.stderr)
    times, cpu_times = time_forward_backward(mods, x, repeats)
    med = {name: statistics.median(t) for name, t in times.items()}
    ref, ref2d = med["torch nn.Dropout"], med["torch nn.Dropout2d"]
    # CPU time: the least-disturbed round (min) of each variant
    cpu = {name: min(t) for name, t in cpu_times.items()}
    cref, cref2d = cpu["torch nn.Dropout"], cpu["torch nn.Dropout2d"]

    # per-sample variants (DropPath, shared DropBlock masks) need many samples: pool calls
    frac_shape, calls = (n, c, s, s), (3 if args.quick else 10)
    rows = []
    for name, mod in mods.items():
        zeroing = is_zeroing(name)
        rows.append({
            "variant": name,
            "median_ms": round(med[name] * 1e3, 2),
            "vs_nn_dropout": round(med[name] / ref, 3),
            "vs_nn_dropout2d": round(med[name] / ref2d, 3),
            "cpu_ms": round(cpu[name] * 1e3, 2),
            "cpu_vs_nn_dropout": round(cpu[name] / cref, 3),
            "cpu_vs_nn_dropout2d": round(cpu[name] / cref2d, 3),
            "drop_fraction": round(zero_fraction(mod, frac_shape, calls), 4) if zeroing else None,
        })

    # DropBlock drop fraction vs map size (block 7, p = 0.1); many channels for precision
    by_size: dict[str, dict[str, float]] = {}
    base = {k: v for k, v in mods.items() if "DropBlock2d" in k}
    for size in (8, 14, 28):
        shape = (64, 32 * (28 // size) ** 2, size, size)
        by_size[str(size)] = {k: round(zero_fraction(m, shape, calls), 4)
                              for k, m in base.items()}

    result = {
        "command": "python benchmarks/layers.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "shape": [n, c, s, s],
        "memory_format": "channels_last" if args.channels_last else "contiguous",
        "p": args.p,
        "block_size": args.block,
        "repeats": repeats,
        "timing": ("forward + backward (y.backward(ones)) of interleaved rounds: wall clock "
                   "median, and CPU time (process_time, all threads) of the best round"),
        "reference_ms": {"nn.Dropout": round(ref * 1e3, 2), "nn.Dropout2d": round(ref2d * 1e3, 2)},
        "variants": rows,
        "dropblock_fraction_by_map_size": by_size,
        "env": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "load_average_1min": round(os.getloadavg()[0], 2),
            "cpus": os.cpu_count(),
            "note": args.note,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, result)
    print_table(result)
    return result


def print_table(result: dict) -> None:
    line: Callable[[str], None] = print
    line(f"| variant | wall ms | × nn.Dropout | × nn.Dropout2d | CPU ms | CPU × nn.Dropout "
         f"| CPU × nn.Dropout2d | drop fraction (p={result['p']}) |")
    line("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in result["variants"]:
        frac = "–" if r["drop_fraction"] is None else f"{r['drop_fraction']:.4f}"
        line(f"| {r['variant']} | {r['median_ms']:.1f} | {r['vs_nn_dropout']:.2f} | "
             f"{r['vs_nn_dropout2d']:.2f} | {r['cpu_ms']:.1f} | {r['cpu_vs_nn_dropout']:.2f} | "
             f"{r['cpu_vs_nn_dropout2d']:.2f} | {frac} |")
    line("")
    sizes = list(result["dropblock_fraction_by_map_size"])
    line(f"| DropBlock, p={result['p']}, block {result['block_size']} | "
         + " | ".join(f"{s}×{s}" for s in sizes) + " |")
    line("|---|" + "---:|" * len(sizes))
    names = result["dropblock_fraction_by_map_size"][sizes[0]]
    for name in names:
        vals = [result["dropblock_fraction_by_map_size"][s][name] for s in sizes]
        line(f"| {name} | " + " | ".join(f"{v:.4f}" for v in vals) + " |")


if __name__ == "__main__":
    main()
