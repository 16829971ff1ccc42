"""Neural style transfer tasks: ``stylize`` (optimisation), ``style-train``, ``style-apply``.

- :func:`run_stylize` — Gatys et al. 2016, "Image style transfer using convolutional neural
  networks": optimise the pixels of an image so its encoder features match the content
  image and its Gram matrices match the style image(s). L-BFGS or Adam, start from the
  content image or noise, a coarse-to-fine pyramid, several styles mixed by weight, and
  colour preservation (Gatys et al. 2016, "Preserving color in neural artistic style
  transfer": luminance-only transfer or histogram matching of the style to the content).
- :func:`run_style_train` — Johnson et al. 2016, "Perceptual losses for real-time style
  transfer": train a :class:`~droplab.models.style.TransformerNet` (optionally with spatial
  dropout) on a folder of content images; checkpointed and resumable.
- :func:`run_style_apply` — stylise files or folders with a trained network; with dropout
  kept on, ``samples`` > 1 gives MC variations (and their diversity); ONNX export.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from droplab.config import Config, option, section
from droplab.engine.config import RunConfig
from droplab.engine.resume import open_run
from droplab.errors import (
    DataNotFound,
    ImageReadError,
    InvalidValue,
    UserError,
)
from droplab.imageio import (
    is_image_path,
    list_images,
    load_image,
    pil_to_tensor,
    read_image,
    resize_to,
    save_image,
)
from droplab.models.style import (
    DROPOUT_PLACES,
    ENCODERS,
    Encoder,
    TransformerNet,
    build_encoder,
    content_loss,
    gram,
    style_loss,
    tv_loss,
)
from droplab.runs import RunDir, atomic_write_json
from droplab.runs.restore import load_style_net
from droplab.runtime import progress, resolve_device, seed_everything

OPTIMIZERS = ("lbfgs", "adam")
INITS = ("content", "noise")
COLOR_MODES = ("none", "luminance", "histogram")


# ---------------------------------------------------------------------------------------
# Style specs: PATH[:WEIGHT]
# ---------------------------------------------------------------------------------------


def parse_style_spec(spec: str) -> tuple[str, float]:
    """``"starry.jpg:0.7"`` → ``("starry.jpg", 0.7)``; no weight means 1.

    A colon followed by something that is not a number is part of the path only when that
    whole path exists; otherwise it is a weight that does not parse (a one-line error).
    """
    if ":" in spec:
        head, tail = spec.rsplit(":", 1)
        try:
            weight = float(tail)
        except ValueError:
            if Path(spec).exists():
                return spec, 1.0
            raise InvalidValue(
                f"style weight {tail!r} in {spec!r} is not a number; write IMAGE:WEIGHT, "
                "e.g. starry.jpg:0.5"
            ) from None
        if not math.isfinite(weight) or weight <= 0:
            raise InvalidValue(f"style weight in {spec!r} must be a positive number, got {tail}")
        if not head:
            raise InvalidValue(f"style {spec!r} names no image; write IMAGE:WEIGHT")
        return head, weight
    return spec, 1.0


def parse_styles(specs: Sequence[str]) -> list[tuple[str, float]]:
    """Parse several style specs; the weights are normalised to sum to 1."""
    if not specs:
        raise InvalidValue("give at least one --style IMAGE[:WEIGHT]")
    parsed = [parse_style_spec(s) for s in specs]
    total = sum(w for _, w in parsed)
    return [(p, w / total) for p, w in parsed]


# ---------------------------------------------------------------------------------------
# Colour helpers (Gatys et al. 2016, "Preserving color in neural artistic style transfer")
# ---------------------------------------------------------------------------------------

_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114],
                         [0.595716, -0.274453, -0.321263],
                         [0.211456, -0.522591, 0.311135]])


def rgb_to_yiq(x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", _RGB2YIQ.to(x), x)


def yiq_to_rgb(x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(_RGB2YIQ).to(x), x)


def luminance(x: torch.Tensor) -> torch.Tensor:
    """The Y channel repeated three times (so RGB encoders can read it)."""
    return rgb_to_yiq(x)[:, :1].repeat(1, 3, 1, 1)


def match_histograms(source: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-channel histogram matching of ``source`` to ``reference`` (scikit-image)."""
    from skimage.exposure import match_histograms as _match

    s = source[0].permute(1, 2, 0).cpu().numpy()
    r = reference[0].permute(1, 2, 0).cpu().numpy()
    out = _match(s, r, channel_axis=-1)
    return torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1)[None].float().to(source)


