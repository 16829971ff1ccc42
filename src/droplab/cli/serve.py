"""``droplab serve``: a web page and JSON API for trained runs (:mod:`droplab.serve`); the
parser is generated from :class:`~droplab.serve.config.ServeConfig`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from droplab.cli.options import Command, stderr
from droplab.errors import UserError
from droplab.serve.config import ServeConfig


def run_serve(cfg: ServeConfig) -> dict[str, Any]:
    """Serve until Ctrl-C; the address is announced on stderr once the socket listens."""
    try:  # deferred: the `serve` extra (fastapi, uvicorn, python-multipart) is optional
        from droplab.serve.server import serve
    except ImportError as exc:
        raise UserError(f"droplab serve needs the 'serve' extra ({exc.name} is missing); "
                        "install it with: pip install 'droplab[serve]'") from None

    def ready(url: str, models: list[Any]) -> None:
        listed = ", ".join(f"{m.name} [{m.task}]" for m in models)
        stderr(f"droplab serve: {url}/ serving {listed}; Ctrl-C to stop")

    return serve(cfg, on_ready=ready)


def _served(s: Mapping[str, Any]) -> str:
    return (f"served {s['url']} for {s['uptime_s']:.0f} s; responses by status: "
            f"{s['responses'] or 'none'}")


SERVE = Command(
    "serve", ServeConfig, run_serve, human=_served,
    help="web page and JSON API for trained runs (classify, stylize)",
    description="Serve run folders over HTTP: 'train' and 'finetune' runs answer POST "
    "/v1/classify with the MC-dropout prediction, its predictive entropy and mutual "
    "information; 'style-train' runs answer POST /v1/stylize with a PNG. GET / is an upload "
    "page that works offline; GET /healthz lists the models; GET /openapi.json describes "
    "the API. Uploads are bounded before they are read (--max-uploads, --max-bytes, "
    "--max-pixels) and slow clients are cut off (--header-timeout, --idle-timeout, "
    "--body-timeout).",
)


def register(subparsers: Any) -> None:
    SERVE.register(subparsers)
