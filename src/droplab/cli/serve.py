"""``droplab serve``: a web page and JSON API for trained runs."""

from __future__ import annotations

import argparse
import re
from typing import Any

import torch

from droplab.cli.common import emit, stderr
from droplab.errors import InvalidValue, UserError

_UNITS = {"": 1, "k": 1000, "kb": 1000, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_size(text: str) -> int:
    """``10MB``, ``500k``, ``2MiB`` or a plain number of bytes (argparse ``type=``)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; write e.g. 10MB, 500kB or 1048576")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve", help="web page and JSON API for trained runs (classify, stylize)",
        description="Serve run folders over HTTP: 'train' runs answer POST /v1/classify with "
        "the MC-dropout prediction, its predictive entropy and mutual information; "
        "'style-train' runs answer POST /v1/stylize with a PNG. GET / is an upload page that "
        "works offline; GET /healthz lists the models.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (train / style-train)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0: any free)")
    p.add_argument("--mc", type=int, default=20, metavar="T",
                   help="MC-dropout passes per classification (default 20)")
    p.add_argument("--max-bytes", type=parse_size, default=10 * 2**20, metavar="SIZE",
                   help="largest upload, e.g. 10MiB (default 10 MiB)")
    p.add_argument("--max-pixels", type=int, default=40_000_000,
                   help="largest image in pixels, checked in the header (default 40,000,000)")
    p.add_argument("--max-uploads", type=int, default=32,
                   help="requests holding an upload at once (being received, waiting or "
                   "running); more get 503 + Retry-After before their body is read (default 32)")
    p.add_argument("--header-timeout", type=float, default=10.0, metavar="S",
                   help="seconds a request's line and headers may take to arrive; then 408 "
                   "and the connection is closed (default 10)")
    p.add_argument("--idle-timeout", type=float, default=10.0, metavar="S",
                   help="seconds of silence before an idle connection is closed, or a "
                   "stalled upload gets 408 (default 10)")
    p.add_argument("--body-timeout", type=float, default=60.0, metavar="S",
                   help="seconds a whole upload may take to arrive; then 408 (default 60)")
    p.add_argument("--concurrency", type=int, default=1,
                   help="inferences running at once (default 1)")
    p.add_argument("--queue", type=int, default=16,
                   help="requests waiting beyond those; more get 503 + Retry-After (default 16)")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds before a request gets 504 (default 30)")
    p.add_argument("--style-size", type=int, default=512,
                   help="stylize: longer side larger images are scaled down to (default 512)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning",
                                                            "info", "debug"])
    p.add_argument("--seed", type=int, default=0,
                   help="default seed of the MC-dropout masks (a request may pass its own)")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|mps (default auto)")
    p.add_argument("--json", action="store_true",
                   help="print the final summary (on shutdown) as one JSON object")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    try:  # deferred: the `serve` extra (fastapi, uvicorn, python-multipart) is optional
        from droplab.serve import ServeConfig, ServedModel, serve
    except ImportError as exc:
        raise UserError(f"droplab serve needs the 'serve' extra ({exc.name} is missing); "
                        "install it with: pip install 'droplab[serve]'") from None

    if args.threads is not None:
        if args.threads < 1:
            raise InvalidValue("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    cfg = ServeConfig(
        runs=list(args.runs), host=args.host, port=args.port, mc=args.mc,
        max_bytes=args.max_bytes, max_pixels=args.max_pixels, max_uploads=args.max_uploads,
        concurrency=args.concurrency, queue=args.queue, timeout=args.timeout,
        header_timeout=args.header_timeout, idle_timeout=args.idle_timeout,
        body_timeout=args.body_timeout, style_size=args.style_size, seed=args.seed,
        device=args.device, log_level=args.log_level,
    )

    def ready(url: str, models: list[ServedModel]) -> None:
        listed = ", ".join(f"{m.name} [{m.task}]" for m in models)
        stderr(f"droplab serve: {url}/ serving {listed}; Ctrl-C to stop")

    s = serve(cfg, on_ready=ready)
    emit(s, args, human=f"served {s['url']} for {s['uptime_s']:.0f} s; responses by status: "
         f"{s['responses'] or 'none'}")
    return 0
