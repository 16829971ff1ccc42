"""Connections that hold a ``droplab serve`` server: idle sockets, slow-loris heads,
half-sent and trickled bodies, and floods of large uploads (raw sockets against uvicorn in a
background thread; short timeouts so that each case takes about a second).

Bounds on "closed after the timeout" are one-sided where timing could flake: the server
must never close *before* its timeout (a lower bound is safe on a busy machine), and must
close within a generous slack after it.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from droplab.serve import BackgroundServer, ServeConfig, create_app
from serve_helpers import (
    check_error,
    connect,
    healthy,
    make_runs,
    noise_png,
    parse_response,
    png_bytes,
    read_until_closed,
    request_head,
)

HEADER_S, IDLE_S, BODY_S = 1.0, 0.6, 2.5
SLACK_S = 15.0  # upper bound only: a loaded 2-core CI machine may be slow to schedule


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_runs(tmp_path_factory, style=False)


@pytest.fixture(scope="module")
def served(runs: dict[str, Path]):
    cfg = ServeConfig(runs=[str(runs["digits"])], mc=4, device="cpu", max_uploads=3,
                      header_timeout=HEADER_S, idle_timeout=IDLE_S, body_timeout=BODY_S)
    app = create_app(cfg)
    with BackgroundServer(app) as url:
        yield url, app


def closes_after(s: socket.socket, t0: float, timeout: float) -> bytes:
    """What the server sent before closing ``s``; it closed no earlier than ``timeout`` s
    after ``t0`` and within the slack."""
    data, t_closed = read_until_closed(s)
    assert timeout * 0.9 <= t_closed - t0 <= timeout + SLACK_S, t_closed - t0
    return data


def test_idle_connections_are_closed_while_healthz_answers(served) -> None:
    url, _ = served
    t0 = time.monotonic()
    idle = [connect(url) for _ in range(50)]
    with httpx.Client(base_url=url, timeout=30) as client:
        healthy(client)  # answered while 50 connections sit silent
    for s in idle:
        assert closes_after(s, t0, IDLE_S) == b""  # silent close: no request, no response
        s.close()
    with httpx.Client(base_url=url, timeout=30) as client:
        healthy(client)


def test_keep_alive_connection_is_closed_after_idle_timeout(served) -> None:
    url, _ = served
    s = connect(url)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
    t0 = time.monotonic()
    data = closes_after(s, t0, IDLE_S)
    status, headers, body = parse_response(data)
    assert status == 200 and "close" not in headers.get("connection", "")
    assert json.loads(body)["ok"] is True


def test_slow_loris_head_gets_408_after_header_timeout(served) -> None:
    """Bytes that keep trickling do not extend the deadline of the request head."""
    url, _ = served
    s = connect(url)
    t0 = time.monotonic()
    s.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: test\r\n")
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(0.1):
            try:
                s.sendall(b"X")
            except OSError:
                return

    feeder = threading.Thread(target=trickle, daemon=True)
    feeder.start()
    try:
        data = closes_after(s, t0, HEADER_S)
    finally:
        stop.set()
        feeder.join()
    status, headers, body = parse_response(data)
    assert status == 408 and headers["connection"] == "close"
    assert "--header-timeout" in json.loads(body)["error"]


@pytest.mark.parametrize("case", ["stalled", "trickled"])
def test_half_sent_body_gets_408_and_frees_its_upload_slot(served, case: str) -> None:
    url, app = served
    s = connect(url)
    s.sendall(request_head("/v1/classify", "image/png", 100_000) + b"\x89PNG" * 10)
    t0 = time.monotonic()
    stop = threading.Event()
    if case == "trickled":  # a byte every 0.2 s: never idle, but over the body deadline

        def trickle() -> None:
            while not stop.wait(0.2):
                try:
                    s.sendall(b"\0")
                except OSError:
                    return

        threading.Thread(target=trickle, daemon=True).start()
    try:
        data = closes_after(s, t0, IDLE_S if case == "stalled" else BODY_S)
    finally:
        stop.set()
    status, headers, body = parse_response(data)
    assert status == 408 and headers["connection"] == "close"
    error = json.loads(body)["error"]
    assert ("--idle-timeout" if case == "stalled" else "--body-timeout") in error, error
    with httpx.Client(base_url=url, timeout=30) as client:
        assert healthy(client)["uploads"]["in_flight"] == 0
    assert app.state.uploads.in_flight == 0


def test_uploads_beyond_the_bound_get_503_before_their_body_is_read(runs) -> None:
    """``max_uploads`` = 3 uploads are held half-sent; every other upload is refused at once
    with 503 + Retry-After — even one whose 5 MB body has not been sent at all (so nothing
    was buffered for it). When the held uploads complete, they are answered and the slots
    are free again."""
    cfg = ServeConfig(runs=[str(runs["digits"])], mc=4, device="cpu", max_uploads=3,
                      idle_timeout=60, body_timeout=120)  # the holders must not time out
    app = create_app(cfg)
    with BackgroundServer(app) as url:
        _flood(url, app)


def _flood(url: str, app) -> None:
    image = png_bytes(Image.new("L", (8, 8), 77))
    holders = []
    for _ in range(3):
        s = connect(url)
        s.sendall(request_head("/v1/classify", "image/png", len(image)) + image[:10])
        holders.append(s)
    deadline = time.monotonic() + SLACK_S
    while app.state.uploads.in_flight < 3:  # the three heads reached the app
        assert time.monotonic() < deadline
        time.sleep(0.01)

    probe = connect(url)
    probe.sendall(request_head("/v1/classify", "image/png", 5_000_000))  # no body at all
    raw = b""
    while b"\r\n\r\n" not in raw or not raw.rstrip().endswith(b"}"):
        chunk = probe.recv(65536)
        assert chunk, raw  # the server answers; it does not just hang up
        raw += chunk
    status, headers, body = parse_response(raw)
    assert status == 503 and int(headers["retry-after"]) >= 1
    assert "--max-uploads" in json.loads(body)["error"]
    probe.close()

    big = noise_png(700)  # ~1.5 MB: a real large upload, refused just the same
    with httpx.Client(base_url=url, timeout=30) as client, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(
            lambda _: client.post("/v1/classify", files={"file": ("big.png", big)}), range(8)))
        for r in answers:
            check_error(r, 503, "busy", "--max-uploads")
            assert int(r.headers["retry-after"]) >= 1
        for s in holders:  # complete the held uploads: each is answered
            s.sendall(image[10:])
            head = b""
            while b"\r\n\r\n" not in head:
                head += s.recv(65536)
            assert parse_response(head)[0] == 200
            s.close()
        assert healthy(client)["uploads"] == {"in_flight": 0, "max_uploads": 3}
        assert client.post("/v1/classify", files={"file": ("big.png", big)}).status_code == 200
