"""``droplab inspect MODEL``: the sources of randomness in a model and its MC prefix plan.

The parser is generated from :class:`~droplab.tasks.inspect.InspectConfig`.
"""

from __future__ import annotations

from typing import Any

from droplab.cli.options import Command
from droplab.tasks import inspect

INSPECT = Command(
    "inspect", inspect.InspectConfig, inspect.run, human=inspect.human,
    help="list every source of randomness in a model and its MC-dropout prefix plan",
    description="MODEL is a run folder, tv:NAME, timm:NAME or package.module:factory. Lists "
    "every dropout-like layer, attention dropout and dropout called inside forward (name, "
    "kind, rate, whether MC dropout and surgery can drive it) and where MC dropout's cached "
    "prefix ends, with its share of the forward FLOPs.",
)


def register(subparsers: Any) -> None:
    INSPECT.register(subparsers)
