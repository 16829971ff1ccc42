"""What the style benchmarks share: image sets, timing, training runs and the judges.

- training content: scikit-image's bundled photos (written once to
  ``benchmarks/runs/style-data/content``); held-out content: ``../shared/images/content``
  (never seen in training); styles: ``../shared/images/style``;
- :class:`Judge`: losses under two *evaluation* encoders that no optimiser or training
  run uses — ``cifar-eval`` (a second CIFAR-10 network droplab trained with other widths
  and another seed, :data:`EVAL_WEIGHTS`, made by the commands in ``style_encoder.py``; not
  shipped in the package) and a random encoder with seed 7919;
  content loss at the encoder's content layer, Gram style loss over its style layers (both
  relative, :mod:`droplab.models.style.losses`), SSIM to the content image;
- :func:`best_of`: interleaved timing, the minimum of each method over rounds (the least
  disturbed run on a shared machine).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from droplab.data.images import load_image, read_image
from droplab.evaluate.style import ssim
from droplab.models.style import (
    Encoder,
    RandomEncoder,
    TrainedEncoder,
    content_loss,
    gram,
    load_encoder_weights,
    style_loss,
)

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
RUNS = ROOT / "runs"
EVAL_WEIGHTS = RUNS / "encoder-lenet-eval.pt"
TRAIN_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket",
                "hubble_deep_field", "immunohistochemistry")


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def shared_images(images: str | Path) -> tuple[list[Path], list[Path]]:
    root = Path(images)
    contents = sorted((root / "content").glob("*.jpg"))
    styles = sorted((root / "style").glob("*.jpg"))
    if not contents or not styles:
        raise SystemExit(f"no images under {root}/content and {root}/style")
    return contents, styles


def training_content() -> Path:
    """scikit-image's photos as a content folder (written once)."""
    folder = RUNS / "style-data" / "content"
    if not folder.is_dir() or len(list(folder.glob("*.png"))) < len(TRAIN_PHOTOS):
        folder.mkdir(parents=True, exist_ok=True)
        for name in TRAIN_PHOTOS:
            load_image(name).save(folder / f"{name}.png")
    return folder


def best_of(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, dict[str, float]]:
    """Interleaved rounds; per method the minimum and the median wall seconds, and the
    minimum process CPU seconds (all threads; on a busy machine the steadier figure)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(rounds):
        for k, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    return {k: {"min_s": min(v), "median_s": statistics.median(v), "cpu_min_s": min(cpu[k])}
            for k, v in times.items()}


def load(path: str | Path, size: int | None) -> torch.Tensor:
    return read_image(path, size)


class Judge:
    """Evaluation-encoder losses of stylised images (encoders no optimiser used)."""

    def __init__(self) -> None:
        if not EVAL_WEIGHTS.is_file():
            raise SystemExit(f"{EVAL_WEIGHTS} is missing: make it with the second pair of "
                             "commands in benchmarks/style_encoder.py")
        ev = TrainedEncoder(load_encoder_weights(EVAL_WEIGHTS), label="cifar-eval")
        self.encoders: dict[str, Encoder] = {"cifar-eval": ev,
                                             "random-7919": RandomEncoder(7919)}

    @torch.no_grad()
    def __call__(self, y: torch.Tensor, content: torch.Tensor, style: torch.Tensor
                 ) -> dict[str, float]:
        out: dict[str, float] = {"ssim": ssim(y, content)}
        for name, enc in self.encoders.items():
            fy, fc, fs = enc(y), enc(content), enc(style)
            grams = {n: gram(fs[n]) for n in enc.style_layers}
            out[f"{name}.content"] = float(content_loss(
                fy, {n: fc[n] for n in enc.content_layers}, enc.content_layers).sum())
            out[f"{name}.style"] = float(style_loss(fy, grams, enc.style_layers).sum())
        return out


def mean_of(records: list[dict[str, float]]) -> dict[str, float]:
    keys = records[0].keys()
    return {k: statistics.fmean(r[k] for r in records) for k in keys}
