"""``droplab serve``: a web page and a JSON API in front of trained runs.

The server is a FastAPI (Starlette) ASGI app run by uvicorn. Each served run folder is
detected from its ``config.json``: ``"task": "train"`` runs become classifiers (answered
with Monte-Carlo dropout, Gal & Ghahramani 2016: the mean softmax of ``T`` stochastic passes,
its predictive entropy and the mutual information / BALD score of Houlsby et al. 2011),
``"task": "style-train"`` runs become feed-forward style networks (Johnson et al. 2016).

Endpoints:

- ``GET /`` — a self-contained page (no external assets) to upload an image;
- ``GET /healthz`` — ``{"ok": true, "models": [...], "queue": {...}}``;
- ``POST /v1/classify`` — multipart ``file`` (+ optional ``model``, ``seed``) → JSON;
- ``POST /v1/stylize`` — multipart ``file`` (+ optional ``model``, ``samples``, ``seed``)
  → ``image/png`` (``samples`` > 1 keeps dropout on and tiles the variations side by side).

A raw image body (``Content-Type: image/*`` or ``application/octet-stream``) with the
options in the query string is accepted as well.

Untrusted input is handled in this order, so that nothing expensive happens before the
cheap checks: the request body is limited while it streams (``Content-Length`` first,
then a running count), the content is identified by decoding, never by name or declared
type, and only a small set of raster formats is allowed (so e.g. EPS never reaches
Ghostscript); the pixel count is read from the header and checked before any pixel is
decoded (decompression bombs). Every bad request gets a one-line JSON error
``{"error": "..."}`` with a 4xx status; an unexpected failure is logged on the server and
the client sees a generic 500.

Inference runs in a thread pool (never on the event loop) behind a bounded queue:
at most ``concurrency`` jobs run and ``queue`` more wait; beyond that requests get 503
with ``Retry-After``, and a request not answered within ``timeout`` seconds gets 504 (its
job is cancelled if it has not started). Passes through one model are serialised, and MC
passes take a process-wide RNG lock, because the dropout masks of a request are drawn from
a generator seeded by the request's ``seed``: the same image and seed give the same answer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import functools
import io
import json
import logging
import math
import socket
import threading
import time
import warnings
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from starlette.requests import Request
from torch import nn

from droplab.errors import InvalidValue, UserError
from droplab.runs import RunDir
from droplab.runs.restore import load_run

log = logging.getLogger("droplab.serve")

#: Formats the server decodes; everything else is 415 (the content decides, not the name).
ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM")
#: Multipart framing allowance on top of ``max_bytes`` for the whole request body.
_FORM_OVERHEAD = 64 * 1024
#: Upper bound of the ``samples`` option of /v1/stylize.
MAX_STYLE_SAMPLES = 8
#: The global torch RNG is shared by every thread: stochastic passes hold this lock.
_RNG_LOCK = threading.Lock()


# ------------------------------------------------------------------------------ config
@dataclass
class ServeConfig:
    """Options of ``droplab serve``."""

    runs: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 8000
    mc: int = 20
    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000
    concurrency: int = 1
    queue: int = 16
    timeout: float = 30.0
    style_size: int = 512
    seed: int = 0
    device: str = "auto"
    log_level: str = "info"

    def validate(self) -> None:
        if not self.runs:
            raise InvalidValue("give at least one run folder to serve (droplab serve RUN …)")
        for name in ("mc", "max_bytes", "max_pixels", "concurrency", "style_size"):
            if int(getattr(self, name)) < 1:
                raise InvalidValue(f"--{name.replace('_', '-')} must be at least 1")
        if self.queue < 0:
            raise InvalidValue("--queue must be 0 or more waiting requests")
        if not self.timeout > 0:
            raise InvalidValue(f"--timeout must be a positive number of seconds, got {self.timeout}")
        if not 0 <= self.port <= 65535:
            raise InvalidValue(f"--port {self.port} is not a TCP port; use 1–65535 (0: any free)")


# ------------------------------------------------------------------------------ models
@dataclass
class ClassifierModel:
    """A ``droplab train`` or ``finetune`` run ready to answer: model in eval mode and its
    preprocessing."""

    name: str
    run_dir: Path
    model: nn.Module
    classes: list[str]
    in_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    samples: int
    device: torch.device
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    task: str = "classify"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "task": self.task, "run": str(self.run_dir),
                "classes": self.classes, "in_shape": list(self.in_shape),
                "mc_samples": self.samples}


@dataclass
class StyleModel:
    """A ``droplab style-train`` run: the transformer network and its dropout rate."""

    name: str
    run_dir: Path
    net: nn.Module
    dropout: float
    device: torch.device
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    task: str = "stylize"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "task": self.task, "run": str(self.run_dir),
                "dropout": self.dropout, "max_samples": MAX_STYLE_SAMPLES if self.dropout else 1}


ServedModel = ClassifierModel | StyleModel


def load_models(runs: list[str], device: str = "auto", mc: int = 20) -> list[ServedModel]:
    """Load every run folder; its task (``train``, ``finetune`` or ``style-train``) comes
    from config.json.

    Raises a one-line :class:`UserError` for a missing folder, an unreadable config, a task
    that cannot be served, or a checkpoint that cannot be loaded.
    """
    from droplab.runtime import resolve_device
    from droplab.uncertainty import stochastic_modules

    dev = resolve_device(device)
    out: list[ServedModel] = []
    names: Counter[str] = Counter()
    for spec in runs:
        run = RunDir.open(spec)
        try:
            task = run.read_config().get("task")
        except (json.JSONDecodeError, AttributeError, OSError):
            raise UserError(f"{run.config_path} is not valid JSON; pass an intact run folder"
                            ) from None
        base = run.path.resolve().name or "model"
        names[base] += 1
        name = base if names[base] == 1 else f"{base}-{names[base]}"
        if task in ("train", "finetune"):
            lr = load_run(run.path, dev)
            c = lr.in_shape[0]
            if c not in (1, 3):
                raise UserError(f"{run.path} expects {c}-channel images; droplab serve feeds "
                                "greyscale (1) or RGB (3) models")
            samples = mc if stochastic_modules(lr.model) else 1
            if samples == 1:
                log.warning("%s has no dropout layer: answering with one pass (entropy only, "
                            "mutual information 0)", run.path)
            out.append(ClassifierModel(name, run.path, lr.model, lr.classes, lr.in_shape,
                                       lr.mean, lr.std, samples, dev))
        elif task == "style-train":
            net = load_run(run.path, dev).model
            out.append(StyleModel(name, run.path, net, float(net.config.get("dropout", 0.0)),
                                  dev))
        else:
            raise UserError(f"{run.path} is a {task!r} run; droplab serve serves classifier "
                            "('train', 'finetune') and style network ('style-train') run folders")
    return out


# ------------------------------------------------------------------------------ errors
class ApiError(Exception):
    """A request the client can fix: HTTP ``status`` and a one-line message."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:300]