# ---------------------------------------------------------------------------------------
# Optimisation-based style transfer
# ---------------------------------------------------------------------------------------


@dataclass
class EncoderConfig(Config):
    """The loss network (:func:`droplab.models.style.build_encoder`)."""

    encoder: str = option("auto", choices=ENCODERS, what="encoder",
                          help="auto (vgg19 when its ImageNet weights can be had, else the "
                          "random-weight encoder), vgg19 or random")
    encoder_weights: str | None = option(None, runtime=True, metavar="PATH",
                                         help="a torchvision vgg19 state-dict file (else the "
                                         "torch hub cache)")
    n_random: int = option(1, ge=1, help="random encoders in the ensemble")
    softmax: float | None = option(None, gt=0, metavar="T",
                                   help="SWAG softmax smoothing of activations at temperature "
                                   "T (Wang et al. 2021; default off)")


@dataclass
class LossWeights(Config):
    """Weights of the content, style (Gram) and total-variation losses."""

    content_weight: float = option(1.0, ge=0, metavar="W", help="content loss weight")
    style_weight: float = option(10.0, ge=0, metavar="W", help="style loss weight")
    tv_weight: float = option(5.0, ge=0, metavar="W", help="total-variation loss weight")


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
    size: int = option(256, ge=16, help="longer side of the output")
    style_scale: float = option(1.0, gt=0, metavar="S",
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


def style_targets(
    encoder: Encoder, styles: Sequence[torch.Tensor], weights: Sequence[float]
) -> dict[str, torch.Tensor]:
    """Weighted sum of the styles' Gram matrices per layer.

    Minimising ``‖G − Σ wᵢ Gᵢ‖²`` is minimising ``Σ wᵢ ‖G − Gᵢ‖²`` up to a constant (for
    weights summing to 1), so this mixes styles at the cost of one target.
    """
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for img, w in zip(styles, weights):
            feats = encoder(img)
            for name in encoder.style_layers:
                g = gram(feats[name]) * w
                out[name] = out[name] + g if name in out else g
    return out


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
    from droplab.runs import default_run_dir

    if out and is_image_path(out):
        return Path(out), None
    folder = Path(out) if out else default_run_dir("stylize")
    return folder / "stylized.png", folder


def run_stylize(cfg: StylizeConfig) -> dict[str, Any]:
    """Run ``droplab stylize``; returns the summary (also written as JSON in a run folder)."""
    from droplab.evaluate.style import StyleEvaluator

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
    encoder, reason = _encoder(cfg.encoder, cfg.run.seed)
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
        run = RunDir.create(folder, "stylize")
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


# ---------------------------------------------------------------------------------------
# Feed-forward training (Johnson et al. 2016)
# ---------------------------------------------------------------------------------------


@dataclass
class StyleNetConfig(Config):
    """The transformer network (:class:`~droplab.models.style.TransformerNet`)."""

    width: int = option(32, ge=1, help="channels of the first layer")
    n_residual: int = option(5, ge=0, help="residual blocks")
    dropout: float = option(0.0, rate=True, metavar="P",
                            help="spatial dropout rate p (drop probability)")
    dropout_where: str = option("residual", choices=DROPOUT_PLACES, what="dropout placement",
                                help="residual, decoder or all")


@dataclass
class StyleTrainConfig(Config):
    """Options of ``droplab style-train`` (Johnson et al. 2016). ``--steps`` may grow on
    ``--resume``; so may the logging and checkpoint cadence and the content folder's path."""

    style: list[str] = option(factory=list, nargs="+", required=True, metavar="IMG[:WEIGHT]",
                              help="one or more style images, optionally weighted")
    content_dir: str = option("", required=True, runtime=True, metavar="DIR",
                              help="a folder of content images")
    image_size: int = option(256, ge=16, help="training crop size")
    style_size: int | None = option(None, ge=1, help="style image size (default: the crop size)")
    batch_size: int = option(4, ge=1, help="batch size")
    steps: int = option(2000, ge=1, runtime=True, help="optimiser steps")
    lr: float = option(1e-3, gt=0, help="Adam learning rate")
    max_images: int | None = option(None, ge=1, metavar="N", help="use the first N images only")
    checkpoint_every: int = option(100, ge=1, runtime=True, metavar="STEPS",
                                   help="checkpoint every STEPS steps")
    log_every: int = option(10, ge=1, runtime=True, metavar="STEPS",
                            help="one metrics.jsonl record per STEPS steps")
    net: StyleNetConfig = section(StyleNetConfig, title="network")
    loss: LossWeights = section(lambda: LossWeights(style_weight=5.0, tv_weight=1.0),
                                title="loss weights")
    encoder: EncoderConfig = section(EncoderConfig, title="encoder")
    run: RunConfig = section(RunConfig, title="run")

    def validate(self) -> None:
        parse_styles(self.style)


def load_content_folder(folder: str | Path, size: int, max_images: int | None = None
                        ) -> torch.Tensor:
    """Every readable image in ``folder`` as uint8 (N, 3, size, size) centre crops.

    Unreadable files are skipped with one note; a folder with no readable image is an error.
    """
    from PIL import Image

    root = Path(folder)
    if not root.is_dir():
        raise DataNotFound(f"--content-dir {root} is not a folder of images")
    paths = list_images(root)
    if max_images:
        paths = paths[:max_images]
    crops, bad = [], []
    for p in paths:
        try:
            img = load_image(p)
        except (ImageReadError, DataNotFound):
            bad.append(p.name)
            continue
        w, h = img.size
        s = size / min(w, h)
        img = img.resize((max(size, round(w * s)), max(size, round(h * s))),
                         Image.Resampling.BILINEAR)
        w, h = img.size
        left, top = (w - size) // 2, (h - size) // 2
        img = img.crop((left, top, left + size, top + size))
        crops.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1))
    if bad:
        print(f"droplab: note: skipped {len(bad)} unreadable image(s) in {root}: "
              f"{', '.join(bad[:3])}{' …' if len(bad) > 3 else ''}", file=sys.stderr)
    if not crops:
        raise DataNotFound(f"--content-dir {root} holds no readable images")
    return torch.stack(crops)


