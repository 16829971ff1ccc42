"""``droplab style-train``: train a feed-forward style network, checkpointed and resumable
with the engine's shared pieces (RNG capture, progress, the one resume rule, NaN guard).

- one style (or a weighted mix): Johnson et al. 2016, "Perceptual losses for real-time
  style transfer" — a :class:`~droplab.models.style.TransformerNet` of any size
  (``--net johnson|fast``, ``--width``, ``--n-residual``, ``--separable``, ``--padding``)
  learns to reproduce the Gram statistics of the style under the loss encoder;
- ``--arbitrary``: Huang & Belongie 2017, "Arbitrary style transfer in real-time with
  adaptive instance normalization" — an :class:`~droplab.models.style.AdaINNet` decoder
  learns, over ``--content-dir`` × ``--style-dir``, to invert the encoder's features after
  AdaIN: content loss against the AdaIN target ``t``, style loss on the channel means and
  standard deviations of every encoder stage (eq. 11–13 of the paper).

Both take optional spatial dropout (``--dropout``, ``--dropout-where``; the AdaIN decoder
has it after every stage).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from droplab.config import Config, option, section
from droplab.data.images import read_image, save_image
from droplab.engine.config import RunConfig
from droplab.engine.resume import finished_summary, open_run, resume_point
from droplab.engine.state import Progress, capture_rng, check_finite, restore_rng
from droplab.errors import InvalidValue
from droplab.models.style import (
    DROPOUT_PLACES,
    PADDINGS,
    PRESETS,
    AdaINNet,
    Encoder,
    TrainedEncoder,
    TransformerNet,
    adain,
    cifar_encoder,
    content_loss,
    mean_std,
    moment_loss,
    net_options,
    style_loss,
    tv_loss,
)
from droplab.runs import RunDir
from droplab.runtime import progress as bar
from droplab.runtime import resolve_device, seed_everything
from droplab.tasks.style.common import (
    EncoderConfig,
    LossWeights,
    make_encoder,
    parse_styles,
    style_targets,
)
from droplab.tasks.style.data import crop_short_side, load_folder, random_crops

TASK = "style-train"


@dataclass
class StyleNetConfig(Config):
    """The network: a :class:`~droplab.models.style.TransformerNet` (its size) or, with
    ``--arbitrary``, an :class:`~droplab.models.style.AdaINNet` (``--depth``)."""

    size: str = option("johnson", flag="--net", choices=tuple(PRESETS), what="network size",
                       help="johnson (Johnson et al.'s width-32 net) or fast (width 16, "
                       "depthwise-separable, zero padding, 5×5 first and last "
                       "convolutions: the CPU net)")
    width: int | None = option(None, ge=1, help="channels of the first layer (default: "
                               "the --net size's)")
    n_residual: int | None = option(None, ge=0, help="residual blocks (default: the --net "
                                    "size's)")
    separable: bool | None = option(None, help="depthwise-separable 3×3 convolutions "
                                    "(default: the --net size's)")
    padding: str | None = option(None, choices=PADDINGS, what="padding",
                                 help="reflect or zeros (default: the --net size's)")
    kernel: int | None = option(None, ge=1, help="size of the first and last convolutions "
                                "(odd; default: the --net size's, 9 for johnson)")
    dropout: float = option(0.0, rate=True, metavar="P",
                            help="spatial dropout rate p (drop probability)")
    dropout_where: str = option("residual", choices=DROPOUT_PLACES, what="dropout placement",
                                help="residual, decoder or all (--arbitrary: always the "
                                "decoder)")
    depth: int = option(3, ge=1, le=4, help="--arbitrary: encoder stages read (AdaIN at "
                        "the last one)")


@dataclass
class StyleTrainConfig(Config):
    """Options of ``droplab style-train``. ``--steps`` may grow on ``--resume``; so may the
    logging and checkpoint cadence and the image folders' paths."""

    style: list[str] = option(factory=list, nargs="+", metavar="IMG[:WEIGHT]",
                              help="one or more style images, optionally weighted (not with "
                              "--arbitrary)")
    content_dir: str = option("", required=True, runtime=True, metavar="DIR",
                              help="a folder of content images")
    arbitrary: bool = option(False, help="train one network for any style image (AdaIN, "
                             "Huang & Belongie 2017) over --content-dir × --style-dir")
    style_dir: str | None = option(None, runtime=True, metavar="DIR",
                                   help="--arbitrary: a folder of style images")
    image_size: int = option(256, ge=16, le=8192, help="training crop size")
    style_size: int | None = option(None, ge=16, le=8192, help="style image size (default: the crop "
                                    "size; --arbitrary: styles are stored at 1.5× it and "
                                    "cropped)")
    batch_size: int = option(4, ge=1, help="batch size")
    steps: int = option(2000, ge=1, runtime=True, help="optimiser steps")
    lr: float = option(1e-3, gt=0, help="Adam learning rate")
    max_images: int | None = option(None, ge=1, metavar="N", help="use the first N images "
                                    "of each folder only")
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
        if self.arbitrary:
            if self.style:
                raise InvalidValue("--style names the style of a one-style network; with "
                                   "--arbitrary give a folder of styles: --style-dir DIR")
            if not self.style_dir:
                raise InvalidValue("--arbitrary needs --style-dir DIR (a folder of style "
                                   "images)")
            if self.encoder.encoder not in ("auto", "cifar"):
                raise InvalidValue(f"--arbitrary runs on the trained cifar encoder, not "
                                   f"--encoder {self.encoder.encoder}; drop --encoder")
            if self.net.depth > 4:
                raise InvalidValue("--depth must be at most 4")
        else:
            if not self.style:
                raise InvalidValue("give --style IMG[:WEIGHT] (or --arbitrary --style-dir "
                                   "DIR for a network that takes any style)")
            if self.style_dir:
                raise InvalidValue("--style-dir is for --arbitrary; a one-style network "
                                   "takes --style IMG[:WEIGHT]")
            parse_styles(self.style)