# ------------------------------------------------------------------------------ decoding
@dataclass
class Upload:
    """A decoded upload: 8-bit RGB pixels and what the file said about itself."""

    image: Image.Image
    format: str
    width: int
    height: int


def decode_image(data: bytes, max_pixels: int) -> Upload:
    """Decode untrusted bytes into an RGB image, or raise :class:`ApiError`.

    400 empty / truncated / corrupt; 413 more than ``max_pixels`` declared in the header
    (checked before any pixel is decoded); 415 not one of :data:`ALLOWED_FORMATS`.
    EXIF orientation is applied; CMYK, palette, alpha and 16-bit images become 8-bit RGB
    (:mod:`droplab.imageio`).
    """
    from droplab.imageio import _to_rgb

    if not data:
        raise ApiError(400, "the uploaded file is empty; choose an image file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        except UnidentifiedImageError:
            raise ApiError(415, "the upload is not an image this server reads (the content "
                           f"was checked, not the name); send {', '.join(ALLOWED_FORMATS)}"
                           ) from None
        except Image.DecompressionBombError:
            raise ApiError(413, "the image declares too many pixels (a decompression bomb?); "
                           f"the limit is {max_pixels:,} pixels") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ApiError(400, f"the image header cannot be read ({_one_line(exc)}); the file "
                           "may be truncated or corrupt") from None
        w, h = img.size
        if w * h > max_pixels:
            raise ApiError(413, f"the image is {w}×{h} = {w * h:,} pixels, over this server's "
                           f"limit of {max_pixels:,}; downscale it first")
        if w < 1 or h < 1:
            raise ApiError(400, f"the image has no pixels ({w}×{h})")
        fmt = str(img.format)
        try:
            img.load()
            rgb = _to_rgb(ImageOps.exif_transpose(img))
        except Image.DecompressionBombError:
            raise ApiError(413, f"the image is too large to decode safely; the limit is "
                           f"{max_pixels:,} pixels") from None
        except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:
            reason = _one_line(exc) or type(exc).__name__
            raise ApiError(400, f"the {fmt} image cannot be decoded ({reason}); send an intact "
                           "file") from None
    return Upload(rgb, fmt, w, h)


def classifier_input(img: Image.Image, m: ClassifierModel) -> torch.Tensor:
    """RGB image → the run's channels (L: ITU-R 601 luma, as in training), its H×W
    (antialiased bilinear), normalised by its mean/std: a ``(1, C, H, W)`` float tensor."""
    c, h, w = m.in_shape
    img = img.convert("L") if c == 1 else img.convert("RGB")
    if img.size != (w, h):
        img = img.resize((w, h), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.float32).reshape(h, w, c) / 255.0
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1)
    mean = torch.tensor(m.mean, dtype=torch.float32).view(c, 1, 1)
    std = torch.tensor(m.std, dtype=torch.float32).view(c, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


# ------------------------------------------------------------------------------ inference
def classify_image(upload: Upload, m: ClassifierModel, seed: int) -> dict[str, Any]:
    """MC-dropout answer for one image: label, class probabilities, entropy and MI (nats)."""
    from droplab.uncertainty import mc_predict, mutual_information, predictive_entropy

    x = classifier_input(upload.image, m).to(m.device)
    t0 = time.perf_counter()
    with m.lock, _RNG_LOCK:
        if m.samples > 1:
            gen = torch.Generator().manual_seed(int(seed))
            mc = mc_predict(m.model, x, samples=m.samples, reduce="none", generator=gen)
        else:
            with torch.no_grad():
                mc = torch.softmax(m.model.eval()(x).float(), dim=1).unsqueeze(0)
    mc = mc.float().cpu()
    probs = mc.mean(0)[0]
    k = int(probs.argmax())
    order = torch.argsort(probs, descending=True).tolist()
    return {
        "model": m.name,
        "label": m.classes[k],
        "index": k,
        "probabilities": {c: float(p) for c, p in zip(m.classes, probs.tolist())},
        "top": [{"label": m.classes[i], "p": float(probs[i])} for i in order[:5]],
        "entropy": float(predictive_entropy(mc)[0]),
        "mutual_information": float(mutual_information(mc)[0]),
        "mc_samples": m.samples,
        "seed": int(seed),
        "input": {"format": upload.format, "width": upload.width, "height": upload.height},
        "seconds": time.perf_counter() - t0,
    }


def stylize_image(upload: Upload, m: StyleModel, samples: int, seed: int,
                  max_side: int) -> bytes:
    """Stylise one image (longer side at most ``max_side``) and return PNG bytes.

    ``samples`` > 1 keeps the network's spatial dropout on and tiles the variations left to
    right; their masks come from ``seed``.
    """
    from droplab.imageio import encode_image, pil_to_tensor, resize_to
    from droplab.uncertainty import mc_mode

    img = upload.image
    if max(img.size) > max_side:
        img = resize_to(img, max_side)
    x = pil_to_tensor(img).unsqueeze(0).to(m.device)
    with m.lock, torch.no_grad():
        if samples == 1:
            m.net.eval()
            ys = [m.net(x)]
        else:
            with _RNG_LOCK, torch.random.fork_rng(
                    devices=[m.device.index or 0] if m.device.type == "cuda" else []):
                torch.manual_seed(int(seed))
                with mc_mode(m.net):
                    ys = [m.net(x) for _ in range(samples)]
    y = torch.cat([t.clamp(0, 1) for t in ys], dim=-1)
    return encode_image(y, "PNG")


# ------------------------------------------------------------------------------ queue
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

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` in the pool; 503 when full, 504 after ``timeout`` seconds."""
        try:
            fut = self.submit(fn, *args)
        except QueueFull as exc:
            raise ApiError(503, f"the server is busy ({self.concurrency} running, "
                           f"{self.capacity} waiting); retry after {exc.retry_after} s",
                           {"Retry-After": str(exc.retry_after)}) from None
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut), self.timeout)
        except asyncio.TimeoutError:
            fut.cancel()  # a job still waiting never runs; a running one finishes unseen
            raise ApiError(504, f"no answer within {self.timeout:g} s (the server's "
                           "--timeout); retry later or with a smaller image") from None

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


# ------------------------------------------------------------------------------ requests
def _too_big(max_bytes: int) -> ApiError:
    return ApiError(413, f"the upload is larger than this server's limit of {max_bytes:,} "
                    "bytes (--max-bytes); send a smaller file")


async def read_body(request: Request, limit: int, max_bytes: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes:
    from ``Content-Length`` before reading, else while it streams in (``max_bytes`` is the
    limit the message names; ``limit`` adds the multipart framing allowance)."""
    from starlette.requests import ClientDisconnect

    too_big = _too_big(max_bytes)
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise ApiError(400, f"invalid Content-Length header {declared!r}") from None
        if n > limit:
            raise too_big
    buf = bytearray()
    try:
        async for chunk in request.stream():
            buf += chunk
            if len(buf) > limit:
                raise too_big
    except ClientDisconnect:
        raise ApiError(400, "the client closed the connection before the upload ended") from None
    return bytes(buf)


async def read_upload(request: Request, max_bytes: int) -> tuple[bytes, dict[str, str]]:
    """The image bytes and the text fields of a multipart form (or a raw image body with
    the options in the query string)."""
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    ctype = request.headers.get("content-type", "").lower()
    fields = {k: v for k, v in request.query_params.items()}
    if ctype.startswith("multipart/form-data"):
        body = await read_body(request, max_bytes + _FORM_OVERHEAD, max_bytes)

        async def stream() -> AsyncIterator[bytes]:
            yield body

        try:
            form = await MultiPartParser(request.headers, stream(), max_files=2,
                                         max_fields=16, max_part_size=4096).parse()
        except MultiPartException as exc:
            raise ApiError(400, f"malformed multipart form ({_one_line(exc)})") from None
        try:
            file = form.get("file")
            for k, v in form.multi_items():
                if isinstance(v, str):
                    fields[k] = v
            if not isinstance(file, UploadFile):
                raise ApiError(422, "missing form field 'file' (the image, sent as a file "
                               "upload: curl -F file=@image.png)")
            data = await file.read()
        finally:
            await form.close()
        if len(data) > max_bytes:
            raise _too_big(max_bytes)
        return data, fields
    if ctype.startswith(("image/", "application/octet-stream")):
        return await read_body(request, max_bytes, max_bytes), fields
    if ctype.startswith("application/x-www-form-urlencoded"):
        raise ApiError(422, "missing form field 'file': a url-encoded form cannot carry a file; "
                       "send multipart/form-data (curl -F file=@image.png)")
    if request.headers.get("content-length", "0") == "0" and not ctype:
        raise ApiError(400, "the request is empty; send multipart/form-data with a 'file' "
                       "field (curl -F file=@image.png)")
    shown = ctype.split(";")[0] or "none"
    raise ApiError(415, f"unsupported Content-Type {shown!r}; send multipart/form-data with "
                   "a 'file' field (or a raw image body with Content-Type image/*)")


def _int_field(fields: dict[str, str], name: str, default: int, lo: int, hi: int) -> int:
    text = fields.get(name)
    if text is None or text.strip() == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(422, f"field {name!r} must be an integer, got {_one_line(text)[:40]!r}"
                       ) from None
    if not lo <= value <= hi:
        raise ApiError(422, f"field {name!r}={value} is outside [{lo}, {hi}]")
    return value


def _pick(models: list[ServedModel], task: str, name: str | None) -> ServedModel:
    of_task = [m for m in models if m.task == task]
    if not of_task:
        kind = "classifier ('train' run)" if task == "classify" else "style network ('style-train' run)"
        raise ApiError(404, f"no {kind} is served here; restart droplab serve with one")
    if not name:
        return of_task[0]
    for m in of_task:
        if m.name == name:
            return m
    raise ApiError(422, f"unknown {task} model {_one_line(name)[:60]!r}; choose one of: "
                   f"{', '.join(m.name for m in of_task)}")


# ------------------------------------------------------------------------------ app
def _page() -> str:
    return resources.files("droplab.web").joinpath("index.html").read_text(encoding="utf-8")


_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
    "style-src 'unsafe-inline'; img-src 'self' blob: data:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def create_app(cfg: ServeConfig, models: list[ServedModel] | None = None) -> Any:
    """The ASGI app (FastAPI) serving ``models`` (loaded from ``cfg.runs`` when ``None``).

    ``app.state.queue`` is the :class:`InferenceQueue`; ``app.state.counts`` counts
    responses by status.
    """
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.exceptions import HTTPException

    cfg.validate()
    if models is None:
        models = load_models(cfg.runs, cfg.device, cfg.mc)
    queue = InferenceQueue(cfg.concurrency, cfg.queue, cfg.timeout)
    counts: Counter[int] = Counter()

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any) -> AsyncIterator[None]:
        yield
        queue.shutdown()

    app = FastAPI(title="droplab", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.queue = queue
    app.state.models = models
    app.state.counts = counts
    app.state.config = cfg

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        counts[status] += 1
        return JSONResponse({"error": _one_line(message)}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(_r: Request, exc: ApiError) -> JSONResponse:
        return error(exc.status, exc.message, exc.headers)

    @app.exception_handler(HTTPException)
    async def _http_error(r: Request, exc: HTTPException) -> JSONResponse:
        msg = {404: f"not found: {r.method} {r.url.path}; the API has GET /, GET /healthz, "
                    "POST /v1/classify, POST /v1/stylize",
               405: f"method {r.method} is not allowed on {r.url.path}"}.get(
            exc.status_code, str(exc.detail))
        return error(exc.status_code, msg, dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_r: Request, exc: RequestValidationError) -> JSONResponse:
        return error(422, f"invalid request: {exc.errors()[0].get('msg', 'bad field')}")

    @app.exception_handler(Exception)
    async def _bug(r: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", r.method, r.url.path, exc_info=exc)
        return error(500, "internal server error; the details are in the server log")

    def safe(route: Callable[[Request], Any]) -> Callable[[Request], Any]:
        """Bugs become a logged, generic 500 here (an exception left to Starlette's last-resort
        handler is re-raised after the response and uvicorn may reset the connection)."""

        @functools.wraps(route)
        async def wrapper(request: Request) -> Any:
            try:
                return await route(request)
            except (ApiError, asyncio.CancelledError):
                raise
            except UserError as exc:
                raise ApiError(400, str(exc)) from None
            except Exception:
                log.exception("unhandled error on %s %s", request.method, request.url.path)
                raise ApiError(500, "internal server error; the details are in the server log"
                               ) from None

        return wrapper

    guarded = queue.run

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        counts[200] += 1
        return HTMLResponse(_page(), headers=_PAGE_HEADERS)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        counts[200] += 1
        return JSONResponse({"ok": True, "models": [m.describe() for m in models],
                             "queue": queue.stats(),
                             "limits": {"max_bytes": cfg.max_bytes, "max_pixels": cfg.max_pixels,
                                        "timeout_s": cfg.timeout, "style_size": cfg.style_size}})

    def classify_job(data: bytes, m: ClassifierModel, seed: int) -> dict[str, Any]:
        return classify_image(decode_image(data, cfg.max_pixels), m, seed)

    def stylize_job(data: bytes, m: StyleModel, samples: int, seed: int) -> bytes:
        return stylize_image(decode_image(data, cfg.max_pixels), m, samples, seed,
                             cfg.style_size)

    @app.post("/v1/classify")
    @safe
    async def classify(request: Request) -> JSONResponse:
        data, fields = await read_upload(request, cfg.max_bytes)
        m = _pick(models, "classify", fields.get("model"))
        seed = _int_field(fields, "seed", cfg.seed, 0, 2**62)
        result = await guarded(classify_job, data, m, seed)
        counts[200] += 1
        return JSONResponse(result)

    @app.post("/v1/stylize")
    @safe
    async def stylize(request: Request) -> Response:
        data, fields = await read_upload(request, cfg.max_bytes)
        m = _pick(models, "stylize", fields.get("model"))
        samples = _int_field(fields, "samples", 1, 1, MAX_STYLE_SAMPLES)
        if samples > 1 and not getattr(m, "dropout", 0):
            raise ApiError(422, f"samples={samples} needs a style network trained with "
                           f"--dropout > 0; {m.name} has none (every sample would be identical)")
        seed = _int_field(fields, "seed", cfg.seed, 0, 2**62)
        t0 = time.perf_counter()
        png = await guarded(stylize_job, data, m, samples, seed)
        counts[200] += 1
        return Response(png, media_type="image/png", headers={
            "X-Droplab-Model": m.name, "X-Droplab-Samples": str(samples),
            "X-Droplab-Seconds": f"{time.perf_counter() - t0:.4f}"})

    return app


# ------------------------------------------------------------------------------ running
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
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def _server(app: Any, log_level: str) -> Any:
    import uvicorn

    config = uvicorn.Config(app, log_level=log_level, lifespan="on", timeout_keep_alive=5,
                            access_log=log_level in ("debug", "info"))
    return uvicorn.Server(config)


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
        self.server = _server(app, log_level)
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
    cfg.validate()
    models = load_models(cfg.runs, cfg.device, cfg.mc)
    sock = bind_socket(cfg.host, cfg.port)
    url = url_of(sock)
    app = create_app(cfg, models)
    server = _server(app, cfg.log_level)
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

