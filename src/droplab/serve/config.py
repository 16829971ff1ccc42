"""Options of ``droplab serve`` (one dataclass; the CLI maps its flags onto it)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from droplab.errors import InvalidValue


@dataclass
class ServeConfig:
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

    runs: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 8000
    mc: int = 20
    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_uploads: int = 32
    concurrency: int = 1
    queue: int = 16
    timeout: float = 30.0
    header_timeout: float = 10.0
    idle_timeout: float = 10.0
    body_timeout: float = 60.0
    style_size: int = 512
    seed: int = 0
    device: str = "auto"
    log_level: str = "info"

    def validate(self) -> None:
        """Raise a one-line :class:`InvalidValue` naming the first bad option."""
        if not self.runs:
            raise InvalidValue("give at least one run folder to serve (droplab serve RUN …)")
        for name in ("mc", "max_bytes", "max_pixels", "max_uploads", "concurrency",
                     "style_size"):
            if int(getattr(self, name)) < 1:
                raise InvalidValue(f"--{name.replace('_', '-')} must be at least 1")
        if self.queue < 0:
            raise InvalidValue("--queue must be 0 or more waiting requests")
        for name in ("timeout", "header_timeout", "idle_timeout", "body_timeout"):
            value = float(getattr(self, name))
            if not (value > 0 and math.isfinite(value)):  # also rejects NaN
                raise InvalidValue(f"--{name.replace('_', '-')} must be a positive, finite "
                                   f"number of seconds, got {value:g}")
        if not 0 <= self.port <= 65535:
            raise InvalidValue(f"--port {self.port} is not a TCP port; use 1–65535 (0: any free)")