def _net_from_config(cfg: StyleTrainConfig) -> TransformerNet:
    n = cfg.net
    return TransformerNet(n.width, n.n_residual, n.dropout, n.dropout_where)


def _encoder(cfg: EncoderConfig, seed: int) -> tuple[Encoder, str]:
    return build_encoder(cfg.encoder, weights=cfg.encoder_weights, seed=seed,
                         softmax=cfg.softmax, n_random=cfg.n_random)


def run_style_train(cfg: StyleTrainConfig, resume: bool = False) -> dict[str, Any]:
    """Train a feed-forward style network; checkpoints every ``checkpoint_every`` steps."""
    device = resolve_device(cfg.run.device)
    run = open_run(cfg, "style-train", resume=resume)
    gen = seed_everything(cfg.run.seed)
    data = load_content_folder(cfg.content_dir, cfg.image_size, cfg.max_images)
    specs = parse_styles(cfg.style)
    style_size = cfg.style_size or cfg.image_size
    styles = [read_image(p, style_size).to(device) for p, _ in specs]
    weights = [w for _, w in specs]
    encoder, reason = _encoder(cfg.encoder, cfg.run.seed)
    encoder = encoder.to(device)
    grams = style_targets(encoder, styles, weights)
    net = _net_from_config(cfg).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    start = 0
    if resume:
        state = run.load_checkpoint(map_location=device)
        if state is not None:
            net.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            gen.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            start = int(state["step"])
            run.truncate_metrics(lambda r: r.get("step", 0) <= start)

    def checkpoint(step: int) -> None:
        run.save_checkpoint({
            "model": net.state_dict(), "optimizer": opt.state_dict(), "step": step,
            "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
            "net_config": net.config, "encoder": encoder.describe(),
        })

    net.train()
    t0 = time.perf_counter()
    seen = 0
    running: dict[str, float] = {}
    n = data.shape[0]
    for step in progress(range(start + 1, cfg.steps + 1), desc="style-train",
                         initial=start, total=cfg.steps):
        idx = torch.randint(0, n, (cfg.batch_size,), generator=gen)
        flip = torch.rand(cfg.batch_size, generator=gen) < 0.5
        x = data[idx].float().div_(255)
        x[flip] = x[flip].flip(-1)
        x = x.to(device)
        y = net(x)
        with torch.no_grad():
            target = encoder(x)
        feats = encoder(y)
        lc = content_loss(feats, {k: target[k] for k in encoder.content_layers},
                          encoder.content_layers).mean()
        ls = style_loss(feats, grams, encoder.style_layers).mean()
        lt = tv_loss(y).mean()
        loss = cfg.loss.content_weight * lc + cfg.loss.style_weight * ls + cfg.loss.tv_weight * lt
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if not math.isfinite(float(loss.detach())):
            raise UserError("training diverged (loss NaN/inf); lower --lr")
        seen += cfg.batch_size
        for k, v in (("loss", loss), ("content", lc), ("style", ls), ("tv", lt)):
            running[k] = running.get(k, 0.0) + float(v.detach())
        if step % cfg.log_every == 0 or step == cfg.steps:
            k = step % cfg.log_every or cfg.log_every
            el = time.perf_counter() - t0
            run.log({"step": step, **{f"train_{a}": b / k for a, b in running.items()},
                     "time_s": el, "images_per_s": seen / max(el, 1e-9)})
            running.clear()
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            checkpoint(step)
    if start >= cfg.steps and not run.checkpoint_path.exists():
        checkpoint(start)

    net.eval()
    with torch.no_grad():
        sample_in = data[:1].float().div(255).to(device)
        save_image(net(sample_in).clamp(0, 1), run / "sample.png")
        last = run.read_metrics()
    summary = {
        "task": "style-train",
        "run_dir": str(run.path),
        "checkpoint": str(run.checkpoint_path),
        "steps": cfg.steps,
        "images": n,
        "encoder": encoder.describe(),
        "encoder_reason": reason,
        "dropout": cfg.net.dropout,
        "dropout_where": cfg.net.dropout_where,
        "final_loss": last[-1]["train_loss"] if last else None,
        "final_style_loss": last[-1]["train_style"] if last else None,
        "first_style_loss": last[0]["train_style"] if last else None,
        "time_s": time.perf_counter() - t0,
    }
    run.write_summary(summary)
    return summary


