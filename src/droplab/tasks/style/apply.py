"""``droplab style-apply``: stylise images, frame folders or videos with a trained network.

- one-style networks (``style-train``) and arbitrary-style networks (``style-train
  --arbitrary``: ``--style IMG[:WEIGHT] …`` mixes any style images by weight);
- ``--strength α``: arbitrary networks blend the target feature statistics with the
  content's own (Huang & Belongie 2017, section 7), one-style networks blend pixels;
- ``--preserve-color``: keep the content's chrominance, take the stylised luminance (YIQ;
  Gatys et al. 2016b);
- the CPU path (``--engine auto``): the network exported to ONNX in memory and run by
  onnxruntime with full graph optimisation, optionally int8 (``--quantize``); the torch
  path otherwise, and always for MC variations (``--samples K`` keeps dropout on with
  :func:`droplab.uncertainty.mc_mode`);
- sequences (:mod:`.video`): a video file or, with ``--frames``, folders of frames, with
  optional temporal smoothing (``--smooth β``) and the stability figures in the summary.

``--out x.png`` (one image) or ``--out x.mp4`` (one sequence) writes that file only;
otherwise ``--out DIR`` is a run folder (config.json, summary.json, the outputs).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from droplab.config import Config, option, section
from droplab.data.images import (
    is_image_path,
    list_images,
    load_image,
    pil_to_tensor,
    read_image,
    resize_to,
    save_image,
)
from droplab.engine.config import RunConfig
from droplab.errors import InvalidValue, UserError
from droplab.evaluate.style import diversity
from droplab.models.style import QUANTIZE, AdaINNet, OnnxStylizer, TransformerNet, export_onnx
from droplab.models.style.onnx import style_graph_path
from droplab.runs import RunDir
from droplab.runs.restore import load_style_net
from droplab.runtime import progress, resolve_device, seed_everything
from droplab.tasks.style.colour import rgb_to_yiq, yiq_to_rgb
from droplab.tasks.style.common import parse_styles
from droplab.tasks.style.video import (
    FrameSource,
    Smoother,
    Stability,
    VideoWriter,
    is_video_path,
    open_frames,
    open_video,
)
from droplab.uncertainty import mc_mode

ENGINES = ("auto", "torch", "onnx")


@dataclass
class StyleApplyConfig(Config):
    """Options of ``droplab style-apply``."""

    model: str = option("", positional=True, required=True, metavar="MODEL",
                        help="a style-train run folder or its checkpoint.pt")
    inputs: list[str] = option(factory=list, positional=True, nargs="*",
                               metavar="IMG|DIR|VIDEO",
                               help="image files or folders, video files, frame folders "
                               "(--frames)")
    styles: list[str] = option(factory=list, flag="--style", nargs="+",
                               metavar="IMG[:WEIGHT]",
                               help="arbitrary-style models: one or more style images, "
                               "mixed by weight")
    strength: float = option(1.0, gt=0, le=1, metavar="α",
                             help="how much style: 1 full, towards 0 the content (arbitrary "
                             "models: feature statistics; one-style models: pixels)")
    preserve_color: bool = option(False, help="keep the content's colours (luminance-only "
                                  "style transfer)")
    style_scale: float = option(1.0, gt=0, le=16, metavar="S",
                                help="style image size: its longer side is S × the content's")
    size: int | None = option(None, ge=16, le=8192, help="resize so the longer side is this")
    samples: int = option(1, ge=1, metavar="K",
                          help="K > 1 keeps dropout on and writes K variations per image")
    engine: str = option("auto", choices=ENGINES, what="engine",
                         help="auto (onnxruntime on the CPU when installed, else torch), "
                         "torch or onnx")
    quantize: str = option("none", choices=QUANTIZE, what="quantisation",
                           help="onnx engine: none, dynamic or static int8 (onnxruntime's "
                           "quantisation tools)")
    threads: int | None = option(None, ge=1, help="CPU threads (default: torch's)")
    frames: bool = option(False, help="treat folders as ordered frame sequences (a video)")
    smooth: float = option(0.0, ge=0, lt=1, metavar="β",
                           help="sequences: temporal smoothing of the output, y'ₜ = β·y'ₜ₋₁ "
                           "+ (1 − β)·yₜ (0 off)")
    fps: float | None = option(None, gt=0, help="frame rate of a video written from frames "
                               "(default: the source's, or 25)")
    onnx: str | None = option(None, metavar="PATH", help="also export the network to ONNX")
    max_pixels: int = option(4096 * 4096, ge=1, metavar="N",
                             help="larger inputs are downscaled first (default 4096²)")
    run: RunConfig = section(RunConfig, title="run", help={
        "out": "x.png (one image) or x.mp4 (one sequence) writes that file; else a folder "
               "for the outputs (default runs/style-apply-<timestamp>)"})

    def validate(self) -> None:
        if not self.inputs and not self.onnx:
            raise InvalidValue("give images, folders or videos to stylise (or --onnx PATH "
                               "to export)")
        if self.styles:
            parse_styles(self.styles)
        if self.samples > 1 and self.engine == "onnx":
            raise InvalidValue("--samples > 1 keeps dropout on, which the ONNX graph leaves "
                               "out; use --engine torch (or auto)")


Styler = Callable[[torch.Tensor], torch.Tensor]


def _keep_colour(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Luminance of ``y``, chrominance of ``x`` (YIQ)."""
    yiq = rgb_to_yiq(x)
    yiq[:, :1] = rgb_to_yiq(y)[:, :1]
    return yiq_to_rgb(yiq)


