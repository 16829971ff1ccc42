"""``droplab serve`` under load, floods of large uploads and idle connections.

A tiny digits MLP (``--run``, else trained here for one epoch, dropout 0.3) is served by
the real command in a subprocess (``droplab serve RUN --port 0 --threads 1``), so client
threads and server do not share an interpreter. Five measurements, one run:

* ``direct``      – the same work without HTTP: decode the PNG, preprocess, ``--mc``
                    MC-dropout passes (:func:`droplab.serve.classify_image`), one at a time;
* ``sequential``  – ``--seq`` requests to the idle server, one at a time (HTTP + queue);
* ``load``        – ``--requests`` requests from ``--clients`` concurrent clients with
                    ``--concurrency`` workers and a waiting line large enough for every
                    client: nothing is rejected, requests wait;
* ``overload``    – the same load with ``--overload-queue`` places: the excess gets 503 +
                    Retry-After (counted, expected), never an error or a hang;
* ``memory``      – ``--uploads`` (100) clients post a ``--upload-mb`` (9.5 MB) PNG at the
                    same moment to a server with its default limits; the server's peak RSS
                    (``VmHWM`` reset after warm-up, cross-checked by sampling ``VmRSS``
                    every 5 ms) against its idle RSS. Goal: peak ≤ idle + 300 MB;
* ``connections`` – ``--idle-connections`` (3,000) TCP connections opened and left silent
                    while ``/healthz`` is polled every 0.1 s; the server must close them all
                    within ``--idle-timeout`` (+1 s of slack) of having accepted them (known
                    from the first ``/healthz`` answer: the listen queue is FIFO), and
                    ``/healthz`` must answer throughout.

Latencies are per request, client side (p50/p95/p99). The CPU may be shared, so the
figures to compare are the ratios to ``direct`` measured in the same run; memory and
connection counts do not depend on a busy CPU. Writes ``benchmarks/results/serve.json``.

    python benchmarks/serve.py                      # everything (≈ 1–2 min)
    python benchmarks/serve.py --only memory connections
    python benchmarks/serve.py --requests 50 --clients 8 --uploads 20 \
        --idle-connections 300 --out /tmp/serve.json     # quick
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import resource
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from PIL import Image

from droplab.cli import main as cli
from droplab.data import load_dataset
from droplab.runs import atomic_write_json
from droplab.serve import classify_image, decode_image, load_models

HERE = Path(__file__).resolve().parent
PARTS = ("latency", "memory", "connections")


def _pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100])."""
    s = sorted(values)
    return s[max(0, min(len(s) - 1, int(np.ceil(q / 100 * len(s))) - 1))]


def _stats(lat: list[float]) -> dict[str, float]:
    return {"p50_ms": 1e3 * _pct(lat, 50), "p95_ms": 1e3 * _pct(lat, 95),
            "p99_ms": 1e3 * _pct(lat, 99), "mean_ms": 1e3 * statistics.fmean(lat)}


