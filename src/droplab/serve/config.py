"""Options of ``droplab serve``, declared once (:mod:`droplab.config`): the dataclass is the
validation, the ``--help`` text and the command-line parser (:mod:`droplab.cli.serve`).

This module imports no web framework, so the CLI can build its parser without the
optional ``serve`` extra installed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from droplab.config import Config, option
from droplab.engine.config import parse_device
from droplab.errors import InvalidValue

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_size(text: str) -> int:
    """``10MB``, ``500k``, ``2MiB`` or a plain number of bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise InvalidValue(f"--max-bytes {text!r} is not a size; write e.g. 10MB, 500kB, 2MiB "
                           "or 1048576")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


@dataclass
class ServeConfig(Config):
    """Options of ``droplab serve``.

    Limits on untrusted clients, cheapest first: ``max_uploads`` requests may hold an
    upload at once (counted before a body byte is read; more get 503 + Retry-After); a
    request head must arrive within ``header_timeout`` s; a connection silent for
    ``idle_timeout`` s between requests is closed, and a body that stalls that long gets
    408; a whole body must arrive within ``body_timeout`` s; ``max_bytes`` per upload
    (from Content-Length, then while streaming; bodies over 1 MiB are spooled to a
    temporary file, never held whole in memory) and ``max_pixels`` per image (read from
    its header before decoding). ``concurrency`` inferences run at once and ``queue`` more
    wait; a request not answered within ``timeout`` s gets 504.
    """

    runs: list[str] = option(factory=list, positional=True, nargs="+", metavar="RUN",
                             help="run folders to serve (train, finetune, style-train)")
    host: str = option("127.0.0.1", metavar="ADDR", help="address to listen on")
    port: int = option(8000, ge=0, le=65535, help="TCP port (0: any free one)")
    mc: int = option(20, ge=1, metavar="T", help="MC-dropout passes per classification")
    max_bytes: int = option(10 * 2**20, ge=1, parse=parse_size, metavar="SIZE",
                            help="largest upload, e.g. 10MiB (default 10 MiB)")
    max_pixels: int = option(40_000_000, ge=1, metavar="N",
                             help="largest image in pixels, read from its header before "
                             "decoding (default 40,000,000)")
    max_uploads: int = option(32, ge=1, metavar="N",
                              help="requests holding an upload at once (being received, "
                              "waiting or running); more get 503 + Retry-After before their "
                              "body is read")
    concurrency: int = option(1, ge=1, metavar="N", help="inferences running at once")
    queue: int = option(16, ge=0, metavar="N",
                        help="requests waiting beyond those; more get 503 + Retry-After")
    timeout: float = option(30.0, gt=0, metavar="S", help="seconds before a request gets 504")
    header_timeout: float = option(10.0, gt=0, metavar="S",
                                   help="seconds a request's line and headers may take to "
                                   "arrive; then 408 and the connection is closed")
    idle_timeout: float = option(10.0, gt=0, metavar="S",
                                 help="seconds of silence before an idle connection is "
                                 "closed, or a stalled upload gets 408")
    body_timeout: float = option(60.0, gt=0, metavar="S",
                                 help="seconds a whole upload may take to arrive; then 408")
    abstain_at_error: float | None = option(
        None, gt=0, lt=1, metavar="E",
        help="abstain: pick the uncertainty threshold on each classifier run's validation "
        "split that gives error <= E on the answered images; requests above it get "
        '"abstained": true (default: always answer)')
    abstain_by: str = option("entropy", choices=("entropy", "mutual_information", "max_prob"),
                             what="uncertainty score",
                             help="uncertainty the --abstain-at-error threshold applies to: "
                             "predictive entropy, mutual information (BALD) or 1 - max "
                             "probability")
    style_size: int = option(512, ge=1, metavar="PX",
                             help="stylize: larger images are scaled down to this longer side")
    threads: int | None = option(None, ge=1, metavar="N",
                                 help="torch CPU threads (default: torch's choice)")
    seed: int = option(0, ge=0, help="default seed of the MC-dropout masks (a request may "
                       "pass its own)")
    device: str = option("auto", parse=parse_device, metavar="DEVICE",
                         help="auto|cpu|cuda|mps")
    log_level: str = option("info", choices=("critical", "error", "warning", "info", "debug"),
                            what="log level", help="uvicorn's log level")

    def validate(self) -> None:
        if not self.runs:
            raise InvalidValue("give at least one run folder to serve (droplab serve RUN …)")
