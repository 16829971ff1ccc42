"""``droplab style-train``: Johnson et al. 2016, "Perceptual losses for real-time style
transfer" — train a :class:`~droplab.models.style.TransformerNet` (optionally with spatial
dropout) on a folder of content images; checkpointed and resumable with the engine's
shared pieces (RNG capture, progress, the one resume rule, the NaN guard)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from droplab.config import Config, option, section
from droplab.data.images import (
    list_images,
    load_image,
    read_image,
    save_image,
)
from droplab.engine.config import RunConfig
from droplab.engine.resume import finished_summary, open_run, resume_point
from droplab.engine.state import Progress, capture_rng, check_finite, restore_rng
from droplab.errors import DataNotFound, ImageReadError
from droplab.models.style import (
    DROPOUT_PLACES,
    TransformerNet,
    content_loss,
    style_loss,
    tv_loss,
)
from droplab.runtime import progress as bar
from droplab.runtime import resolve_device, seed_everything
from droplab.tasks.style.common import (
    EncoderConfig,
    LossWeights,
    make_encoder,
    parse_styles,
    style_targets,
)

TASK = "style-train"


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
    image_size: int = option(256, ge=16, le=8192, help="training crop size")
    style_size: int | None = option(None, ge=1, le=8192, help="style image size (default: the crop size)")
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
    shown = f"{', '.join(bad[:3])}{' …' if len(bad) > 3 else ''}"
    if not crops:  # one line: the error says what was skipped
        found = f" ({len(bad)} unreadable: {shown})" if bad else ""
        raise DataNotFound(f"--content-dir {root} holds no readable images{found}; pass a "
                           "folder of PNG or JPEG images")
    if bad:
        print(f"droplab: note: skipped {len(bad)} unreadable image(s) in {root}: {shown}",
              file=sys.stderr)
    return torch.stack(crops)


def _net_from_config(cfg: StyleTrainConfig) -> TransformerNet:
    n = cfg.net
    return TransformerNet(n.width, n.n_residual, n.dropout, n.dropout_where)


def run_style_train(cfg: StyleTrainConfig, resume: bool = False) -> dict[str, Any]:
    """Train a feed-forward style network; checkpoints every ``checkpoint_every`` steps.

    ``resume`` follows :mod:`droplab.engine.resume` (``--steps`` may grow); a run that
    already finished its steps returns its summary and changes no file.
    """
    device = resolve_device(cfg.run.device)
    target = ("steps", cfg.steps)
    run = open_run(cfg, TASK, resume=resume, finished=target)
    done = finished_summary(run, *target) if resume else None
    if done is not None:
        return done
    gen = seed_everything(cfg.run.seed)
    data = load_content_folder(cfg.content_dir, cfg.image_size, cfg.max_images)
    specs = parse_styles(cfg.style)
    style_size = cfg.style_size or cfg.image_size
    styles = [read_image(p, style_size).to(device) for p, _ in specs]
    encoder, reason = make_encoder(cfg.encoder, cfg.run.seed)
    encoder = encoder.to(device)
    grams = style_targets(encoder, styles, [w for _, w in specs])
    net = _net_from_config(cfg).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    progress = Progress()
    ckpt = resume_point(run, device) if resume else None
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        gen.set_state(ckpt["generator"])
        restore_rng(ckpt["rng"] if "rng" in ckpt else {"torch": ckpt["torch_rng"]})  # 0.1
        progress.load_state_dict(ckpt)

    def checkpoint() -> None:
        run.save_checkpoint({
            "model": net.state_dict(), "optimizer": opt.state_dict(),
            **progress.state_dict(), "generator": gen.get_state(),
            "rng": capture_rng(device), "net_config": net.config,
            "encoder": encoder.describe(),
        })

    w = cfg.loss
    net.train()
    t0 = time.perf_counter()
    seen = 0
    running: dict[str, float] = {}
    n = data.shape[0]
    for step in bar(range(progress.step + 1, cfg.steps + 1), desc="style-train",
                    initial=progress.step, total=cfg.steps):
        idx = torch.randint(0, n, (cfg.batch_size,), generator=gen)
        flip = torch.rand(cfg.batch_size, generator=gen) < 0.5
        x = data[idx].float().div_(255)
        x[flip] = x[flip].flip(-1)
        x = x.to(device)
        y = net(x)
        with torch.no_grad():
            target_feats = encoder(x)
        feats = encoder(y)
        lc = content_loss(feats, {k: target_feats[k] for k in encoder.content_layers},
                          encoder.content_layers).mean()
        ls = style_loss(feats, grams, encoder.style_layers).mean()
        lt = tv_loss(y).mean()
        loss = w.content_weight * lc + w.style_weight * ls + w.tv_weight * lt
        check_finite("loss", float(loss.detach()), step=step, run=run, advice="lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        progress.step = step
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
            progress.time_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            progress.finished = step == cfg.steps
            checkpoint()

    net.eval()
    with torch.no_grad():
        sample_in = data[:1].float().div(255).to(device)
        save_image(net(sample_in).clamp(0, 1), run / "sample.png")
        last = run.read_metrics()
    summary = {
        "task": TASK,
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
        "time_s": progress.time_s,
    }
    run.write_summary(summary)
    return summary