def _images(n: int) -> list[bytes]:
    test = load_dataset("digits").test.images
    out = []
    for i in range(n):
        img = Image.fromarray(test[i, 0].numpy()).resize((32, 32), Image.Resampling.NEAREST)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def _big_png(megabytes: float) -> bytes:
    """An RGB noise PNG of about ``megabytes`` × 10⁶ bytes (noise does not compress)."""
    side = int((megabytes * 1e6 / 3) ** 0.5)
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class Server:
    """``droplab serve`` in a subprocess on a free port."""

    def __init__(self, run: Path, *extra: str, mc: int = 20, threads: int = 1) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "DROPLAB_PROGRESS": "0"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "droplab", "serve", str(run), "--port", "0", "--mc", str(mc),
             "--threads", str(threads), "--log-level", "warning", "--device", "cpu", *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        line = self.proc.stderr.readline() if self.proc.stderr else ""
        if not line.startswith("droplab serve: http"):
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line.strip()}")
        self.url = line.split()[2].rstrip("/")
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        self.addr = (host, int(port))

    def status(self, key: str) -> int:
        """A ``/proc/PID/status`` field in bytes (``VmRSS``, ``VmHWM``)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    def reset_peak(self) -> bool:
        """Reset ``VmHWM`` to the current RSS (Linux ≥ 4.0: ``clear_refs`` ← 5)."""
        try:
            Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def close(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _fire(url: str, bodies: list[bytes], n: int, clients: int,
          timeout: float = 120) -> tuple[list[float], dict[str, int], float]:
    """``n`` POST /v1/classify from ``clients`` threads; 200 and 503 + Retry-After are the
    expected answers, anything else is counted as ``"<status> (unexpected)"``."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    statuses: dict[str, int] = {}
    lat: list[float] = []
    start = threading.Barrier(min(clients, n))
    with httpx.Client(base_url=url, timeout=timeout, limits=limits) as client:
        def one(i: int) -> tuple[str, float]:
            if i < clients:
                start.wait()  # the first wave leaves together
            t0 = time.perf_counter()
            try:
                r = client.post("/v1/classify", files={"file": ("d.png", bodies[i % len(bodies)])})
            except httpx.HTTPError as exc:
                return f"{type(exc).__name__} (unexpected)", 0.0
            ok = r.status_code == 200 or (r.status_code == 503 and "retry-after" in r.headers)
            return str(r.status_code) if ok else f"{r.status_code} (unexpected)", \
                time.perf_counter() - t0

        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(one, range(n)))
        wall = time.perf_counter() - t0
    for status, t in results:
        statuses[status] = statuses.get(status, 0) + 1
        if status == "200":
            lat.append(t)
    return lat, statuses, wall


def measure_latency(run: Path, args: argparse.Namespace) -> dict[str, Any]:
    images = _images(64)
    (model,) = load_models([str(run)], "cpu", args.mc)
    direct = []
    for i in range(max(args.seq, 20) + 1):
        t0 = time.perf_counter()
        classify_image(decode_image(images[i % len(images)], 40_000_000), model, 0)
        if i:  # the first call builds the fx plan
            direct.append(time.perf_counter() - t0)
    ref = _stats(direct)
    print(f"direct (no HTTP): p50 {ref['p50_ms']:.2f} ms, p95 {ref['p95_ms']:.2f} ms")
    out: dict[str, Any] = {"direct": ref}
    limits = ("--concurrency", str(args.concurrency), "--max-uploads", str(args.clients * 2))
    server = Server(run, *limits, "--queue", str(args.clients * 2), mc=args.mc,
                    threads=args.threads)
    try:
        lat, st, _ = _fire(server.url, images, args.seq, 1)
        seq = _stats(lat)
        print(f"sequential HTTP: p50 {seq['p50_ms']:.2f} ms ({seq['p50_ms'] / ref['p50_ms']:.2f}× "
              f"direct), statuses {st}")
        out["sequential"] = {**seq, "requests": args.seq, "statuses": st,
                             "p50_vs_direct": seq["p50_ms"] / ref["p50_ms"]}
        lat, st, wall = _fire(server.url, images, args.requests, args.clients)
        load = _stats(lat)
        print(f"load {args.requests} requests, {args.clients} clients, concurrency "
              f"{args.concurrency}: p50 {load['p50_ms']:.1f} ms, p95 {load['p95_ms']:.1f} ms, "
              f"{args.requests / wall:.0f} req/s, statuses {st}")
        out["load"] = {**load, "requests": args.requests, "clients": args.clients,
                       "concurrency": args.concurrency, "queue": args.clients * 2,
                       "statuses": st, "requests_per_s": args.requests / wall,
                       "p50_vs_direct": load["p50_ms"] / ref["p50_ms"],
                       "p95_vs_direct": load["p95_ms"] / ref["p50_ms"],
                       "throughput_vs_direct": (args.requests / wall) * ref["p50_ms"] / 1e3}
    finally:
        server.close()

    server = Server(run, *limits, "--queue", str(args.overload_queue), mc=args.mc,
                    threads=args.threads)
    try:
        lat, st, wall = _fire(server.url, images, args.requests, args.clients)
        over = _stats(lat) if lat else {}
        print(f"overload (queue {args.overload_queue}): statuses {st}, "
              f"p95 of the served {over.get('p95_ms', float('nan')):.1f} ms")
        out["overload"] = {**over, "requests": args.requests, "clients": args.clients,
                           "concurrency": args.concurrency, "queue": args.overload_queue,
                           "statuses": st}
    finally:
        server.close()
    return out