# ---------------------------------------------------------------------------------------
# Applying a trained network
# ---------------------------------------------------------------------------------------


def load_transformer(model: str | Path, device: str | torch.device = "cpu"
                     ) -> tuple[TransformerNet, dict[str, Any]]:
    """Moved: :func:`droplab.runs.restore.load_style_net` (kept for existing callers)."""
    return load_style_net(model, device)


def mc_mode(net: torch.nn.Module, on: bool = True) -> None:
    """Eval mode everywhere except dropout layers, which stay stochastic when ``on``."""
    net.eval()
    if on:
        for m in net.modules():
            if isinstance(m, torch.nn.modules.dropout._DropoutNd) or hasattr(m, "kind"):
                m.train()


@dataclass
class StyleApplyConfig(Config):
    """Options of ``droplab style-apply``."""

    model: str = option("", positional=True, required=True, metavar="MODEL",
                        help="a style-train run folder or its checkpoint.pt")
    inputs: list[str] = option(factory=list, positional=True, nargs="*", metavar="IMG|DIR",
                               help="image files or folders to stylise")
    size: int | None = option(None, ge=16, help="resize so the longer side is this")
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
    from droplab.evaluate.style import diversity
    from droplab.models.style import export_onnx
    from droplab.runs import default_run_dir

    device = resolve_device(cfg.run.device)
    seed_everything(cfg.run.seed)
    net, _ = load_transformer(cfg.model, device)
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
    out = Path(cfg.run.out) if cfg.run.out else default_run_dir("style-apply")
    out.mkdir(parents=True, exist_ok=True)
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
                mc_mode(net, True)
                ys = [net(x).clamp(0, 1) for _ in range(cfg.samples)]
                net.eval()
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
    atomic_write_json(out / "summary.json", summary)
    return summary
