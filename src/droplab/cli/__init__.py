"""``droplab`` command line: a thin layer that parses options into a task config.

Each subcommand lives in its own module under :mod:`droplab.cli` exposing
``register(subparsers)``; most declare a :class:`droplab.cli.options.Command`, whose
parser is generated from the task's config dataclass. The handler it sets (``func``) builds
the config, calls the task and prints the summary (one JSON object with ``--json``).
Every error a user can fix is one line on stderr and exit status 2.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from droplab import __version__
from droplab.cli.options import Parser, UsageError
from droplab.errors import UserError

#: Subcommand modules, in the order ``droplab --help`` lists them.
MODULES: list[str] = ["train", "report", "finetune", "sweep", "gan", "style", "serve",
                      "inspect", "active"]


def build_parser() -> Parser:
    parser = Parser(
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
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # named after the subcommand, whose options they were meant for
            prog = f"droplab {args.command}"
            raise UsageError(f"{prog}: error: unrecognized arguments: {' '.join(extra)} "
                             f"(see {prog} --help)")
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return 2
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