def measure_memory(run: Path, args: argparse.Namespace) -> dict[str, Any]:
    body = _big_png(args.upload_mb)
    server = Server(run, mc=args.mc, threads=args.threads)  # the default limits
    try:
        _fire(server.url, _images(4), 8, 2)  # warm up: fx plan, allocator pools
        time.sleep(0.5)
        idle = server.status("VmRSS")
        reset = server.reset_peak()
        sampled = [idle]
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                sampled.append(server.status("VmRSS"))
                time.sleep(0.005)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, st, wall = _fire(server.url, [body], args.uploads, args.uploads, timeout=300)
        stop.set()
        sampler.join()
        peak = max(max(sampled), server.status("VmHWM") if reset else 0)
        health = httpx.get(server.url + "/healthz", timeout=30).json()
    finally:
        server.close()
    mb = 2**20
    delta = (peak - idle) / mb
    print(f"memory: {args.uploads} × {len(body) / 1e6:.1f} MB uploads at once: idle RSS "
          f"{idle / mb:.0f} MiB, peak {peak / mb:.0f} MiB (+{delta:.0f} MiB; goal ≤ +300 MB); "
          f"statuses {st} in {wall:.1f} s")
    return {"uploads": args.uploads, "upload_bytes": len(body), "idle_rss_mib": idle / mb,
            "peak_rss_mib": peak / mb, "peak_minus_idle_mib": delta,
            "peak_from": "VmHWM + 5 ms VmRSS samples" if reset else "5 ms VmRSS samples",
            "goal_mib": 300e6 / mb, "ok": delta <= 300e6 / mb, "statuses": st, "wall_s": wall,
            "uploads_in_flight_after": health["uploads"]["in_flight"],
            "limits": "defaults: --max-uploads 32 --concurrency 1 --queue 16 --max-bytes 10MiB"}


def _raise_nofile(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 1000), hard))


