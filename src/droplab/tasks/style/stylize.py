"""``droplab stylize``: Gatys et al. 2016, "Image style transfer using convolutional neural
networks" — optimise the pixels of an image so its encoder features match the content image
and its Gram matrices match the style image(s). L-BFGS or Adam, start from the content image
or noise, a coarse-to-fine pyramid, several styles mixed by weight, and colour preservation
(:mod:`.colour`)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from droplab.config import Config, option, section
from droplab.data.images import (
    is_image_path,
    read_image,
    save_image,
)
from droplab.engine.config import RunConfig
from droplab.errors import InvalidValue, UserError
from droplab.evaluate.style import StyleEvaluator
from droplab.models.style import (
    Encoder,
    content_loss,
    style_loss,
    tv_loss,
)
from droplab.runs import RunDir, default_run_dir
from droplab.runtime import progress, resolve_device, seed_everything
from droplab.tasks.style.colour import luminance, match_histograms, rgb_to_yiq, yiq_to_rgb
from droplab.tasks.style.common import (
    EncoderConfig,
    LossWeights,
    make_encoder,
    parse_styles,
    style_targets,
)

OPTIMIZERS = ("lbfgs", "adam")
INITS = ("content", "noise")
COLOR_MODES = ("none", "luminance", "histogram")


@dataclass
class StylizeConfig(Config):
    """Options of ``droplab stylize`` (Gatys et al. 2016)."""

    content: str = option("", required=True, metavar="IMG",
                          help="content image: a path or a scikit-image sample name "
                          "(astronaut, coffee, chelsea, …)")
    styles: list[str] = option(factory=list, flag="--style", nargs="+", required=True,
                               metavar="IMG[:WEIGHT]",
                               help="one or more style images, optionally weighted (mixed by "
                               "weight)")
    size: int = option(256, ge=16, le=8192, help="longer side of the output")
    style_scale: float = option(1.0, gt=0, le=16, metavar="S",
                                help="style image size relative to --size")
    steps: int = option(300, ge=1, help="iterations per pyramid level")
    optimizer: str = option("adam", choices=OPTIMIZERS, help="adam or lbfgs")
    lr: float | None = option(None, gt=0, help="step size (default lbfgs 1, adam 0.02)")
    init: str = option("content", choices=INITS, help="start from the content image or noise")
    pyramid: int = option(1, ge=1, metavar="LEVELS",
                          help="coarse-to-fine levels, each half the size of the next")
    preserve_color: str = option("none", choices=COLOR_MODES, what="colour mode",
                                 help="none, luminance or histogram (Gatys et al. 2016b)")
    save_every: int = option(0, ge=0, metavar="N",
                             help="also save the image every N steps of the last level")
    evaluate: bool = option(True, flag="--eval",
                            help="score the result with a held-out encoder")
    max_pixels: int = option(4096 * 4096, ge=1, metavar="N",
                             help="larger inputs are downscaled first (default 4096²)")
    loss: LossWeights = section(LossWeights, title="loss weights")
    encoder: EncoderConfig = section(EncoderConfig, title="encoder")
    run: RunConfig = section(RunConfig, title="run", help={
        "out": "--out x.png writes the image there; --out DIR makes a run folder with "
               "stylized.png, metrics.jsonl and summary.json (default a new run folder)"})

    def validate(self) -> None:
        if self.size >> (self.pyramid - 1) < 16:
            raise InvalidValue(f"--pyramid {self.pyramid} makes the coarsest level smaller "
                               f"than 16 px at --size {self.size}; use fewer levels")
        parse_styles(self.styles)


@dataclass
class Targets:
    """Precomputed targets at one resolution."""

    content: torch.Tensor  # (1, 3, H, W) — what is optimised against (maybe luminance)
    content_feats: dict[str, torch.Tensor]
    style_grams: dict[str, torch.Tensor]  # weighted mix of the styles' Gram matrices


def make_targets(encoder: Encoder, content: torch.Tensor, styles: Sequence[torch.Tensor],
                 weights: Sequence[float]) -> Targets:
    with torch.no_grad():
        feats = encoder(content)
    return Targets(content, {k: feats[k] for k in encoder.content_layers},
                   style_targets(encoder, styles, weights))


def losses(encoder: Encoder, x: torch.Tensor, t: Targets) -> dict[str, torch.Tensor]:
    """Content, style and TV losses of images ``x`` (one value per image)."""
    feats = encoder(x)
    return {
        "content": content_loss(feats, t.content_feats, encoder.content_layers),
        "style": style_loss(feats, t.style_grams, encoder.style_layers),
        "tv": tv_loss(x),
    }


def _resize(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == hw:
        return x
    return F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True)


def pyramid_sizes(hw: tuple[int, int], levels: int) -> list[tuple[int, int]]:
    """Coarse-to-fine sizes, halving per level; the last is ``hw``."""
    return [(max(1, round(hw[0] / 2**k)), max(1, round(hw[1] / 2**k)))
            for k in range(levels - 1, -1, -1)]


def optimize_image(
    encoder: Encoder,
    content: torch.Tensor,
    styles: Sequence[torch.Tensor],
    weights: Sequence[float],
    *,
    content_weight: float = 1.0,
    style_weight: float = 10.0,
    tv_weight: float = 5.0,
    optimizer: str = "adam",
    lr: float | None = None,
    steps: int = 300,
    init: str = "content",
    pyramid: int = 1,
    style_scale: float = 1.0,
    generator: torch.Generator | None = None,
    on_step: Callable[[int, int, torch.Tensor, dict[str, float]], None] | None = None,
    show_progress: bool = True,
) -> tuple[torch.Tensor, list[dict[str, float]]]:
    """Gatys et al.'s pixel optimisation, coarse to fine when ``pyramid`` > 1.

    Adam (lr 0.02 in [0, 1] pixel units) is the default: on this CPU it costs ~1/5 of an
    L-BFGS step (which needs a strong-Wolfe line search here; without one it diverged into
    noise with random encoders) and reached the same loss in less time.
    ``steps`` are optimiser steps at every level (so a 3-level pyramid costs about
    ``steps × (1 + 1/4 + 1/16)`` full-size evaluations). Style images are resized at each
    level so their longer side is ``style_scale`` × the output's. Returns the final image
    (1, 3, H, W) in [0, 1] and one record per step (``level, step, loss, content, style,
    tv, time_s``; ``time_s`` counts from the start, excluding target computation).
    """
    hw = tuple(content.shape[-2:])
    sizes = pyramid_sizes(hw, pyramid)  # type: ignore[arg-type]
    history: list[dict[str, float]] = []
    x: torch.Tensor | None = None
    elapsed = 0.0
    total = steps * len(sizes)
    bar = progress(range(total), desc="stylize", disable=None if show_progress else True)
    bar_iter = iter(bar)
    global_step = 0
    for level, size in enumerate(sizes):
        c = _resize(content, size)
        long_side = max(size)
        ss = []
        for s in styles:
            scale = style_scale * long_side / max(s.shape[-2:])
            new = (max(8, round(s.shape[-2] * scale)), max(8, round(s.shape[-1] * scale)))
            ss.append(_resize(s, new))
        targets = make_targets(encoder, c, ss, weights)
        if x is None:
            x = c.clone() if init == "content" else torch.rand(c.shape, generator=generator).to(c)
        else:
            x = _resize(x, size).clamp(0, 1)
        x = x.detach().requires_grad_(True)
        if optimizer == "lbfgs":
            opt: torch.optim.Optimizer = torch.optim.LBFGS(
                [x], lr=lr or 1.0, max_iter=1, history_size=50, line_search_fn="strong_wolfe")
        else:
            opt = torch.optim.Adam([x], lr=lr or 0.02)
        last: dict[str, float] = {}
        closure = _closure(encoder, opt, x, targets, last,
                           (content_weight, style_weight, tv_weight))

        for i in range(steps):
            t0 = time.perf_counter()
            opt.step(closure)
            with torch.no_grad():
                x.clamp_(0, 1)
            elapsed += time.perf_counter() - t0
            rec = {"level": level, "step": i + 1, "global_step": global_step + 1,
                   "time_s": elapsed, **last}
            history.append(rec)
            global_step += 1
            next(bar_iter, None)
            if hasattr(bar, "set_postfix") and not getattr(bar, "disable", True):
                bar.set_postfix(loss=f"{last['loss']:.4g}", style=f"{last['style']:.3g}")
            if on_step is not None:
                on_step(level, i + 1, x.detach(), rec)
            if not math.isfinite(last.get("loss", 0.0)):
                raise UserError("the loss became NaN/inf; lower --lr or the loss weights")
    if hasattr(bar, "close"):
        bar.close()
    assert x is not None
    return x.detach().clamp(0, 1), history


def _closure(
    encoder: Encoder, opt: torch.optim.Optimizer, x: torch.Tensor, targets: Targets,
    last: dict[str, float], weights: tuple[float, float, float],
) -> Callable[[], torch.Tensor]:
    """The loss closure L-BFGS needs (Adam calls it once per step); fills ``last``."""
    cw, sw, tw = weights

    def closure() -> torch.Tensor:
        opt.zero_grad()
        parts = losses(encoder, x, targets)
        loss = (cw * parts["content"] + sw * parts["style"] + tw * parts["tv"]).sum()
        loss.backward()
        last.update({k: float(v.detach().sum()) for k, v in parts.items()},
                    loss=float(loss.detach()))
        return loss

    return closure


def _output_paths(out: str | None) -> tuple[Path, Path | None]:
    """``--out x.png`` → (x.png, no run folder); ``--out DIR`` → (DIR/stylized.png, DIR)."""

    if out and is_image_path(out):
        return Path(out), None
    folder = Path(out) if out else default_run_dir("stylize")
    return folder / "stylized.png", folder


def run_stylize(cfg: StylizeConfig) -> dict[str, Any]:
    """Run ``droplab stylize``; returns the summary (also written as JSON in a run folder)."""
    device = resolve_device(cfg.run.device)
    gen = seed_everything(cfg.run.seed)
    image_path, folder = _output_paths(cfg.run.out)
    style_specs = parse_styles(cfg.styles)
    content_full = read_image(cfg.content, cfg.size, max_pixels=cfg.max_pixels).to(device)
    style_imgs = [read_image(p, None, max_pixels=cfg.max_pixels).to(device)
                  for p, _ in style_specs]
    style_imgs = [_resize(s, _fit(s.shape[-2:], round(cfg.size * cfg.style_scale)))
                  for s in style_imgs]
    weights = [w for _, w in style_specs]
    encoder, reason = make_encoder(cfg.encoder, cfg.run.seed)
    encoder = encoder.to(device)

    # colour preservation: what is optimised, and how the result is put back together
    content_opt, styles_opt = content_full, style_imgs
    if cfg.preserve_color == "histogram":
        styles_opt = [match_histograms(s, content_full) for s in style_imgs]
    elif cfg.preserve_color == "luminance":
        y_c = luminance(content_full)
        content_opt = y_c
        styles_opt = []
        for s in style_imgs:  # match the style luminance's mean and spread to the content's
            y_s = luminance(s)
            y_s = (y_s - y_s.mean()) / y_s.std().clamp_min(1e-6) * y_c.std() + y_c.mean()
            styles_opt.append(y_s.clamp(0, 1))

    def finish(x: torch.Tensor) -> torch.Tensor:
        if cfg.preserve_color != "luminance":
            return x
        yiq = rgb_to_yiq(content_full)
        yiq[:, :1] = rgb_to_yiq(x)[:, :1]
        return yiq_to_rgb(yiq).clamp(0, 1)

    saved: list[str] = []

    def on_step(level: int, step: int, x: torch.Tensor, rec: dict[str, float]) -> None:
        if folder is not None and run is not None:
            run.log(rec)
        if cfg.save_every and level == cfg.pyramid - 1 and step % cfg.save_every == 0:
            if folder is not None:
                p = folder / f"step-{step:05d}.png"
            else:
                p = image_path.with_name(f"{image_path.stem}.step-{step:05d}{image_path.suffix}")
            save_image(finish(x), p)
            saved.append(str(p))

    run = None
    if folder is not None:
        run = RunDir.create(folder, "stylize", resumable=False)
        run.write_config(cfg, task="stylize")

    # losses of the content image itself and of the start image, at full size
    full_targets = make_targets(encoder, content_opt, styles_opt, weights)
    with torch.no_grad():
        initial = {k: float(v.sum()) for k, v in losses(encoder, content_opt, full_targets).items()}

    t0 = time.perf_counter()
    x, history = optimize_image(
        encoder, content_opt, styles_opt, weights,
        content_weight=cfg.loss.content_weight, style_weight=cfg.loss.style_weight,
        tv_weight=cfg.loss.tv_weight, optimizer=cfg.optimizer, lr=cfg.lr, steps=cfg.steps,
        init=cfg.init, pyramid=cfg.pyramid, style_scale=1.0, generator=gen, on_step=on_step,
    )
    wall = time.perf_counter() - t0
    with torch.no_grad():
        final = {k: float(v.sum()) for k, v in losses(encoder, x, full_targets).items()}
    result = finish(x)
    save_image(result, image_path)

    summary: dict[str, Any] = {
        "task": "stylize",
        "output": str(image_path),
        "encoder": encoder.describe(),
        "encoder_reason": reason,
        "size": list(result.shape[-2:]),
        "steps": cfg.steps,
        "pyramid": cfg.pyramid,
        "optimizer": cfg.optimizer,
        "style_loss_initial": initial["style"],
        "content_loss_initial": initial["content"],
        "style_loss_final": final["style"],
        "content_loss_final": final["content"],
        "tv_loss_final": final["tv"],
        "style_loss_ratio": final["style"] / max(initial["style"], 1e-12),
        "time_s": wall,
        "seconds_per_step": wall / max(1, len(history)),
        "saved": saved,
    }
    if cfg.evaluate:
        ev = StyleEvaluator(optimised=encoder.name, seed=cfg.run.seed, device=device)
        summary["eval"] = ev.evaluate(result, content_full, style_imgs, weights)
        summary["eval_content_image"] = ev.evaluate(content_full, content_full, style_imgs, weights)
    if run is not None:
        summary["run_dir"] = str(run.path)
        run.write_summary(summary)
    return summary


def _fit(hw: Sequence[int], long_side: int) -> tuple[int, int]:
    h, w = int(hw[0]), int(hw[1])
    s = long_side / max(h, w)
    return max(8, round(h * s)), max(8, round(w * s))


