"""``droplab style-apply``: stylise files or folders with a trained network; with dropout
kept on (:func:`droplab.uncertainty.mc_mode`), ``samples`` > 1 gives MC variations and
their diversity; optional ONNX export."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from droplab.config import Config, option, section
from droplab.data.images import (
    list_images,
    load_image,
    pil_to_tensor,
    resize_to,
    save_image,
)
from droplab.engine.config import RunConfig
from droplab.errors import InvalidValue
from droplab.evaluate.style import diversity
from droplab.models.style import (
    export_onnx,
)
from droplab.runs import RunDir
from droplab.runs.restore import load_style_net
from droplab.runtime import progress, resolve_device, seed_everything
from droplab.uncertainty import mc_mode


@dataclass
class StyleApplyConfig(Config):
    """Options of ``droplab style-apply``."""

    model: str = option("", positional=True, required=True, metavar="MODEL",
                        help="a style-train run folder or its checkpoint.pt")
    inputs: list[str] = option(factory=list, positional=True, nargs="*", metavar="IMG|DIR",
                               help="image files or folders to stylise")
    size: int | None = option(None, ge=16, le=8192, help="resize so the longer side is this")
    samples: int = option(1, ge=1, metavar="K",
                          help="K > 1 keeps dropout on and writes K variations per image")
    onnx: str | None = option(None, metavar="PATH", help="also export the network to ONNX")
    max_pixels: int = option(4096 * 4096, ge=1, metavar="N",
                             help="larger inputs are downscaled first (default 4096²)")
    run: RunConfig = section(RunConfig, title="run", help={
        "out": "folder for the stylised images (default runs/style-apply-<timestamp>)"})

    def validate(self) -> None:
        if not self.inputs and not self.onnx:
            raise InvalidValue("give images or folders to stylise (or --onnx PATH to export)")


def run_style_apply(cfg: StyleApplyConfig) -> dict[str, Any]:
    """Stylise images with a trained network; optional MC samples and ONNX export."""
    device = resolve_device(cfg.run.device)
    seed_everything(cfg.run.seed)
    net, _ = load_style_net(cfg.model, device)
    has_dropout = net.config.get("dropout", 0) > 0
    if cfg.samples > 1 and not has_dropout:
        raise InvalidValue("--samples > 1 needs a model trained with --dropout > 0 "
                           "(this one has no dropout, so every sample would be identical)")
    summary: dict[str, Any] = {"task": "style-apply", "model": str(cfg.model),
                               "samples": cfg.samples, "outputs": []}
    if cfg.onnx:
        export_onnx(net.cpu(), cfg.onnx)
        net.to(device)
        summary["onnx"] = str(cfg.onnx)
    if not cfg.inputs:
        return summary
    paths = list_images(cfg.inputs)
    for p in paths:  # every input readable before anything is written (no half-made folder)
        load_image(p, max_pixels=cfg.max_pixels)
    run = RunDir.create(cfg.run.out, "style-apply", resumable=False)  # refuses another run
    run.write_config(cfg, task="style-apply")
    out = run.path
    used: set[str] = set()
    divs, t_total = [], 0.0
    for p in progress(paths, desc="style-apply"):
        x = pil_to_tensor(resize_to(load_image(p, max_pixels=cfg.max_pixels), cfg.size))
        x = x[None].to(device)
        stem = p.stem
        k = 1
        while stem in used:
            k += 1
            stem = f"{p.stem}-{k}"
        used.add(stem)
        t0 = time.perf_counter()
        with torch.no_grad():
            if cfg.samples == 1:
                net.eval()
                ys = [net(x).clamp(0, 1)]
            else:
                with mc_mode(net):
                    ys = [net(x).clamp(0, 1) for _ in range(cfg.samples)]
        t_total += time.perf_counter() - t0
        if cfg.samples == 1:
            summary["outputs"].append(str(save_image(ys[0], out / f"{stem}.png")))
        else:
            for i, y in enumerate(ys):
                summary["outputs"].append(str(save_image(y, out / f"{stem}-s{i + 1}.png")))
            divs.append(diversity(torch.cat(ys)))
    summary.update({"out": str(out), "images": len(paths), "time_s": t_total,
                    "seconds_per_image": t_total / len(paths)})
    if divs:
        summary["diversity"] = float(np.mean(divs))
    run.write_summary(summary)
    return summary