def measure_connections(run: Path, args: argparse.Namespace) -> dict[str, Any]:
    n, idle_s = args.idle_connections, args.idle_timeout
    _raise_nofile(n)
    server = Server(run, "--idle-timeout", f"{idle_s:g}", "--header-timeout", f"{2 * idle_s:g}",
                    mc=args.mc, threads=args.threads)
    sel = selectors.DefaultSelector()
    opened: dict[socket.socket, float] = {}
    closed_after: list[float] = []
    health: list[float] = []
    bad_health: list[str] = []
    t_last = t_accepted = float("nan")
    try:
        t_open = time.perf_counter()
        for _ in range(n):
            s = socket.create_connection(server.addr, timeout=30)
            s.setblocking(False)
            opened[s] = time.perf_counter()
            sel.register(s, selectors.EVENT_READ)
        t_opened = time.perf_counter()
        t_open = t_opened - t_open
        deadline = t_opened + idle_s + 10
        next_probe = 0.0
        with httpx.Client(base_url=server.url, timeout=10) as probe:
            # the listen queue is FIFO: once this first probe is answered, the server has
            # accepted (and started the idle timer of) every connection opened before it
            probe.get("/healthz").raise_for_status()
            t_accepted = time.perf_counter()
            while opened and time.perf_counter() < deadline:
                if time.perf_counter() >= next_probe:
                    t0 = time.perf_counter()
                    try:
                        r = probe.get("/healthz")
                        health.append(time.perf_counter() - t0) if r.status_code == 200 \
                            else bad_health.append(str(r.status_code))
                    except httpx.HTTPError as exc:
                        bad_health.append(type(exc).__name__)
                    next_probe = time.perf_counter() + 0.1
                for key, _ in sel.select(timeout=0.05):
                    s = key.fileobj
                    try:
                        data = s.recv(1)  # type: ignore[union-attr]
                    except ConnectionError:
                        data = b""
                    if not data:
                        t_last = time.perf_counter()
                        closed_after.append(t_last - opened.pop(s))  # type: ignore[arg-type]
                        sel.unregister(s)
                        s.close()  # type: ignore[union-attr]
    finally:
        for s in opened:
            s.close()
        sel.close()
        server.close()
    worst = max(closed_after) if closed_after else float("nan")
    last_after_accept = t_last - t_accepted if closed_after else float("nan")
    ok = not opened and last_after_accept <= idle_s + 1.0 and health and not bad_health
    hs = _stats(health) if health else {}
    print(f"connections: {n} idle opened in {t_open:.1f} s, all accepted {t_accepted - t_opened:.1f}"
          f" s later; {len(closed_after)} closed by the server {min(closed_after, default=0):.2f}–"
          f"{worst:.2f} s after they opened, the last {last_after_accept:.2f} s after all were "
          f"accepted (--idle-timeout {idle_s:g}); "
          f"{len(opened)} still open; /healthz {len(health)} answers, p50 "
          f"{hs.get('p50_ms', float('nan')):.1f} ms, p95 {hs.get('p95_ms', float('nan')):.1f} ms, "
          f"failures {bad_health or 'none'}")
    return {"connections": n, "idle_timeout_s": idle_s, "open_s": t_open,
            "all_accepted_s": t_accepted - t_opened, "last_closed_after_accept_s": last_after_accept,
            "closed": len(closed_after), "left_open": len(opened),
            "closed_after_s": {"min": min(closed_after, default=float("nan")),
                               "median": statistics.median(closed_after) if closed_after
                               else float("nan"), "max": worst},
            "healthz": {**hs, "answers": len(health), "failures": bad_health}, "ok": bool(ok)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=None, help="a digits `droplab train` run (default: train one)")
    ap.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--mc", type=int, default=20)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--overload-queue", type=int, default=2)
    ap.add_argument("--seq", type=int, default=40)
    ap.add_argument("--uploads", type=int, default=100)
    ap.add_argument("--upload-mb", type=float, default=9.5)
    ap.add_argument("--idle-connections", type=int, default=3000)
    ap.add_argument("--idle-timeout", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "results" / "serve.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    tmp = tempfile.TemporaryDirectory()
    run = Path(args.run) if args.run else Path(tmp.name) / "digits"
    if not args.run:
        os.environ["DROPLAB_PROGRESS"] = "0"
        assert cli(["train", "--dataset", "digits", "--model", "mlp", "--widths", "64",
                    "--dropout", "0.3", "--epochs", "1", "--device", "cpu", "--out", str(run)]) == 0
    result: dict[str, Any] = {
        "benchmark": "serve", "model": "digits mlp (64), dropout 0.3", "mc_samples": args.mc,
        "threads": args.threads, "python": platform.python_version(), "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
    }
    if "latency" in args.only:
        result.update(measure_latency(run, args))
    if "memory" in args.only:
        result["memory"] = measure_memory(run, args)
    if "connections" in args.only:
        result["connections"] = measure_connections(run, args)
    tmp.cleanup()
    unexpected = [k for part in ("sequential", "load", "overload", "memory")
                  for k in result.get(part, {}).get("statuses", {}) if "unexpected" in k]
    result["failures"] = len(unexpected) + sum(
        not result[p]["ok"] for p in ("memory", "connections") if p in result)
    atomic_write_json(args.out, result)
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
