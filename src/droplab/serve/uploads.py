"""Untrusted request bodies: bounded, streamed, spooled, then decoded.

The order keeps everything expensive behind the cheap checks:

1. :class:`UploadGate` — at most ``--max-uploads`` requests hold an upload at once; the
   next one gets 503 + Retry-After *before* a byte of its body is read;
2. :func:`body_chunks` — ``Content-Length`` over the limit is 413 before reading; then a
   running count (413 as soon as it passes the limit), an idle timeout (a body that stalls
   gets 408 and the connection is closed) and a deadline for the whole body;
3. :func:`read_upload` — the file streams into a :class:`~tempfile.SpooledTemporaryFile`:
   in memory up to :data:`SPOOL_BYTES`, on disk beyond, never held whole in memory and
   never copied whole (multipart forms are parsed while they stream);
4. :func:`decode_image` — the one decoder (:mod:`droplab.data.decode`): the content
   decides the type, never the name (a small format allow-list, so e.g. EPS never reaches
   Ghostscript), the pixel count read from the header and checked before any pixel is
   decoded (decompression bombs), then decoding to 8-bit RGB.

Every refusal is an :class:`~droplab.serve.errors.ApiError` with a one-line message.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from tempfile import SpooledTemporaryFile
from typing import IO

from PIL import Image
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from droplab.data import decode
from droplab.errors import ImageReadError
from droplab.serve.config import ServeConfig
from droplab.serve.errors import ApiError, one_line

#: Formats the server decodes; everything else is 415 (the content decides, not the name).
ALLOWED_FORMATS: tuple[str, ...] = decode.ALLOWED_FORMATS
#: Body bytes kept in memory per upload; the rest is spooled to a temporary file.
SPOOL_BYTES = 1 << 20
#: Multipart framing allowance on top of ``max_bytes`` for the whole request body.
FORM_OVERHEAD = 64 * 1024
#: Sent with a 408: the client stalled mid-request, the connection cannot be reused.
CLOSE = {"Connection": "close"}


# ------------------------------------------------------------------------------ admission
class UploadGate:
    """A counter of uploads in flight, bounded by ``capacity`` (thread-safe: a slot is
    released by whoever closes the upload, the event loop or an inference thread)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self._held = 0
        self._lock = threading.Lock()

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._held

    def try_acquire(self) -> bool:
        with self._lock:
            if self._held >= self.capacity:
                return False
            self._held += 1
            return True

    def release(self) -> None:
        with self._lock:
            if self._held <= 0:
                raise RuntimeError("UploadGate.release() without a matching acquire")
            self._held -= 1


# ------------------------------------------------------------------------------ reading
@dataclass
class Body:
    """An upload read to its end: the image file (spooled), its size in bytes and the text
    fields (form fields, else the query string). :meth:`close` it exactly when it is no
    longer needed: that frees the spool file and ``on_close`` (the gate's slot)."""

    file: IO[bytes]
    size: int
    fields: dict[str, str]
    on_close: Callable[[], None] | None = None
    _closed: bool = field(default=False, repr=False)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.file.close()
        finally:
            if self.on_close is not None:
                self.on_close()


def too_big(max_bytes: int) -> ApiError:
    return ApiError(413, f"the upload is larger than this server's limit of {max_bytes:,} "
                    "bytes (--max-bytes); send a smaller file")


