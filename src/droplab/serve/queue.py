"""The inference queue: a bounded thread pool, so that the event loop never runs a model.

At most ``concurrency`` jobs run and ``capacity`` more wait; beyond that a request gets
503 with ``Retry-After``, and one not answered within ``timeout`` seconds gets 504 (its
job is cancelled if it has not started).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from droplab.serve.errors import ApiError


class QueueFull(Exception):
    """Every worker is busy and the waiting line is full."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"server busy; retry after {retry_after} s")
        self.retry_after = retry_after


class InferenceQueue:
    """A thread pool of ``concurrency`` workers behind a waiting line of ``capacity``.

    :meth:`submit` is thread-safe and refuses work (:class:`QueueFull`) when
    ``concurrency + capacity`` jobs are admitted; a slot is released when its job finishes
    or is cancelled before it started (never merely because a client gave up, so the bound
    holds for work still running).
    """

    def __init__(self, concurrency: int, capacity: int, timeout: float) -> None:
        self.concurrency = int(concurrency)
        self.capacity = int(capacity)
        self.timeout = float(timeout)
        self._pool = cf.ThreadPoolExecutor(self.concurrency, thread_name_prefix="droplab-infer")
        self._lock = threading.Lock()
        self._admitted = 0
        self._running = 0
        self._durations: deque[float] = deque(maxlen=32)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"running": self._running, "waiting": self._admitted - self._running,
                    "concurrency": self.concurrency, "queue": self.capacity}

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: mean job time × jobs ahead / workers."""
        with self._lock:
            mean = sum(self._durations) / len(self._durations) if self._durations else 1.0
            ahead = self._admitted
        return max(1, math.ceil(mean * ahead / self.concurrency))

    def submit(self, fn: Callable[..., Any], *args: Any) -> cf.Future[Any]:
        with self._lock:
            full = self._admitted >= self.concurrency + self.capacity
            if not full:
                self._admitted += 1
        if full:
            raise QueueFull(self.retry_after())

        def job() -> Any:
            with self._lock:
                self._running += 1
            t0 = time.perf_counter()
            try:
                return fn(*args)
            finally:
                with self._lock:
                    self._running -= 1
                    self._durations.append(time.perf_counter() - t0)

        def release(_f: cf.Future[Any]) -> None:
            with self._lock:
                self._admitted -= 1

        try:
            fut = self._pool.submit(job)
        except RuntimeError:  # pool shut down
            release(cf.Future())
            raise QueueFull(1) from None
        fut.add_done_callback(release)
        return fut

    async def run(self, fn: Callable[..., Any], *args: Any,
                  cleanup: Callable[[], None] | None = None) -> Any:
        """Run ``fn(*args)`` in the pool; 503 when full, 504 after ``timeout`` seconds.

        ``cleanup()`` runs once the job can no longer touch its arguments: when it finished
        or was cancelled before it started, or at once when it was refused.
        """
        try:
            fut = self.submit(fn, *args)
        except QueueFull as exc:
            if cleanup is not None:
                cleanup()
            raise ApiError(503, f"the server is busy ({self.concurrency} running, "
                           f"{self.capacity} waiting); retry after {exc.retry_after} s",
                           {"Retry-After": str(exc.retry_after)}) from None
        if cleanup is not None:
            fut.add_done_callback(lambda _f: cleanup())
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut), self.timeout)
        except TimeoutError:
            fut.cancel()  # a job still waiting never runs; a running one finishes unseen
            raise ApiError(504, f"no answer within {self.timeout:g} s (the server's "
                           "--timeout); retry later or with a smaller image") from None

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
