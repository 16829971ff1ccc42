"""Latency of ``droplab serve`` under a bounded load, against in-process inference.

A tiny digits MLP (``--run``, else trained here for one epoch, dropout 0.3) is served by
the real command in a subprocess (``droplab serve RUN --port 0 --threads 1``), so client
threads and server do not share an interpreter. Three measurements, one run:

* ``direct``     – the same work without HTTP: decode the PNG, preprocess, ``--mc`` MC-dropout
                   passes (:func:`droplab.serve.classify_image`), in this process, one at a time;
* ``sequential`` – ``--seq`` requests to the idle server, one at a time (HTTP + queue overhead);
* ``load``       – ``--requests`` requests from ``--clients`` concurrent clients with
                   ``--concurrency`` workers and a waiting line (``--queue``) large enough to
                   hold every client: nothing is rejected, requests wait;
* ``overload``   – the same load with ``--overload-queue`` places: the excess gets 503 +
                   Retry-After (counted, expected), never an error or a hang.

Latencies are per request, client side (p50/p95/p99). The CPU may be shared, so the
figures to compare are the ratios to ``direct`` measured in the same run. Writes
``benchmarks/results/serve.json``.

    python benchmarks/serve.py                      # 200 requests, 16 clients, T = 20
    python benchmarks/serve.py --requests 50 --clients 8 --out /tmp/serve.json   # quick
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from PIL import Image

from droplab.runs import atomic_write_json

HERE = Path(__file__).resolve().parent


def _pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100])."""
    s = sorted(values)
    return s[max(0, min(len(s) - 1, int(np.ceil(q / 100 * len(s))) - 1))]


def _stats(lat: list[float]) -> dict[str, float]:
    return {"p50_ms": 1e3 * _pct(lat, 50), "p95_ms": 1e3 * _pct(lat, 95),
            "p99_ms": 1e3 * _pct(lat, 99), "mean_ms": 1e3 * statistics.fmean(lat)}


def _images(n: int) -> list[bytes]:
    from droplab.data import load_dataset

    test = load_dataset("digits").test.images
    out = []
    for i in range(n):
        img = Image.fromarray(test[i, 0].numpy()).resize((32, 32), Image.Resampling.NEAREST)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


class Server:
    """``droplab serve`` in a subprocess on a free port."""

    def __init__(self, run: Path, *, mc: int, concurrency: int, queue: int, threads: int) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "DROPLAB_PROGRESS": "0"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "droplab", "serve", str(run), "--port", "0", "--mc", str(mc),
             "--concurrency", str(concurrency), "--queue", str(queue), "--threads", str(threads),
             "--log-level", "warning", "--device", "cpu"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        line = self.proc.stderr.readline() if self.proc.stderr else ""
        if not line.startswith("droplab serve: http"):
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line.strip()}")
        self.url = line.split()[2].rstrip("/")

    def close(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _fire(url: str, images: list[bytes], n: int, clients: int) -> tuple[list[float], dict[str, int], float]:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    statuses: dict[str, int] = {}
    lat: list[float] = []
    with httpx.Client(base_url=url, timeout=120, limits=limits) as client:
        def one(i: int) -> tuple[int, float, bool]:
            t0 = time.perf_counter()
            r = client.post("/v1/classify", files={"file": ("d.png", images[i % len(images)])})
            ok = r.status_code == 200 or (r.status_code == 503 and "retry-after" in r.headers)
            return r.status_code, time.perf_counter() - t0, ok

        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(one, range(n)))
        wall = time.perf_counter() - t0
    for status, t, ok in results:
        key = str(status) if ok else f"{status} (unexpected)"
        statuses[key] = statuses.get(key, 0) + 1
        if status == 200:
            lat.append(t)
    return lat, statuses, wall


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=None, help="a digits `droplab train` run (default: train one)")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--mc", type=int, default=20)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--overload-queue", type=int, default=2)
    ap.add_argument("--seq", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "results" / "serve.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from droplab.cli import main as cli
    from droplab.serve import classify_image, decode_image, load_models

    tmp = tempfile.TemporaryDirectory()
    run = Path(args.run) if args.run else Path(tmp.name) / "digits"
    if not args.run:
        os.environ["DROPLAB_PROGRESS"] = "0"
        assert cli(["train", "--dataset", "digits", "--model", "mlp", "--widths", "64",
                    "--dropout", "0.3", "--epochs", "1", "--device", "cpu", "--out", str(run)]) == 0
    images = _images(64)

    # reference: the same work in-process, no HTTP
    (model,) = load_models([str(run)], "cpu", args.mc)
    direct = []
    for i in range(max(args.seq, 20) + 1):
        t0 = time.perf_counter()
        classify_image(decode_image(images[i % len(images)], 40_000_000), model, 0)
        if i:  # the first call builds the fx plan
            direct.append(time.perf_counter() - t0)
    ref = _stats(direct)
    print(f"direct (no HTTP): p50 {ref['p50_ms']:.2f} ms, p95 {ref['p95_ms']:.2f} ms")

    result: dict[str, Any] = {
        "benchmark": "serve", "model": "digits mlp (64), dropout 0.3", "mc_samples": args.mc,
        "threads": args.threads, "python": platform.python_version(), "torch": torch.__version__,
        "cpu_count": os.cpu_count(), "direct": ref,
    }
    server = Server(run, mc=args.mc, concurrency=args.concurrency,
                    queue=args.clients * 2, threads=args.threads)
    try:
        lat, st, _ = _fire(server.url, images, args.seq, 1)
        seq = _stats(lat)
        print(f"sequential HTTP: p50 {seq['p50_ms']:.2f} ms ({seq['p50_ms'] / ref['p50_ms']:.2f}× "
              f"direct), statuses {st}")
        result["sequential"] = {**seq, "requests": args.seq, "statuses": st,
                                "p50_vs_direct": seq["p50_ms"] / ref["p50_ms"]}
        lat, st, wall = _fire(server.url, images, args.requests, args.clients)
        load = _stats(lat)
        print(f"load {args.requests} requests, {args.clients} clients, concurrency "
              f"{args.concurrency}: p50 {load['p50_ms']:.1f} ms, p95 {load['p95_ms']:.1f} ms, "
              f"{args.requests / wall:.0f} req/s, statuses {st}")
        result["load"] = {**load, "requests": args.requests, "clients": args.clients,
                          "concurrency": args.concurrency, "queue": args.clients * 2,
                          "statuses": st, "requests_per_s": args.requests / wall,
                          "p50_vs_direct": load["p50_ms"] / ref["p50_ms"],
                          "p95_vs_direct": load["p95_ms"] / ref["p50_ms"],
                          "throughput_vs_direct": (args.requests / wall) * ref["p50_ms"] / 1e3}
    finally:
        server.close()

    server = Server(run, mc=args.mc, concurrency=args.concurrency, queue=args.overload_queue,
                    threads=args.threads)
    try:
        lat, st, wall = _fire(server.url, images, args.requests, args.clients)
        over = _stats(lat) if lat else {}
        print(f"overload (queue {args.overload_queue}): statuses {st}, "
              f"p95 of the served {over.get('p95_ms', float('nan')):.1f} ms")
        result["overload"] = {**over, "requests": args.requests, "clients": args.clients,
                              "concurrency": args.concurrency, "queue": args.overload_queue,
                              "statuses": st}
    finally:
        server.close()
    tmp.cleanup()
    unexpected = [k for part in ("sequential", "load", "overload")
                  for k in result[part]["statuses"] if "unexpected" in k]
    result["failures"] = len(unexpected)
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