class Stylizer:
    """The trained network on the chosen engine, with the style, strength and colour
    options bound: ``stylizer(x)`` → the stylised image(s), clamped to [0, 1]."""

    def __init__(self, net: TransformerNet | AdaINNet, cfg: StyleApplyConfig,
                 device: torch.device, calibration: list[torch.Tensor]) -> None:
        self.net, self.cfg, self.device = net, cfg, device
        self.arbitrary = isinstance(net, AdaINNet)
        if self.arbitrary and not cfg.styles:
            raise InvalidValue("this is an arbitrary-style model: give --style IMG[:WEIGHT] "
                               "(one or more style images)")
        if not self.arbitrary and cfg.styles:
            raise InvalidValue("this model learned one style; --style is for models trained "
                               "with style-train --arbitrary")
        if self.arbitrary and cfg.quantize == "static":
            raise InvalidValue("--quantize static supports one-style models; use dynamic")
        self.engine = self._pick_engine()
        self.onnx: OnnxStylizer | None = None
        if self.engine == "onnx":
            self.onnx = OnnxStylizer(net.cpu(), quantization=cfg.quantize,
                                     calibration=calibration, threads=cfg.threads)
            net.to(device)
        self.styles: list[tuple[torch.Tensor, float]] = []
        if self.arbitrary:
            self.styles = [(read_image(p, None, max_pixels=cfg.max_pixels), w)
                           for p, w in parse_styles(cfg.styles)]
        self._stats: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def _pick_engine(self) -> str:
        cfg = self.cfg
        if cfg.engine == "torch" or cfg.samples > 1 or self.device.type != "cpu":
            if cfg.engine == "onnx":
                raise InvalidValue("--engine onnx runs on the CPU; drop --device or use torch")
            return "torch"
        if cfg.engine == "onnx":
            return "onnx"
        try:
            import onnxruntime  # noqa: F401  # optional dependency: auto falls back to torch
        except ImportError:
            return "torch"
        return "onnx"

    def _style_stats(self, hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixed target statistics, the styles resized relative to the content (cached)."""
        if hw not in self._stats:
            long_side = round(max(hw) * self.cfg.style_scale)
            mean = std = None
            total = sum(w for _, w in self.styles)
            for img, w in self.styles:
                s = long_side / max(img.shape[-2:])
                size = (max(16, round(img.shape[-2] * s)), max(16, round(img.shape[-1] * s)))
                img_s = F.interpolate(img, size=size, mode="bilinear", antialias=True,
                                      align_corners=False)
                if self.onnx is not None:
                    m, sd = self.onnx.style_stats(img_s)
                else:
                    with torch.no_grad():
                        m, sd = self.net.style_stats(img_s.to(self.device))  # type: ignore[union-attr]
                m, sd = m * (w / total), sd * (w / total)
                mean = m if mean is None else mean + m
                std = sd if std is None else std + sd
            assert mean is not None and std is not None
            self._stats[hw] = (mean, std)
        return self._stats[hw]

    def _raw(self, x: torch.Tensor) -> torch.Tensor:
        a = self.cfg.strength
        if self.arbitrary:
            mean, std = self._style_stats(tuple(x.shape[-2:]))  # type: ignore[arg-type]
            if self.onnx is not None:
                return self.onnx.stylize(x.cpu(), mean, std, a).to(x.device)
            return self.net.stylize(x, mean.to(x.device), std.to(x.device), a)  # type: ignore[union-attr]
        y = self.onnx(x.cpu()).to(x.device) if self.onnx is not None else self.net(x)
        return y if a >= 1 else a * y + (1 - a) * x

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            y = self._raw(x).clamp(0, 1)
            if self.cfg.preserve_color:
                y = _keep_colour(y, x).clamp(0, 1)
        return y

    def samples(self, x: torch.Tensor, k: int) -> list[torch.Tensor]:
        """``k`` MC variations (dropout on, torch engine)."""
        with mc_mode(self.net):
            return [self(x) for _ in range(k)]


def _resolve_inputs(cfg: StyleApplyConfig) -> tuple[list[Path], list[FrameSource]]:
    """Still images and frame sequences, every sequence opened (and checked) up front."""
    stills: list[Path] = []
    seqs: list[FrameSource] = []
    for item in cfg.inputs:
        p = Path(item)
        if is_video_path(p):
            seqs.append(open_video(p))
        elif cfg.frames and p.is_dir():
            seqs.append(open_frames(p, cfg.fps))
        else:
            stills.extend(list_images([p]))
    return stills, seqs


def _single_output(cfg: StyleApplyConfig, stills: list[Path], seqs: list[FrameSource]
                   ) -> Path | None:
    """``--out x.png`` / ``--out x.mp4``: the one file to write, checked against the inputs."""
    out = cfg.run.out
    if not out:
        return None
    if is_image_path(out) and not is_video_path(out):
        if len(stills) != 1 or seqs or cfg.samples > 1:
            raise InvalidValue(f"--out {out} is one image; give exactly one input image "
                               "(without --samples), or --out DIR for several outputs")
        return Path(out)
    if is_video_path(out):
        if len(seqs) != 1 or stills:
            raise InvalidValue(f"--out {out} is one video; give exactly one video or frame "
                               "folder (--frames), or --out DIR")
        return Path(out)
    return None


def run_style_apply(cfg: StyleApplyConfig) -> dict[str, Any]:
    """Stylise images and sequences with a trained network; optional ONNX export."""
    device = resolve_device(cfg.run.device)
    seed_everything(cfg.run.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    net, _ = load_style_net(cfg.model, device)
    has_dropout = float(net.config.get("dropout", 0) or 0) > 0
    if cfg.samples > 1 and not has_dropout:
        raise InvalidValue("--samples > 1 needs a model trained with --dropout > 0 "
                           "(this one has no dropout, so every sample would be identical)")
    stills, seqs = _resolve_inputs(cfg)  # sequences are checked before anything is written
    single = _single_output(cfg, stills, seqs)
    summary: dict[str, Any] = {"task": "style-apply", "model": str(cfg.model),
                               "kind": net.kind, "samples": cfg.samples, "outputs": []}
    if cfg.onnx:
        export_onnx(net.cpu(), cfg.onnx)
        net.to(device)
        summary["onnx"] = [str(cfg.onnx)] + ([str(style_graph_path(cfg.onnx))]
                                             if isinstance(net, AdaINNet) else [])
    if not stills and not seqs:
        return summary
    for p in stills:  # every input readable before anything is written (no half-made folder)
        load_image(p, max_pixels=cfg.max_pixels)
    calibration = ([_read(p, cfg) for p in stills[:8]]
                   if cfg.quantize == "static" else [])
    styler = Stylizer(net, cfg, device, calibration)
    summary["engine"] = styler.engine + (f" ({cfg.quantize} int8)" if styler.onnx is not None
                                         and cfg.quantize != "none" else "")
    run: RunDir | None = None
    if single is None:
        run = RunDir.create(cfg.run.out, "style-apply", resumable=False)  # refuses another run
        run.write_config(cfg, task="style-apply")
    divs, t_total = [], 0.0
    used: set[str] = set()
    for p in progress(stills, desc="style-apply"):
        x = _read(p, cfg).to(device)
        t0 = time.perf_counter()
        ys = styler.samples(x, cfg.samples) if cfg.samples > 1 else [styler(x)]
        t_total += time.perf_counter() - t0
        if single is not None:
            summary["outputs"].append(str(save_image(ys[0], single)))
            continue
        assert run is not None
        stem = _unique(p.stem, used)
        if cfg.samples == 1:
            summary["outputs"].append(str(save_image(ys[0], run / f"{stem}.png")))
        else:
            for i, y in enumerate(ys):
                summary["outputs"].append(str(save_image(y, run / f"{stem}-s{i + 1}.png")))
            divs.append(diversity(torch.cat(ys)))
    if stills:
        summary.update({"images": len(stills), "time_s": t_total,
                        "seconds_per_image": t_total / len(stills)})
    if divs:
        summary["diversity"] = float(np.mean(divs))
    if seqs:
        summary["sequences"] = [_sequence(s, styler, cfg, device, run, single, used)
                                for s in seqs]
        summary["outputs"] += [s["output"] for s in summary["sequences"]]
    summary["out"] = str(single if single is not None else run.path)  # type: ignore[union-attr]
    if run is not None:
        run.write_summary(summary)
    return summary


def _read(p: Path, cfg: StyleApplyConfig) -> torch.Tensor:
    return pil_to_tensor(resize_to(load_image(p, max_pixels=cfg.max_pixels), cfg.size))[None]


def _unique(stem: str, used: set[str]) -> str:
    name, k = stem, 1
    while name in used:
        k += 1
        name = f"{stem}-{k}"
    used.add(name)
    return name


def _sequence(seq: FrameSource, styler: Stylizer, cfg: StyleApplyConfig, device: torch.device,
              run: RunDir | None, single: Path | None, used: set[str]) -> dict[str, Any]:
    """Stylise one sequence frame by frame; a video is written only when complete."""
    smooth, stab = Smoother(cfg.smooth), Stability()
    name = _unique(seq.name, used)
    if single is not None:
        dest: Path = single
    else:
        assert run is not None
        dest = run / f"{name}.mp4"
    writer = VideoWriter(dest, cfg.fps or seq.fps)
    n, t_style = 0, 0.0
    try:
        for img in progress(seq.frames(), desc=seq.name):
            x = pil_to_tensor(resize_to(img, cfg.size))[None].to(device)
            t0 = time.perf_counter()
            y = smooth(styler(x))
            t_style += time.perf_counter() - t0
            stab.add(x, y)
            writer.append(y)
            n += 1
        out = writer.commit()
    except BaseException:
        writer.abort()
        raise
    if n == 0:
        raise UserError(f"{seq.path} holds no frames")
    return {"input": str(seq.path), "kind": seq.kind, "output": str(out), "frames": n,
            "fps_source": seq.fps, "smooth": cfg.smooth, "time_s": t_style,
            "frames_per_s": n / max(t_style, 1e-9), **stab.summary()}
