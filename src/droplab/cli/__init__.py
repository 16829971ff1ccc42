"""``droplab`` command line: a thin layer that parses options into a task config.

Each subcommand lives in its own module under :mod:`droplab.cli` exposing
``register(subparsers)``; most declare a :class:`droplab.cli.options.Command`, whose
parser is generated from the task's config dataclass. The handler it sets (``func``) builds
the config, calls the task and prints the summary (one JSON object with ``--json``).
Every error a user can fix is one line on stderr and exit status 2.
"""

from __future__ import annotations

import contextlib
import importlib
import signal
import sys
import threading
from collections.abc import Iterator, Sequence

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
        with _sigterm_as_interrupt():
            return int(args.func(args) or 0)
    except UserError as exc:
        print(f"droplab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as exc:
        if not _out_of_memory(exc):
            raise
        print(f"droplab {args.command}: error: out of memory ({_first_line(exc)}); use a "
              "smaller --batch-size, --image-size or --limit", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"droplab {args.command}: interrupted; the last checkpoint is kept "
            "(rerun with --resume to continue)",
            file=sys.stderr,
        )
        return 130


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, a scheduler's stop) ends a command as Ctrl-C does: the last
    checkpoint kept, one line, exit 130, the lock released. Only where nothing else
    (e.g. a server's own handler, an embedding application) has claimed the signal."""
    if threading.current_thread() is not threading.main_thread() or (
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _out_of_memory(exc: BaseException) -> bool:
    """A failed allocation (host or accelerator), not some other RuntimeError."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return "can't allocate memory" in text or "out of memory" in text.lower()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "you tried to allocate" in text:  # PyTorch: "... you tried to allocate N bytes. ..."
        n = text.split("you tried to allocate", 1)[1].split("bytes", 1)[0].strip()
        if n.isdigit():
            return f"{int(n) / 2**30:.1f} GiB asked for"
    return text[:160]


if __name__ == "__main__":
    raise SystemExit(main())
