"""Shared pieces of the ``droplab serve`` tests: real tiny runs, image bytes, raw sockets.

The runs are real: a tiny digits MLP trained for one epoch and a tiny style network trained
for two steps, both through ``droplab.cli.main`` (:func:`make_runs`, once per session).
"""

from __future__ import annotations

import io
import os
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from droplab.cli import main

REPO = Path(__file__).resolve().parents[1]


def png_bytes(img: Image.Image, fmt: str = "PNG", **save: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def noise_png(side: int, seed: int = 0) -> bytes:
    """An RGB noise PNG of about 3·side² bytes (noise does not compress)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    return png_bytes(Image.fromarray(pixels), compress_level=1)


_RUNS: dict[str, Path] = {}


def make_runs(tmp_path_factory: pytest.TempPathFactory, style: bool = True) -> dict[str, Path]:
    """The tiny runs ``digits`` (and ``style`` unless ``style=False``) in a session
    temporary folder (``root``), each trained on its first request of the session; test
    modules wrap this in a ``runs`` fixture and must not write into these folders."""
    if "root" not in _RUNS:
        _RUNS["root"] = tmp_path_factory.mktemp("serve")
        os.environ["DROPLAB_PROGRESS"] = "0"
    root = _RUNS["root"]
    if "digits" not in _RUNS:
        assert main(["train", "--dataset", "digits", "--model", "mlp", "--widths", "32",
                     "--dropout", "0.3", "--epochs", "1", "--device", "cpu", "--out",
                     str(root / "digits")]) == 0
        _RUNS["digits"] = root / "digits"
    if style and "style" not in _RUNS:
        content = root / "content"
        content.mkdir()
        rng = np.random.default_rng(0)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
                            ).save(content / f"{i}.png")
        assert main(["style-train", "--style", "coffee", "--content-dir", str(content),
                     "--steps", "2", "--image-size", "32", "--batch-size", "2", "--width", "4",
                     "--n-residual", "1", "--encoder", "random", "--dropout", "0.3",
                     "--device", "cpu", "--out", str(root / "style")]) == 0
        _RUNS["style"] = root / "style"
    return dict(_RUNS)


def check_error(r: httpx.Response, status: int, *words: str) -> str:
    """A one-line JSON error with the expected status and no server internals."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"} and "\n" not in body["error"] and body["error"]
    assert "Traceback" not in r.text and 'File "' not in r.text
    for w in words:
        assert w in body["error"], body["error"]
    return body["error"]


def healthy(client: httpx.Client) -> dict:
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json()["ok"] is True
    return r.json()


# ------------------------------------------------------------------------------ raw sockets
def connect(url: str, timeout: float = 30.0) -> socket.socket:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=timeout)
    s.settimeout(timeout)
    return s


def read_until_closed(s: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when it closed
    (``time.monotonic()``)."""
    out = b""
    while True:
        try:
            data = s.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            return out, time.monotonic()
        out += data


def request_head(path: str, content_type: str, length: int) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, lower-cased headers and body of one raw HTTP/1.1 response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    return status, headers, body
