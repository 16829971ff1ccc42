"""``droplab`` command line: a thin layer that parses options into a task config.

Each subcommand lives in its own module under :mod:`droplab.cli` exposing
``register(subparsers)``; the handler it sets (``func``) turns parsed arguments into a
config dataclass, calls the task's ``run()`` and prints the summary.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from droplab import __version__
from droplab.errors import UserError

#: Subcommand modules, in the order ``droplab --help`` lists them.
MODULES: list[str] = ["train", "report", "finetune", "sweep", "gan", "style", "serve"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="droplab",
        description="Dropout as a first-class, measured tool for image deep learning.",
    )
    parser.add_argument("--version", action="version", version=f"droplab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in MODULES:
        importlib.import_module(f"droplab.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``droplab`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"droplab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"droplab {args.command}: interrupted; the last checkpoint is kept "
            "(rerun with --resume to continue)",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
