"""``droplab gan``: train a DCGAN with dropout and score it (FID, KID, IS, modes)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from droplab.cli.options import Command
from droplab.tasks import gan


def _human(s: Mapping[str, Any]) -> str:
    lines = [f"GAN run {s['run_dir']} ({s['dataset']}, loss {s['loss']}, {s['epochs']} epochs)"]
    if "fid" in s:
        lines += [
            f"FID {s['fid']:.3f}   KID {s['kid_mean']:.4f} ± {s['kid_std']:.4f}   "
            f"IS {s['inception_score']:.3f} ± {s['inception_score_std']:.3f}",
            f"modes covered {s['modes_covered']}/{s['num_classes']}   "
            f"KL(class histogram ‖ uniform) {s['kl_uniform']:.4f}",
            f"precision {s['precision']:.3f}   recall {s['recall']:.3f}   "
            f"(features: {s['feature_extractor']})",
        ]
        if "fid_inception" in s:
            lines.append(f"Inception FID {s['fid_inception']:.3f}   KID "
                         f"{s['kid_inception_mean']:.4f} ± {s['kid_inception_std']:.4f}")
    lines.append(f"samples {s['samples']}   checkpoint {s['checkpoint']}")
    return "\n".join(lines)


GAN = Command(
    "gan", gan.GanConfig, gan.run, task="gan", human=_human,
    help="train a GAN with dropout; FID/KID/IS, precision/recall, mode coverage",
    description="Train a DCGAN (non-saturating, hinge or WGAN-GP loss) with dropout in the "
    "discriminator and/or pix2pix noise dropout in the generator, then score samples of "
    "its EMA generator with a classifier's features: FID, KID, Inception Score, "
    "precision/recall and mode coverage. Without --feature-extractor a small classifier "
    "is trained first into OUT/classifier/. `droplab gan --out RUN --resume` continues a "
    "stopped run exactly (a longer --epochs may be given).",
)


def register(subparsers: Any) -> None:
    GAN.register(subparsers)