async def body_chunks(request: Request, limit: int, cfg: ServeConfig) -> AsyncIterator[bytes]:
    """The request body as it arrives, refused as soon as it is known to be bad.

    413 when ``Content-Length`` or the running count exceeds ``limit`` bytes (the message
    names ``cfg.max_bytes``); 408 + ``Connection: close`` when no data comes for
    ``cfg.idle_timeout`` s or the body is not complete ``cfg.body_timeout`` s after it
    began; 400 when the client disconnects.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise ApiError(400, f"invalid Content-Length header {one_line(declared)[:40]!r}"
                           ) from None
        if n > limit:
            raise too_big(cfg.max_bytes)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + cfg.body_timeout
    received = 0
    while True:
        wait = min(cfg.idle_timeout, deadline - loop.time())
        try:
            message = await asyncio.wait_for(request.receive(), max(wait, 0.0))
        except TimeoutError:
            if wait < cfg.idle_timeout:
                raise ApiError(408, f"the upload did not complete within {cfg.body_timeout:g} s "
                               "(--body-timeout); send it over a faster link or send a "
                               "smaller file", CLOSE) from None
            raise ApiError(408, f"the upload stalled: no data for {cfg.idle_timeout:g} s "
                           "(--idle-timeout); send the whole body", CLOSE) from None
        if message["type"] == "http.disconnect":
            raise ApiError(400, "the client closed the connection before the upload ended")
        chunk: bytes = message.get("body", b"")
        received += len(chunk)
        if received > limit:
            raise too_big(cfg.max_bytes)
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


async def read_upload(request: Request, cfg: ServeConfig) -> Body:
    """The image (multipart field ``file``, or a raw ``image/*`` /
    ``application/octet-stream`` body) and the text fields, spooled and size-checked."""
    ctype = request.headers.get("content-type", "").lower()
    fields = dict(request.query_params.items())
    if ctype.startswith("multipart/form-data"):
        stream = body_chunks(request, cfg.max_bytes + FORM_OVERHEAD, cfg)
        parser = MultiPartParser(request.headers, stream, max_files=1, max_fields=16,
                                 max_part_size=4096)
        parser.spool_max_size = SPOOL_BYTES
        try:
            form = await parser.parse()  # closes its spool files itself when it fails
        except MultiPartException as exc:
            raise ApiError(400, f"malformed multipart form ({one_line(exc)})") from None
        file = form.get("file")
        fields.update((k, v) for k, v in form.multi_items() if isinstance(v, str))
        if not isinstance(file, UploadFile):
            await form.close()
            raise ApiError(422, "missing form field 'file' (the image, sent as a file upload: "
                           "curl -F file=@image.png)")
        size = int(file.size or 0)
        if size > cfg.max_bytes:
            file.file.close()
            raise too_big(cfg.max_bytes)
        return Body(file.file, size, fields)
    if ctype.startswith(("image/", "application/octet-stream")):
        # the spool outlives this function: Body.close() closes it once the job is done
        spool = UploadFile(SpooledTemporaryFile(max_size=SPOOL_BYTES), size=0)  # noqa: SIM115
        try:
            async for chunk in body_chunks(request, cfg.max_bytes, cfg):
                await spool.write(chunk)
            await spool.seek(0)
        except BaseException:
            spool.file.close()
            raise
        return Body(spool.file, int(spool.size or 0), fields)
    if ctype.startswith("application/x-www-form-urlencoded"):
        raise ApiError(422, "missing form field 'file': a url-encoded form cannot carry a file; "
                       "send multipart/form-data (curl -F file=@image.png)")
    if request.headers.get("content-length", "0") == "0" and not ctype:
        raise ApiError(400, "the request is empty; send multipart/form-data with a 'file' "
                       "field (curl -F file=@image.png)")
    shown = one_line(ctype.split(";")[0])[:60] or "none"
    raise ApiError(415, f"unsupported Content-Type {shown!r}; send multipart/form-data with "
                   "a 'file' field (or a raw image body with Content-Type image/*)")


def int_field(fields: dict[str, str], name: str, default: int, lo: int, hi: int) -> int:
    """The integer option ``name`` of a request (``default`` when absent), 422 unless it is
    an integer in ``[lo, hi]``."""
    text = fields.get(name)
    if text is None or text.strip() == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(422, f"field {name!r} must be an integer, got {one_line(text)[:40]!r}"
                       ) from None
    if not lo <= value <= hi:
        raise ApiError(422, f"field {name!r}={value} is outside [{lo}, {hi}]")
    return value


# ------------------------------------------------------------------------------ decoding
@dataclass
class Upload:
    """A decoded upload: 8-bit RGB pixels and what the file said about itself."""

    image: Image.Image
    format: str
    width: int
    height: int


def decode_image(source: bytes | IO[bytes], max_pixels: int) -> Upload:
    """Decode untrusted bytes (or a spooled upload) with the one decoder,
    :func:`droplab.data.decode.decode_image`, or raise :class:`ApiError`.

    400 empty / truncated / corrupt; 413 more than ``max_pixels`` declared in the header
    (checked before any pixel is decoded); 415 not one of :data:`ALLOWED_FORMATS` (the
    content decides, not the name). EXIF orientation is applied; CMYK, palette, alpha and
    16-bit images become 8-bit RGB. A spool is read whole here, inside the inference job,
    so at most ``--concurrency`` compressed uploads are in memory at once.
    """
    data = source if isinstance(source, bytes | bytearray) else source.read()
    if not data:
        raise ApiError(400, "the uploaded file is empty; choose an image file")
    try:
        d = decode.decode_image(data, max_pixels=max_pixels, name="the upload")
    except decode.ImageTooLarge as exc:
        raise ApiError(413, str(exc)) from None
    except decode.UnsupportedImage as exc:
        raise ApiError(415, str(exc)) from None
    except ImageReadError as exc:
        raise ApiError(400, str(exc)) from None
    return Upload(d.image, d.format, d.width, d.height)
