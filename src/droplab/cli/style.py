"""``droplab stylize``, ``droplab style-train`` and ``droplab style-apply``
(:mod:`droplab.tasks.style`); parsers generated from their configs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from droplab.cli.options import Command
from droplab.tasks import style


def _stylized(s: Mapping[str, Any]) -> str:
    return (f"wrote {s['output']} ({s['encoder']}); style loss {s['style_loss_initial']:.4g} "
            f"(content image) → {s['style_loss_final']:.4g}; content loss "
            f"{s['content_loss_final']:.4g}; {s['seconds_per_step']:.3g} s/step")


def _trained(s: Mapping[str, Any]) -> str:
    return (f"trained {s['steps']} steps on {s['images']} images ({s['encoder']}); style loss "
            f"{s['first_style_loss']:.4g} → {s['final_style_loss']:.4g}; model in {s['run_dir']}")


def _applied(s: Mapping[str, Any]) -> str:
    human = f"wrote {len(s['outputs'])} image(s) to {s.get('out', '-')}"
    if "onnx" in s:
        human += f"; ONNX model {s['onnx']}"
    if "diversity" in s:
        human += f"; MC diversity {s['diversity']:.4g}"
    return human


STYLIZE = Command(
    "stylize", style.StylizeConfig, style.run_stylize, human=_stylized,
    help="optimisation-based style transfer (Gatys et al. 2016)",
    description="Optimise an image to have the content of one image and the style of "
    "others. Images are paths or scikit-image sample names (astronaut, coffee, chelsea, "
    "hubble_deep_field, …). --out x.png writes the image there; --out DIR makes a run "
    "folder with stylized.png, metrics.jsonl and summary.json.",
)
STYLE_TRAIN = Command(
    "style-train", style.StyleTrainConfig, style.run_style_train, task="style-train",
    human=_trained,
    help="train a feed-forward style network (Johnson et al. 2016)",
    description="Train a transformer network to stylise any image in one pass, on a folder "
    "of content images, with optional spatial dropout.",
)
STYLE_APPLY = Command(
    "style-apply", style.StyleApplyConfig, style.run_style_apply, human=_applied,
    help="stylise images with a style-train model",
    description="Stylise image files or folders with a trained network (MODEL = a "
    "style-train run folder or its checkpoint.pt).",
)


def register(subparsers: Any) -> None:
    for command in (STYLIZE, STYLE_TRAIN, STYLE_APPLY):
        command.register(subparsers)
