"""Helpers for the subcommands whose parsers are still written by hand (report, serve,
sweep until their owners generate them from configs with :mod:`droplab.cli.options`)."""

from __future__ import annotations

import argparse
from typing import Any

from droplab.cli.options import emit as _emit
from droplab.cli.options import stderr
from droplab.engine.config import parse_classes
from droplab.errors import InvalidValue, check_rate
from droplab.models.classifiers import parse_widths

__all__ = ["add_run_options", "emit", "parse_classes", "parse_rate", "positive_int", "stderr",
           "widths"]


def add_run_options(parser: argparse.ArgumentParser, *, resume: bool = True) -> None:
    """``--out``, ``--seed``, ``--device``, ``--json`` (and ``--resume``)."""
    g = parser.add_argument_group("run")
    g.add_argument("--out", default=None, help="run folder (default runs/<task>-<timestamp>)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    g.add_argument("--device", default="auto", help="auto|cpu|cuda|mps (default auto)")
    g.add_argument("--json", action="store_true", help="print the final summary as one JSON object")
    if resume:
        g.add_argument("--resume", action="store_true", help="continue the run in --out")


def emit(summary: dict[str, Any], args: argparse.Namespace, human: str | None = None) -> None:
    """Print the summary: one JSON object with ``--json``, else a short human text."""
    _emit(summary, json_output=bool(getattr(args, "json", False)),
          human=(lambda _s: human) if human is not None else None)


def _type(fn: Any) -> Any:
    def convert(text: str) -> Any:
        try:
            return fn(text)
        except InvalidValue as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return convert


def _rate(text: str) -> float:
    return check_rate(text, "rate")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise InvalidValue(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise InvalidValue(f"expected a positive integer, got {text!r}")
    return value


#: argparse ``type=`` converters (messages without internal function names)
parse_rate = _type(_rate)
positive_int = _type(_positive)
widths = _type(parse_widths)
