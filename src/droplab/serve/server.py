"""Listening and connections: the socket, uvicorn, and the timeouts uvicorn lacks.

uvicorn (0.5x, h11) closes a keep-alive connection that stays silent after a response,
but a connection that never sends a request, or sends its head a byte at a time, is held
open for ever (3,000 such connections were held open). :class:`TimedH11Protocol` adds:

- the **idle timeout** from the moment a connection opens, not only after a response;
- a **header timeout**: the request line and headers must be complete ``header_timeout``
  seconds after the connection opened or the previous response ended, however slowly
  they trickle in (slow-loris); a half-sent head gets ``408`` and the connection closes.

Bodies are timed by the app (:func:`droplab.serve.uploads.body_chunks`), which answers 408
itself. The listening socket has ``TCP_NODELAY`` (keep-alive responses written in two
parts otherwise waited 44 ms for the client's delayed ACK) and uvicorn's backlog of 2,048.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import h11
import torch
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from droplab.errors import InvalidValue, UserError
from droplab.serve.app import create_app
from droplab.serve.config import ServeConfig
from droplab.serve.registry import ServedModel, load_models

#: Listen backlog (uvicorn's default): a burst of connects waits in the kernel, not in SYN retries.
BACKLOG = 2048


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with an idle timer from connect and a request-head deadline.

    ``header_timeout`` is set on the subclass :func:`timed_protocol` makes; the idle timer
    is uvicorn's keep-alive timer (``timeout_keep_alive``), armed at connect as well.
    """

    header_timeout: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_cycle: object = None
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler)
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_timer is not None and self.cycle is not self._head_cycle:
            self._stop_head_timer()  # a request head was parsed: a new cycle began

    def on_response_complete(self) -> None:
        cycle = self.cycle
        super().on_response_complete()
        if not self.transport.is_closing() and self.cycle is cycle:
            self._await_head()  # no pipelined request started: the next head is due

    def _await_head(self) -> None:
        self._stop_head_timer()
        self._head_cycle = self.cycle
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_overdue)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_overdue(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.cycle is not self._head_cycle:
            return
        partial, _closed = self.conn.trailing_data
        if partial and self.conn.our_state is h11.IDLE:
            body = json.dumps({"error": f"the request head did not arrive within "
                                        f"{self.header_timeout:g} s (--header-timeout)"}).encode()
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        self.transport.close()


def timed_protocol(header_timeout: float) -> type[TimedH11Protocol]:
    """A :class:`TimedH11Protocol` subclass with this ``header_timeout`` (uvicorn builds
    one protocol instance per connection from the class)."""
    return type("TimedH11Protocol", (TimedH11Protocol,), {"header_timeout": float(header_timeout)})


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0 = any free port), or a one-line error."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise InvalidValue(f"--host {host!r} is not a resolvable address; use e.g. 127.0.0.1"
                           ) from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted sockets inherit it: without, a keep-alive response written in two parts
    # waits for the client's delayed ACK (measured 44 ms per request instead of 2 ms)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pass another "
                        "--port (0 picks a free one)") from None
    sock.listen(BACKLOG)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def make_server(app: Any, cfg: ServeConfig) -> uvicorn.Server:
    """uvicorn serving ``app`` with ``cfg``'s connection timeouts."""
    config = uvicorn.Config(app, http=timed_protocol(cfg.header_timeout), lifespan="on",
                            timeout_keep_alive=cfg.idle_timeout,  # type: ignore[arg-type]
                            backlog=BACKLOG, log_level=cfg.log_level,
                            access_log=cfg.log_level in ("debug", "info"))
    return uvicorn.Server(config)


def raise_open_file_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit (each connection is
    one file; Linux's usual soft limit of 1,024 would refuse connections long before memory
    runs out). Returns the limit now in force (-1 where the platform has none)."""
    try:
        import resource  # POSIX only: deferred so the module imports everywhere
    except ImportError:
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


class BackgroundServer:
    """Run an app with uvicorn in a daemon thread on a free loopback port (tests, benchmarks).

    >>> with BackgroundServer(create_app(cfg)) as url:   # doctest: +SKIP
    ...     httpx.get(url + "/healthz")
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0,
                 log_level: str = "warning") -> None:
        self.app = app
        self.sock = bind_socket(host, port)
        self.url = url_of(self.sock)
        cfg: ServeConfig = getattr(app.state, "config", None) or ServeConfig(runs=["-"])
        self.server = make_server(app, replace(cfg, log_level=log_level))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True, name="droplab-serve")

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the background server did not start")
            time.sleep(0.01)
        return self.url

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def serve(cfg: ServeConfig, on_ready: Callable[[str, list[ServedModel]], None] | None = None
          ) -> dict[str, Any]:
    """Load the runs, listen, and serve until interrupted; returns a summary."""
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    models = load_models(cfg.runs, cfg.device, cfg.mc, abstain_at_error=cfg.abstain_at_error,
                             abstain_by=cfg.abstain_by, seed=cfg.seed)
    raise_open_file_limit()
    sock = bind_socket(cfg.host, cfg.port)
    url = url_of(sock)
    app = create_app(cfg, models)
    server = make_server(app, cfg)
    if on_ready is not None:
        on_ready(url, models)
    t0 = time.perf_counter()
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shuts down gracefully, then re-raises Ctrl-C
        pass
    finally:
        sock.close()
    counts: Counter[int] = app.state.counts
    return {"task": "serve", "url": url, "models": [m.describe() for m in models],
            "responses": {str(k): v for k, v in sorted(counts.items())},
            "uptime_s": time.perf_counter() - t0}
