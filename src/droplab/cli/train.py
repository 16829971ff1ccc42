"""``droplab train`` and ``droplab evaluate`` (:mod:`droplab.tasks.classify`).

Both parsers are generated from their configs (:class:`~droplab.tasks.classify.ClassifyConfig`,
:class:`~droplab.tasks.classify.EvaluateConfig`); ``train --out RUN --resume`` starts from
the run's stored ``config.json``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from droplab.cli.options import Command
from droplab.tasks import classify


def _trained(s: Mapping[str, Any]) -> str:
    return (f"test accuracy {s['test_acc']:.4f} (NLL {s['test_loss']:.4f}, "
            f"ECE {s['test_ece']:.4f}) after {s['epochs']} epochs in {s['time_s']:.1f} s; "
            f"run folder {s['run_dir']}")


def _evaluated(out: Mapping[str, Any]) -> str:
    lines = [f"accuracy {out['acc']:.4f}  NLL {out['nll']:.4f}  ECE {out['ece']:.4f}  "
             f"Brier {out['brier']:.4f}  ({out['test_images']} test images)"]
    if "mc_acc" in out:
        lines.append(
            f"MC dropout T={out['mc_samples']}: accuracy {out['mc_acc']:.4f}  NLL "
            f"{out['mc_nll']:.4f}  ECE {out['mc_ece']:.4f}  entropy {out['mc_entropy']:.4f}  "
            f"mutual information {out['mc_mutual_information']:.4f}")
    if "ood_dataset" in out:
        lines.append(
            f"OOD vs {out['ood_dataset']}: AUROC {out['ood_auroc_mutual_information']:.4f} by "
            f"mutual information, {out['ood_auroc_max_prob']:.4f} by max probability")
    lines.append(f"figures: {', '.join(out['figures'])}")
    return "\n".join(lines)


TRAIN = Command(
    "train", classify.ClassifyConfig, classify.run, task=classify.TASK, human=_trained,
    help="train an image classifier with dropout",
    description="Train a classifier (digits, mnist, fashion-mnist, cifar10, imagefolder:PATH) "
    "with dropout; writes a run folder with config.json, metrics.jsonl, checkpoint.pt, "
    "summary.json and learning_curves.png. Under torchrun --nproc-per-node N -m droplab "
    "train … it trains data-parallel.",
)
EVALUATE = Command(
    "evaluate", classify.EvaluateConfig, classify.evaluate, human=_evaluated,
    help="evaluate a trained run: accuracy, NLL, ECE, Brier, MC dropout, OOD",
    description="Evaluate a `droplab train` (or finetune) run folder on its test split; "
    "writes reliability.png, confusion.png and evaluation.json into the folder.",
)


def register(subparsers: Any) -> None:
    TRAIN.register(subparsers)
    EVALUATE.register(subparsers)
