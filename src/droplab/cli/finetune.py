"""``droplab finetune`` (:mod:`droplab.tasks.finetune`); parser generated from its config."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from droplab.cli.options import Command
from droplab.tasks import finetune


def _human(s: Mapping[str, Any]) -> str:
    return (f"{s['strategy']} from {s['source']}: test accuracy {s['test_acc']:.4f} "
            f"(ECE {s['test_ece']:.4f}) → {s['run_dir']}")


FINETUNE = Command(
    "finetune", finetune.FinetuneConfig, finetune.run, task=finetune.TASK, human=_human,
    help="fine-tune a pretrained backbone with a dropout head",
    description="Fine-tune a pretrained backbone (a droplab run, a torchvision or a timm "
    "model) on a dataset with a fresh dropout head.",
)


def register(subparsers: Any) -> None:
    FINETUNE.register(subparsers)
