"""The ASGI app (FastAPI / Starlette): routes, error answers and the OpenAPI description.

Endpoints:

- ``GET /`` — a self-contained page (no external assets) to upload an image;
- ``GET /healthz`` — ``{"ok": true, "models": [...], "queue": {...}, "uploads": {...}}``;
- ``GET /openapi.json`` — the API described in OpenAPI 3;
- ``POST /v1/classify`` — multipart ``file`` (+ optional ``model``, ``seed``) → JSON;
- ``POST /v1/stylize`` — multipart ``file`` (+ optional ``model``, ``samples``, ``seed``)
  → ``image/png`` (``samples`` > 1 keeps dropout on and tiles the variations side by side).

A raw image body (``Content-Type: image/*`` or ``application/octet-stream``) with the
options in the query string is accepted as well. Every bad request gets a one-line JSON
error ``{"error": "..."}`` with a 4xx status; an unexpected failure is logged on the server
and the client sees a generic 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import IO, Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import Request

from droplab import __version__
from droplab.errors import UserError
from droplab.serve.config import ServeConfig
from droplab.serve.errors import ApiError, one_line
from droplab.serve.inference import classify_image, stylize_image
from droplab.serve.queue import InferenceQueue
from droplab.serve.registry import (
    MAX_STYLE_SAMPLES,
    ClassifierModel,
    ServedModel,
    StyleModel,
    load_models,
    pick,
)
from droplab.serve.uploads import Body, UploadGate, decode_image, int_field, read_upload

log = logging.getLogger("droplab.serve")

_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
    "style-src 'unsafe-inline'; img-src 'self' blob: data:; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def _page() -> str:
    return resources.files("droplab.web").joinpath("index.html").read_text(encoding="utf-8")


# ------------------------------------------------------------------------------ OpenAPI
_ERROR = {"content": {"application/json": {"schema": {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "string", "description": "one line: the problem and "
                             "the fix"}}}}}}
_UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "empty, truncated or corrupt image; malformed form", **_ERROR},
    404: {"description": "no model of this task is served", **_ERROR},
    408: {"description": "the body stalled or took longer than the server's timeouts",
          **_ERROR},
    413: {"description": "more bytes than --max-bytes or more pixels than --max-pixels",
          **_ERROR},
    415: {"description": "not an image format this server reads (the content decides)",
          **_ERROR},
    422: {"description": "missing 'file' field or an invalid option", **_ERROR},
    503: {"description": "busy: too many uploads in flight or the queue is full; see the "
          "Retry-After header", **_ERROR},
    504: {"description": "no answer within --timeout", **_ERROR},
}


def _upload_body(options: dict[str, dict[str, Any]]) -> dict[str, Any]:
    form = {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "the image (PNG, JPEG, "
                 "GIF, BMP, TIFF, WebP, PPM)"}, **options}}
    raw = {"type": "string", "format": "binary"}
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": form},
        "image/*": {"schema": raw}, "application/octet-stream": {"schema": raw}}},
        "parameters": [{"name": k, "in": "query", "required": False, "schema": v,
                        "description": f"{v['description']} (raw-body requests)"}
                       for k, v in options.items()]}


_MODEL = {"type": "string", "description": "served model name (default: the first of its task)"}
_SEED = {"type": "integer", "minimum": 0, "description": "seed of the dropout masks"}
_CLASSIFY_DOC = _upload_body({"model": _MODEL, "seed": _SEED})
_STYLIZE_DOC = _upload_body({"model": _MODEL, "seed": _SEED, "samples": {
    "type": "integer", "minimum": 1, "maximum": MAX_STYLE_SAMPLES,
    "description": "variations tiled left to right (dropout kept on when > 1)"}})
_CLASSIFY_OK = {"description": "MC-dropout prediction", "content": {"application/json": {
    "schema": {"type": "object", "properties": {
        "model": {"type": "string"}, "label": {"type": "string"}, "index": {"type": "integer"},
        "probabilities": {"type": "object", "additionalProperties": {"type": "number"}},
        "top": {"type": "array", "items": {"type": "object", "properties": {
            "label": {"type": "string"}, "p": {"type": "number"}}}},
        "entropy": {"type": "number", "description": "predictive entropy (nats)"},
        "mutual_information": {"type": "number", "description": "BALD score (nats)"},
        "mc_samples": {"type": "integer"},
        "temperature": {"type": ["number", "null"],
                        "description": "the run's stored temperature, applied to each pass"},
        "abstained": {"type": "boolean", "description": "uncertainty above the threshold "
                      "picked by --abstain-at-error on the validation split"},
        "seed": {"type": "integer"},
        "input": {"type": "object"}, "seconds": {"type": "number"}}}}}}
_STYLIZE_OK = {"description": "the stylised image",
               "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}


# ------------------------------------------------------------------------------ app
def create_app(cfg: ServeConfig, models: list[ServedModel] | None = None) -> FastAPI:
    """The ASGI app serving ``models`` (loaded from ``cfg.runs`` when ``None``).

    ``app.state.queue`` is the :class:`InferenceQueue`, ``app.state.uploads`` the
    :class:`UploadGate`; ``app.state.counts`` counts responses by status.
    """
    if models is None:
        models = load_models(cfg.runs, cfg.device, cfg.mc, abstain_at_error=cfg.abstain_at_error,
                             abstain_by=cfg.abstain_by, seed=cfg.seed)
    queue = InferenceQueue(cfg.concurrency, cfg.queue, cfg.timeout)
    gate = UploadGate(cfg.max_uploads)
    counts: Counter[int] = Counter()

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        queue.shutdown()

    app = FastAPI(title="droplab", summary="MC-dropout classification and style transfer",
                  version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.queue = queue
    app.state.uploads = gate
    app.state.models = models
    app.state.counts = counts
    app.state.config = cfg

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        counts[status] += 1
        return JSONResponse({"error": one_line(message)}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api_error(_r: Request, exc: ApiError) -> JSONResponse:
        return error(exc.status, exc.message, exc.headers)

    @app.exception_handler(HTTPException)
    async def _http_error(r: Request, exc: HTTPException) -> JSONResponse:
        msg = {404: f"not found: {r.method} {r.url.path}; the API has GET /, GET /healthz, "
                    "GET /openapi.json, POST /v1/classify, POST /v1/stylize",
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

    def safe(route: Callable[[Request], Awaitable[Response]]
             ) -> Callable[[Request], Awaitable[Response]]:
        """Bugs become a logged, generic 500 here (an exception left to Starlette's last-resort
        handler is re-raised after the response and uvicorn may reset the connection)."""

        @functools.wraps(route)
        async def wrapper(request: Request) -> Response:
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

    async def receive(request: Request) -> Body:
        """Admit the upload (503 + Retry-After before reading a byte when ``max_uploads``
        are in flight), then read it; the slot is freed when the body is closed."""
        if not gate.try_acquire():
            wait = queue.retry_after()
            raise ApiError(503, f"the server is busy ({gate.capacity} uploads in flight, "
                           f"--max-uploads); retry after {wait} s", {"Retry-After": str(wait)})
        try:
            body = await read_upload(request, cfg)
        except BaseException:
            gate.release()
            raise
        body.on_close = gate.release
        return body

    async def answer(body: Body, options: Callable[[Body], tuple[Any, ...]],
                     job: Callable[..., Any]) -> tuple[tuple[Any, ...], Any]:
        """Validate the request's options, then run ``job(body.file, *options)`` in the
        queue: ``(options, result)``. The body is closed once nothing can read it."""
        try:
            args = options(body)
        except BaseException:
            body.close()
            raise
        return args, await queue.run(job, body.file, *args, cleanup=body.close)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        counts[200] += 1
        return HTMLResponse(_page(), headers=_PAGE_HEADERS)

    @app.get("/healthz", response_model=None, summary="served models, queue and limits")
    async def healthz() -> JSONResponse:
        counts[200] += 1
        return JSONResponse({
            "ok": True, "models": [m.describe() for m in models], "queue": queue.stats(),
            "uploads": {"in_flight": gate.in_flight, "max_uploads": gate.capacity},
            "limits": {"max_bytes": cfg.max_bytes, "max_pixels": cfg.max_pixels,
                       "timeout_s": cfg.timeout, "style_size": cfg.style_size,
                       "header_timeout_s": cfg.header_timeout,
                       "idle_timeout_s": cfg.idle_timeout, "body_timeout_s": cfg.body_timeout}})

    def classify_job(file: IO[bytes], m: ClassifierModel, seed: int) -> dict[str, Any]:
        return classify_image(decode_image(file, cfg.max_pixels), m, seed)

    def stylize_job(file: IO[bytes], m: StyleModel, samples: int, seed: int) -> bytes:
        return stylize_image(decode_image(file, cfg.max_pixels), m, samples, seed,
                             cfg.style_size)

    def classify_options(body: Body) -> tuple[ClassifierModel, int]:
        m = pick(models, "classify", body.fields.get("model"))
        assert isinstance(m, ClassifierModel)
        return m, int_field(body.fields, "seed", cfg.seed, 0, 2**62)

    def stylize_options(body: Body) -> tuple[StyleModel, int, int]:
        m = pick(models, "stylize", body.fields.get("model"))
        assert isinstance(m, StyleModel)
        samples = int_field(body.fields, "samples", 1, 1, MAX_STYLE_SAMPLES)
        if samples > 1 and not m.dropout:
            raise ApiError(422, f"samples={samples} needs a style network trained with "
                           f"--dropout > 0; {m.name} has none (every sample would be identical)")
        return m, samples, int_field(body.fields, "seed", cfg.seed, 0, 2**62)

    @app.post("/v1/classify", response_model=None, summary="classify an image with MC dropout",
              openapi_extra=_CLASSIFY_DOC, responses={200: _CLASSIFY_OK, **_UPLOAD_ERRORS})
    @safe
    async def classify(request: Request) -> Response:
        _, result = await answer(await receive(request), classify_options, classify_job)
        counts[200] += 1
        return JSONResponse(result)

    @app.post("/v1/stylize", response_model=None, summary="stylize an image",
              openapi_extra=_STYLIZE_DOC, responses={200: _STYLIZE_OK, **_UPLOAD_ERRORS})
    @safe
    async def stylize(request: Request) -> Response:
        body = await receive(request)
        t0 = time.perf_counter()
        (m, samples, _), png = await answer(body, stylize_options, stylize_job)
        counts[200] += 1
        return Response(png, media_type="image/png", headers={
            "X-Droplab-Model": m.name, "X-Droplab-Samples": str(samples),
            "X-Droplab-Seconds": f"{time.perf_counter() - t0:.4f}"})

    return app
