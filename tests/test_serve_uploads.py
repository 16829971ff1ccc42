"""Uploads: admission, bounded streaming into a spool (measured with tracemalloc), the
body limits, and a fuzz of the whole upload path through the real server process.

The fuzz sends ≥ 2,000 mutated PNG/JPEG/TIFF/WebP/GIF/BMP bodies (``tests/fuzzing.py``:
bit flips, truncations, chunk length lies, header dimensions up to 2³²−1) to
``droplab serve`` running in a child process, so that a crash of the process (a segfault in a decoder, an abort) is seen as
a dead child and a refused connection, never hidden: every answer must be 2xx or 4xx, the
child must be alive at the end and its log free of tracebacks.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from starlette.requests import Request

from droplab.serve import ServeConfig
from droplab.serve.errors import ApiError
from droplab.serve.uploads import SPOOL_BYTES, Body, UploadGate, read_upload
from fuzzing import corpus
from serve_helpers import REPO, make_runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_runs(tmp_path_factory, style=False)


# ------------------------------------------------------------------------------ admission
def test_upload_gate_bounds_and_releases() -> None:
    gate = UploadGate(2)
    assert gate.try_acquire() and gate.try_acquire() and not gate.try_acquire()
    assert gate.in_flight == 2
    released = []
    body = Body(io.BytesIO(b"x"), 1, {}, on_close=lambda: (released.append(1), gate.release()))
    body.close()
    body.close()  # idempotent: the slot is released once
    assert released == [1] and gate.in_flight == 1 and body.file.closed
    assert gate.try_acquire() and not gate.try_acquire()
    gate.release()
    gate.release()
    with pytest.raises(RuntimeError, match="without a matching acquire"):
        gate.release()


# ------------------------------------------------------------------------------ streaming
CHUNK = 64 * 1024
Receive = Callable[[], Awaitable[dict]]


def fake_request(content_type: str, receive: Receive, length: int | str | None = None,
                 query: bytes = b"") -> Request:
    """A Starlette request reading its body from the ASGI ``receive`` given."""
    headers = [(b"content-type", content_type.encode())]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    scope = {"type": "http", "method": "POST", "path": "/v1/classify", "headers": headers,
             "query_string": query}
    return Request(scope, receive)


def generated(total: int, prefix: bytes = b"", suffix: bytes = b"") -> tuple[Receive, Any]:
    """``receive`` handing out ``prefix`` + ``total`` pseudo-random bytes + ``suffix`` in
    64 KiB messages made on demand (the body never exists whole), and the running SHA-256
    of the ``total`` bytes."""
    rng = np.random.default_rng(0)
    digest = hashlib.sha256()
    sizes = [CHUNK] * (total // CHUNK) + ([total % CHUNK] if total % CHUNK else [])
    parts: list[bytes | int] = [prefix, *sizes, suffix]
    parts.reverse()

    async def receive() -> dict:
        part = parts.pop()
        if isinstance(part, int):
            part = rng.integers(0, 256, part, dtype=np.uint8).tobytes()
            digest.update(part)
        return {"type": "http.request", "body": part, "more_body": bool(parts)}

    return receive, digest


@pytest.mark.parametrize("form", ["raw", "multipart"])
def test_large_upload_is_streamed_to_a_spool_never_held_whole(form: str) -> None:
    """An 8 MiB upload peaks under the 1 MiB spool + 8 messages of Python allocations (the
    old server held the body whole, twice: 2 × 8 MiB), and reads back byte for byte."""
    total = 8 * 2**20
    cfg = ServeConfig(runs=["-"], max_bytes=16 * 2**20)
    if form == "raw":
        receive, digest = generated(total)
        request = fake_request("image/png", receive, length=total, query=b"seed=4")
    else:
        boundary = "b0undary"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"seed\"\r\n\r\n4\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                "filename=\"x.png\"\r\nContent-Type: image/png\r\n\r\n").encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        receive, digest = generated(total, head, tail)
        request = fake_request(f"multipart/form-data; boundary={boundary}", receive)
    tracemalloc.start()
    try:
        body = asyncio.run(read_upload(request, cfg))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    try:
        assert body.size == total and body.fields["seed"] == "4"
        assert peak < SPOOL_BYTES + 8 * CHUNK, peak
        assert hashlib.sha256(body.file.read()).hexdigest() == digest.hexdigest()
    finally:
        body.close()


async def never() -> dict:
    raise AssertionError("the body was read although its Content-Length was refused")


async def disconnect() -> dict:
    return {"type": "http.disconnect"}


def stalls_after(first: bytes) -> Receive:
    sent = []

    async def receive() -> dict:
        if sent:
            await asyncio.sleep(3600)
        sent.append(first)
        return {"type": "http.request", "body": first, "more_body": True}

    return receive


async def trickles() -> dict:
    await asyncio.sleep(0.02)  # never silent for the 0.05 s idle timeout
    return {"type": "http.request", "body": b"\0", "more_body": True}


async def floods() -> dict:
    return {"type": "http.request", "body": b"\0" * 600, "more_body": True}


@pytest.mark.parametrize("receive, length, status, words", [
    (never, 1001, 413, "1,000 bytes"),
    (never, 10**12, 413, "--max-bytes"),
    (never, "12x", 400, "Content-Length"),
    (floods, None, 413, "--max-bytes"),  # no Content-Length: cut off while streaming
    (stalls_after(b"\x89PNG"), 100, 408, "--idle-timeout"),
    (trickles, 500, 408, "--body-timeout"),
    (disconnect, 100, 400, "closed the connection"),
], ids=["declared", "declared-huge", "bad-length", "streamed", "stalled", "trickled", "gone"])
def test_body_limits(receive: Receive, length: int | str | None, status: int,
                     words: str) -> None:
    cfg = ServeConfig(runs=["-"], max_bytes=1000, idle_timeout=0.05, body_timeout=0.3)
    with pytest.raises(ApiError) as info:
        asyncio.run(read_upload(fake_request("image/png", receive, length), cfg))
    assert info.value.status == status and words in info.value.message, info.value.message
    assert "\n" not in info.value.message
    if status == 408:  # the client stalled mid-request: the connection cannot be reused
        assert info.value.headers == {"Connection": "close"}


# ------------------------------------------------------------------------------ fuzz
N_FUZZ = 2100


def test_fuzzed_uploads_never_crash_or_500_the_server(runs, tmp_path: Path) -> None:
    bodies = [(label.split()[0].split("-")[0], data) for label, data in corpus(N_FUZZ, seed=14)]
    assert len(bodies) >= 2000
    assert {"png", "jpeg", "tiff", "webp"} <= {kind for kind, _ in bodies}
    log = tmp_path / "server.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DROPLAB_PROGRESS": "0",
           "PYTHONPATH": str(REPO / "src")}
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "droplab", "serve", str(runs["digits"]), "--port", "0",
             "--mc", "2", "--max-pixels", "2000000", "--max-bytes", "1MB", "--threads", "1",
             "--log-level", "warning", "--device", "cpu"],
            stdout=subprocess.DEVNULL, stderr=err, env=env)
    statuses: Counter[int] = Counter()
    try:
        deadline = time.monotonic() + 60
        while "droplab serve: http" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        url = log.read_text().split("droplab serve: ")[1].split()[0].rstrip("/")
        with httpx.Client(base_url=url, timeout=60) as client:
            for i, (kind, data) in enumerate(bodies):
                try:
                    if i % 3 == 0:  # a third as multipart forms, the rest as raw bodies
                        r = client.post("/v1/classify", files={"file": ("x", data)})
                    else:
                        r = client.post("/v1/classify", content=data,
                                        headers={"content-type": f"image/{kind}"})
                except httpx.TransportError as exc:
                    pytest.fail(f"body {i} ({kind}) broke the connection ({exc!r}); server "
                                f"exit status {proc.poll()}:\n{log.read_text()[-2000:]}")
                statuses[r.status_code] += 1
                assert 200 <= r.status_code < 500, (i, kind, r.status_code, r.text)
                if r.status_code >= 400:
                    assert set(r.json()) == {"error"} and "\n" not in r.json()["error"]
        assert proc.poll() is None, f"the server died: exit status {proc.returncode}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = log.read_text()
    assert "Traceback" not in text and "unhandled error" not in text, text[-3000:]
    assert sum(statuses.values()) == len(bodies)
    # the corpus reaches both sides: decodable mutants are answered, broken ones refused
    assert statuses[200] > 100 and sum(v for k, v in statuses.items() if k >= 400) > 500, statuses
