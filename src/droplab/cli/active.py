"""``droplab active``: pool-based active learning with MC dropout
(:mod:`droplab.tasks.active`); the parser is generated from
:class:`~droplab.tasks.active.ActiveConfig`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from droplab.cli.options import Command
from droplab.tasks import active


def _done(s: Mapping[str, Any]) -> str:
    rows = [f"{n:>6} labels  test accuracy {acc:.4f}" for n, acc in zip(s["labels"],
                                                                         s["test_acc"])]
    return "\n".join([f"{s['acquisition']} on {s['dataset']} ({s['model']}):", *rows,
                      f"run folder {s['run_dir']} ({s['wall_s']:.1f} s)"])


ACTIVE = Command(
    "active", active.ActiveConfig, active.run, task=active.TASK, human=_done,
    help="active learning: label the images MC dropout is most uncertain about",
    description="Pool-based active learning (Gal et al. 2017): start from --initial labelled "
    "images, then each round train, evaluate on the test split, score the unlabelled pool "
    "with --mc MC-dropout passes and label the --step best images by --acquisition. Writes "
    "a run folder with one metrics.jsonl line per round; --resume continues after a kill.",
)


def register(subparsers: Any) -> None:
    ACTIVE.register(subparsers)