def transformer_from_config(n: StyleNetConfig) -> TransformerNet:
    opts = net_options(n.size, width=n.width, n_residual=n.n_residual, separable=n.separable,
                       padding=n.padding, kernel=n.kernel)
    return TransformerNet(dropout=n.dropout, dropout_where=n.dropout_where, **opts)


LossFn = Callable[[torch.Tensor], dict[str, torch.Tensor]]
Preview = Callable[[torch.Tensor], torch.Tensor]


def _feedforward(cfg: StyleTrainConfig, encoder: Encoder, device: torch.device
                 ) -> tuple[nn.Module, LossFn, Preview, dict[str, Any]]:
    """Johnson et al.: Gram statistics of the (mixed) style under the loss encoder."""
    specs = parse_styles(cfg.style)
    style_size = cfg.style_size or cfg.image_size
    styles = [read_image(p, style_size).to(device) for p, _ in specs]
    grams = style_targets(encoder, styles, [w for _, w in specs])
    net = transformer_from_config(cfg.net).to(device)

    def losses(x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = net(x)
        with torch.no_grad():
            target = encoder(x)
        feats = encoder(y)
        return {"content": content_loss(feats, {k: target[k] for k in encoder.content_layers},
                                        encoder.content_layers).mean(),
                "style": style_loss(feats, grams, encoder.style_layers).mean(),
                "tv": tv_loss(y).mean()}

    return net, losses, net, {"styles": len(styles)}


def _style_folder(cfg: StyleTrainConfig) -> list[torch.Tensor] | None:
    """``--arbitrary``: the style images, read before the run folder is made."""
    if not cfg.arbitrary:
        return None
    style_size = cfg.style_size or round(1.5 * cfg.image_size)
    return load_folder(cfg.style_dir or "", max(style_size, cfg.image_size),
                       cfg.max_images, flag="--style-dir")


def _arbitrary(cfg: StyleTrainConfig, styles: list[torch.Tensor], encoder: Encoder,
               device: torch.device, gen: torch.Generator
               ) -> tuple[nn.Module, LossFn, Preview, dict[str, Any]]:
    """Huang & Belongie: invert the encoder after AdaIN; moments of every stage."""
    if not isinstance(encoder, TrainedEncoder):  # validate() keeps VGG / random out
        raise InvalidValue("--arbitrary needs the cifar encoder")
    net = AdaINNet.from_encoder(encoder, cfg.net.depth, dropout=cfg.net.dropout).to(device)

    def losses(x: torch.Tensor) -> dict[str, torch.Tensor]:
        s = random_crops(styles, x.shape[0], cfg.image_size, gen).to(device)
        with torch.no_grad():
            fc, fs = net.encode(x), net.encode(s)
            t = adain(fc[-1], *mean_std(fs[-1]))
        y = net.decode(t)
        fy = net.encode(y)
        targets = {f"relu{i + 1}": mean_std(f) for i, f in enumerate(fs)}
        return {"content": content_loss({"t": fy[-1]}, {"t": t}).mean(),
                "style": moment_loss({f"relu{i + 1}": f for i, f in enumerate(fy)},
                                     targets).mean(),
                "tv": tv_loss(y).mean()}

    def preview(x: torch.Tensor) -> torch.Tensor:  # the first style image on x
        return net(x, styles[0][None].float().div(255).to(device))

    return net, losses, preview, {"styles": len(styles), "arbitrary": True,
                                  "depth": cfg.net.depth}


def run_style_train(cfg: StyleTrainConfig, resume: bool = False) -> dict[str, Any]:
    """Train a style network; checkpoints every ``checkpoint_every`` steps.

    ``resume`` follows :mod:`droplab.engine.resume` (``--steps`` may grow); a run that
    already finished its steps returns its summary and changes no file.
    """
    device = resolve_device(cfg.run.device)
    target = ("steps", cfg.steps)
    styles = None if resume else _style_folder(cfg)  # a bad folder leaves no run folder
    run = open_run(cfg, TASK, resume=resume, finished=target)
    done = finished_summary(run, *target) if resume else None
    if done is not None:
        return done
    gen = seed_everything(cfg.run.seed)
    data = load_folder(cfg.content_dir, crop_short_side(cfg.image_size), cfg.max_images)
    if cfg.arbitrary:  # AdaIN inverts the trained cifar encoder (whatever auto would pick)
        encoder: Encoder = cifar_encoder()
        reason = "--arbitrary decodes the cifar encoder's features"
    else:
        encoder, reason = make_encoder(cfg.encoder, cfg.run.seed)
    encoder = encoder.to(device)
    if cfg.arbitrary:
        styles = styles if styles is not None else _style_folder(cfg)
        net, losses, preview, info = _arbitrary(cfg, styles or [], encoder, device, gen)
    else:
        net, losses, preview, info = _feedforward(cfg, encoder, device)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=cfg.lr)
    progress = Progress()
    ckpt = resume_point(run, device) if resume else None
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        gen.set_state(ckpt["generator"])
        restore_rng(ckpt["rng"] if "rng" in ckpt else {"torch": ckpt["torch_rng"]})  # 0.1
        progress.load_state_dict(ckpt)
    _loop(cfg, run, net, losses, opt, gen, data, progress, device,
          extra={"net_config": net.config, "encoder": encoder.describe()})
    return _finish(cfg, run, net, preview, data, progress, device,
                   {"encoder": encoder.describe(), "encoder_reason": reason, **info})


