"""Options and output shared by every subcommand."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from droplab.errors import InvalidValue
from droplab.runs import to_jsonable


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
    if getattr(args, "json", False):
        print(json.dumps(to_jsonable(summary), allow_nan=True))
        return
    if human is None:
        human = "\n".join(f"{k}: {_fmt(v)}" for k, v in summary.items() if not isinstance(v, dict | list))
    print(human)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def parse_rate(text: str) -> float:
    """argparse ``type=`` for a drop probability in [0, 1)."""
    from droplab.errors import check_rate

    try:
        return check_rate(text, "rate")
    except InvalidValue as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_classes(text: str | None) -> list[str] | None:
    """``0-4`` or ``0,2,5`` or ``cat,dog`` → list of class tokens (indices kept as str)."""
    if text is None or text == "":
        return None
    out: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part and all(s.strip().isdigit() for s in part.split("-", 1)):
            a, b = (int(s) for s in part.split("-", 1))
            if b < a:
                raise InvalidValue(f"--classes range {part!r} is reversed; write {b}-{a}")
            out.extend(str(i) for i in range(a, b + 1))
        elif part:
            out.append(part)
    return out


def stderr(msg: str) -> None:
    print(msg, file=sys.stderr)
