"""What does dropout do to a feed-forward stylisation network? (seed 000's claim)

    python benchmarks/style_dropout.py                  # 5 settings × 3 seeds, same budget
    python benchmarks/style_dropout.py --steps 60 --seeds 1 --eval-size 96   # a smoke run

Settings: spatial dropout (Dropout2d, Tompson et al. 2015) with p = 0, 0.1, 0.3 in the
residual blocks or the decoder (p = 0 is one setting), each trained with 3 seeds on the
same budget (steps, batch, crop size, style, loss encoder) on scikit-image's photos, and
evaluated in eval mode on ``../shared/images/content`` (held out from training):

- content / style loss under the two evaluation encoders (:class:`style_common.Judge`),
  SSIM to the content image;
- robustness: the change of those losses, and the mean absolute output change, when the
  input gets Gaussian noise (σ = 0.05) or is re-compressed as JPEG (quality 30);
- temporal stability on a synthetic camera pan (the photo shifted ``--pan-step`` pixels per
  frame): the ideal output is the previous output shifted by the same amount, so the
  warping error ``mean |y_t[:, :, :, :-d] − y_{t−1}[:, :, :, d:]|`` needs no optical flow;
- flicker of a static scene: the same photo with fresh small noise (σ = 0.01) per frame,
  mean frame-to-frame output change (the ideal is 0);
- MC diversity: 8 samples with dropout kept on (:func:`droplab.uncertainty.mc_mode`), mean
  pairwise RMS distance.

Per setting: mean and sample standard deviation over seeds, and the difference from p = 0
paired by seed (mean ± standard error). Writes ``benchmarks/results/style_dropout.json``.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from droplab.data.images import pil_to_tensor, tensor_to_pil
from droplab.evaluate.style import diversity
from droplab.fileio import atomic_write_json
from droplab.runs.restore import load_style_net
from droplab.tasks.style import StyleTrainConfig, run_style_train
from droplab.uncertainty import mc_mode
from style_common import RESULTS, RUNS, Judge, load, mean_of, say, shared_images, training_content

SETTINGS = [(0.0, "residual"), (0.1, "residual"), (0.3, "residual"), (0.1, "decoder"),
            (0.3, "decoder")]
LOWER_IS_BETTER = ("cifar-eval.style", "random-7919.style", "cifar-eval.content",
                   "random-7919.content", "noise.d_output", "jpeg.d_output",
                   "noise.d_style", "jpeg.d_style", "pan_warp_error", "flicker")


def name_of(p: float, where: str) -> str:
    return "p=0" if p == 0 else f"{where} p={p:g}"


def train(p: float, where: str, seed: int, args: argparse.Namespace, style: Path) -> str:
    out = RUNS / "style-dropout" / f"{args.net}-{where}-p{p:g}-seed{seed}-{args.steps}"
    cfg = StyleTrainConfig.build(
        style=[str(style)], content_dir=str(training_content()), steps=args.steps,
        image_size=args.train_size, batch_size=4, size=args.net, dropout=p,
        dropout_where=where, encoder="cifar", seed=seed, out=str(out), device="cpu",
        checkpoint_every=max(50, args.steps // 4))
    say(f"train {name_of(p, where)} seed {seed} …")
    run_style_train(cfg, resume=(out / "checkpoint.pt").exists())
    return str(out)


def jpeg(x: torch.Tensor, quality: int = 30) -> torch.Tensor:
    buf = io.BytesIO()
    tensor_to_pil(x).save(buf, format="JPEG", quality=quality)
    return pil_to_tensor(Image.open(buf).convert("RGB"))[None]


@torch.no_grad()
def evaluate(net: Any, judge: Judge, contents: list[torch.Tensor],
             style: torch.Tensor, args: argparse.Namespace) -> dict[str, float]:
    net.eval()
    gen = torch.Generator().manual_seed(1234)
    recs = []
    for x in contents:
        y = net(x).clamp(0, 1)
        base = judge(y, x, style)
        rec = dict(base)
        for kind, xp in (("noise", (x + 0.05 * torch.randn(x.shape, generator=gen)).clamp(0, 1)),
                         ("jpeg", jpeg(x))):
            yp = net(xp).clamp(0, 1)
            moved = judge(yp, x, style)
            rec[f"{kind}.d_output"] = float((yp - y).abs().mean())
            rec[f"{kind}.d_style"] = abs(moved["cifar-eval.style"] - base["cifar-eval.style"])
        d, w = args.pan_step, x.shape[-1] - args.pan_step * args.frames
        frames = [x[..., :, k * d:k * d + w] for k in range(args.frames)]
        ys = [net(f).clamp(0, 1) for f in frames]
        rec["pan_warp_error"] = statistics.fmean(
            float((b[..., :, :-d] - a[..., :, d:]).abs().mean()) for a, b in itertools.pairwise(ys))
        noisy = [net((x + 0.01 * torch.randn(x.shape, generator=gen)).clamp(0, 1)).clamp(0, 1)
                 for _ in range(args.frames)]
        rec["flicker"] = statistics.fmean(float((b - a).abs().mean())
                                          for a, b in itertools.pairwise(noisy))
        if float(net.config.get("dropout", 0)) > 0:
            with mc_mode(net):
                rec["mc_diversity"] = diversity(torch.cat([net(x).clamp(0, 1)
                                                           for _ in range(8)]))
        else:
            rec["mc_diversity"] = 0.0
        recs.append(rec)
    return mean_of(recs)


def aggregate(per_seed: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    base = per_seed["p=0"]
    out: dict[str, Any] = {}
    for name, runs in per_seed.items():
        row: dict[str, Any] = {}
        for k in runs[0]:
            vals = [r[k] for r in runs]
            row[k] = {"mean": statistics.fmean(vals),
                      "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}
            if name != "p=0" and len(base) == len(runs):
                diffs = [r[k] - b[k] for r, b in zip(runs, base)]
                se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else 0.0
                row[k]["diff_vs_p0"] = statistics.fmean(diffs)
                row[k]["diff_se"] = se
        out[name] = row
    return out


def verdict(table: dict[str, Any]) -> dict[str, list[str]]:
    """Per setting: the metrics where it is better / worse than p = 0 by more than 2 SE."""
    out: dict[str, list[str]] = {}
    for name, row in table.items():
        if name == "p=0":
            continue
        notes = []
        for k, v in row.items():
            if "diff_vs_p0" not in v or k in ("mc_diversity", "train_s"):  # not quality
                continue
            d, se = v["diff_vs_p0"], v["diff_se"]
            if se > 0 and abs(d) > 2 * se:
                better = (d < 0) if k in LOWER_IS_BETTER else (d > 0)
                notes.append(f"{'better' if better else 'worse'}: {k} ({d:+.4g} ± {se:.2g})")
        out[name] = notes
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", default="/work/shared/images")
    ap.add_argument("--net", default="fast", choices=("fast", "johnson"))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--train-size", type=int, default=128)
    ap.add_argument("--eval-size", type=int, default=256)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--pan-step", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--settings", default="", help="comma-separated WHERE:P (e.g. "
                    "residual:0.1,decoder:0.3); p = 0 always runs; default all five")
    ap.add_argument("--scale", default="full", help="a label for the scale, kept in the JSON")
    ap.add_argument("--busy", default="", help="a note on the machine's load, kept in the JSON")
    ap.add_argument("--out", default=str(RESULTS / "style_dropout.json"))
    args = ap.parse_args()
    settings = SETTINGS
    if args.settings:
        asked = [(float(p), w) for w, p in (x.split(":") for x in args.settings.split(","))]
        settings = [(0.0, "residual"), *[s for s in asked if s[0] > 0]]
    c0 = time.process_time()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    load_before = os.getloadavg()[0]
    contents, styles = shared_images(args.images)
    style_path = next(p for p in styles if p.stem == "starry_night")
    judge = Judge()
    held = [load(c, args.eval_size) for c in contents]
    style = load(style_path, args.eval_size)
    per_seed: dict[str, list[dict[str, float]]] = {}
    for p, where in settings:
        for seed in range(args.seeds):
            run = train(p, where, seed, args, style_path)
            net, _ = load_style_net(run)
            rec = evaluate(net, judge, held, style, args)
            summary = json.loads((Path(run) / "summary.json").read_text())
            rec["train_s"] = summary["time_s"]
            per_seed.setdefault(name_of(p, where), []).append(rec)
            say(f"{name_of(p, where)} seed {seed}: " + json.dumps(
                {k: round(v, 4) for k, v in rec.items()}))
    table = aggregate(per_seed)
    res = {"net": args.net, "steps": args.steps, "train_size": args.train_size,
           "eval_size": args.eval_size, "seeds": args.seeds, "style": style_path.name,
           "held_out": [c.name for c in contents], "settings": table,
           "verdict": verdict(table), "per_seed": per_seed,
           "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
           "load_average": load_before, "load_average_after": os.getloadavg()[0],
           "scale": args.scale, "busy": args.busy,
           "command": "python benchmarks/style_dropout.py " + " ".join(sys.argv[1:])}
    atomic_write_json(args.out, res)
    print(json.dumps({"verdict": res["verdict"]}, indent=1))


if __name__ == "__main__":
    main()