def _loop(cfg: StyleTrainConfig, run: RunDir, net: nn.Module, losses: LossFn,
          opt: torch.optim.Optimizer, gen: torch.Generator, data: list[torch.Tensor],
          progress: Progress, device: torch.device, extra: dict[str, Any]) -> None:
    w = cfg.loss
    net.train()
    t0 = time.perf_counter()
    seen = 0
    running: dict[str, float] = {}
    for step in bar(range(progress.step + 1, cfg.steps + 1), desc="style-train",
                    initial=progress.step, total=cfg.steps):
        x = random_crops(data, cfg.batch_size, cfg.image_size, gen).to(device)
        parts = losses(x)
        loss = (w.content_weight * parts["content"] + w.style_weight * parts["style"]
                + w.tv_weight * parts["tv"])
        check_finite("loss", float(loss.detach()), step=step, run=run, advice="lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        progress.step = step
        seen += cfg.batch_size
        for k, v in (("loss", loss), *parts.items()):
            running[k] = running.get(k, 0.0) + float(v.detach())
        if step % cfg.log_every == 0 or step == cfg.steps:
            k = step % cfg.log_every or cfg.log_every
            el = time.perf_counter() - t0
            run.log({"step": step, **{f"train_{a}": b / k for a, b in running.items()},
                     "time_s": el, "images_per_s": seen / max(el, 1e-9)})
            running.clear()
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            progress.time_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            progress.finished = step == cfg.steps
            run.save_checkpoint({
                "model": net.state_dict(), "optimizer": opt.state_dict(),
                **progress.state_dict(), "generator": gen.get_state(),
                "rng": capture_rng(device), **extra,
            })


def _finish(cfg: StyleTrainConfig, run: RunDir, net: nn.Module, preview: Preview,
            data: list[torch.Tensor], progress: Progress, device: torch.device,
            info: dict[str, Any]) -> dict[str, Any]:
    net.eval()
    with torch.no_grad():
        sample = preview(data[0][None].float().div(255).to(device))
    save_image(sample.clamp(0, 1), run / "sample.png")
    last = run.read_metrics()
    summary = {
        "task": TASK,
        "run_dir": str(run.path),
        "checkpoint": str(run.checkpoint_path),
        "steps": cfg.steps,
        "images": len(data),
        **info,
        "net": net.config,
        "parameters": sum(p.numel() for p in net.parameters() if p.requires_grad),
        "dropout": cfg.net.dropout,
        "dropout_where": "decoder" if cfg.arbitrary else cfg.net.dropout_where,
        "final_loss": last[-1]["train_loss"] if last else None,
        "final_style_loss": last[-1]["train_style"] if last else None,
        "first_style_loss": last[0]["train_style"] if last else None,
        "time_s": progress.time_s,
    }
    run.write_summary(summary)
    return summary
