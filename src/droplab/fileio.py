"""Files droplab can trust: atomic writes, and torch files read without running code.

Writes. Every result file goes through a temporary file beside its target, an ``fsync``
and :func:`os.replace`, so a crash or a full disk never leaves a half-written file in
place of a good one: a reader sees either the previous file or the new one. A failed write
raises a one-line :class:`DiskWriteError` that says the previous file is intact.

Reads. :func:`read_torch_file` is the only ``torch.load`` in droplab. It always passes
``weights_only=True``: PyTorch's restricted unpickler then builds tensors, containers and
numbers only, and refuses any other global *before* calling it, so a file carrying a
pickled ``__reduce__`` payload is rejected with nothing in it executed (the attack of
"Never unpickle untrusted data", Python ``pickle`` docs; PyTorch's "weights_only"
security note). Callers may widen the allow-list by exactly the globals they need (run
checkpoints of the previous release hold a NumPy array; :mod:`droplab.runs.checkpoint`).

This module sits in the base layer (below :mod:`droplab.runs`, which re-exports it) so the
image writer, the plots, the model zoo's weight files and the ONNX export can use it
without importing the run-folder layer.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stdout, suppress
from pathlib import Path
from typing import IO, Any

import torch

from droplab.errors import UserError

#: the process umask at import (os.umask can only be read by setting it); see _umask()
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _umask() -> int:
    """The umask now, as ``open()`` would apply it: read from ``/proc/self/status`` where
    Linux has it (no set-and-restore race between threads), else the value at import."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return _UMASK


class DiskWriteError(UserError, OSError):
    """Writing a result failed (disk full, no permission); the previous file is intact."""


class UnsafeFile(UserError):
    """A torch file that would need code outside the allow-list to load; nothing ran."""


class UnreadableFile(UserError):
    """A torch file that is truncated, corrupt or not a torch file at all."""


def to_jsonable(obj: Any) -> Any:
    """Convert dataclasses, paths, tensors, NumPy scalars and tuples to JSON values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.tolist()) if obj.numel() != 1 else to_jsonable(obj.item())
    if hasattr(obj, "item") and callable(obj.item):  # NumPy scalars
        return to_jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else (math.inf if obj > 0 else -math.inf)
    return obj


def _parent_problem(path: Path) -> str | None:
    """Why ``path.parent`` cannot hold a file, or ``None`` when it (or its creation) is fine."""
    for parent in (path.parent, *path.parent.parents):
        if parent.exists():
            return None if parent.is_dir() else f"{parent} is a file, not a folder"
    return None


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success fsync it and rename over ``path``.

    On any error the temporary file is removed and ``path`` is left untouched; an
    ``OSError`` (e.g. disk full, a parent that is a file) becomes a one-line
    :class:`DiskWriteError`.
    """
    path = Path(path)
    problem = _parent_problem(path)
    if problem is not None:
        raise DiskWriteError(f"could not write {path}: {problem}; choose another location")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with suppress(OSError):  # mkstemp makes 0600; results get the usual permissions
            os.fchmod(fd, 0o666 & ~_umask())
    except OSError as exc:
        raise DiskWriteError(
            f"could not write {path}: {exc.strerror or exc}; choose another location"
        ) from None
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _unlink_quietly(tmp)
        raise DiskWriteError(
            f"could not write {path}: {exc.strerror or exc}; the previous file (if any) is intact"
        ) from None
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _unlink_quietly(path: str | Path) -> None:
    with suppress(OSError):
        os.unlink(path)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_open(path, "w") as fh:
        json.dump(to_jsonable(obj), fh, indent=2, allow_nan=True)
        fh.write("\n")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write raw bytes (e.g. an encoded PNG), atomically."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through a temporary file and rename (see :func:`atomic_open`).

    PyTorch's zip writer turns a failed ``write`` (a full disk) into a ``RuntimeError``
    ("unexpected pos …", "… failed writing …"); the file object handed to it records the
    underlying ``OSError``, which then becomes the usual one-line :class:`DiskWriteError`
    with the previous file left in place. A ``RuntimeError`` with no I/O error behind it
    is a bug and propagates.
    """
    with atomic_open(path, "wb") as fh:
        writer = _RecordingWriter(fh)
        try:
            torch.save(obj, writer)
        except RuntimeError:
            if writer.error is None:
                raise
            raise writer.error from None


class _RecordingWriter:
    """A binary file wrapper that remembers the first ``OSError`` of ``write``/``flush``."""

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._fh.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        try:
            self._fh.flush()
        except OSError as exc:
            self.error = self.error or exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)


def read_torch_file(
    path: str | Path,
    *,
    map_location: str | torch.device = "cpu",
    allow: Sequence[Any] = (),
    what: str = "file",
    advice: str = "pass another file",
) -> Any:
    """``torch.load(path, weights_only=True)`` with ``allow`` added to the allow-list.

    A file that needs any other global is refused with a one-line :class:`UnsafeFile`
    naming the file and the globals it asked for; nothing in it runs. A truncated or
    foreign file is a one-line :class:`UnreadableFile` ending in ``advice``.
    """
    path = Path(path)
    if path.exists() and not path.is_file():  # a FIFO would block, /dev/zero never end
        kind = "a folder" if path.is_dir() else "not a regular file"
        raise UnreadableFile(f"{what} {path} cannot be read (it is {kind}); {advice}")
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        unsafe = _unsafe_globals(path, allow) or _refused_in_message(exc)
        if unsafe:
            shown = ", ".join(unsafe[:3]) + (" …" if len(unsafe) > 3 else "")
            raise UnsafeFile(
                f"refused to load {what} {path}: it needs {shown}, which a droplab "
                "file never holds (only tensors and plain Python); nothing in it was run. "
                "Use files only from people you trust"
            ) from None
        reason = _first_line(exc)
    except MemoryError:
        raise
    except Exception as exc:  # any other failure of a corrupt file's unpickling
        reason = _first_line(exc)  # (IndexError, TypeError … from a garbled pickle stream)
    raise UnreadableFile(f"{what} {path} cannot be read ({reason}); {advice}")


_FORCE = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
_FORCE_NOT = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


@contextmanager
def third_party_weights() -> Iterator[None]:
    """Around code that loads weights itself (torchvision builders, timm, torch-fidelity):

    - every ``torch.load`` inside is weights-only, whatever its caller passes
      (``torch.hub.load_state_dict_from_url`` defaults to ``weights_only=False``). PyTorch
      reads ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` on every call; the previous values of both
      force variables are restored on exit. A hostile cached file then raises
      ``pickle.UnpicklingError`` with nothing run;
    - what it prints goes to stderr: torch hub writes ``Downloading: …`` to *stdout*, which
      would break ``--json`` (one JSON object on stdout).
    """
    saved = {k: os.environ.get(k) for k in (_FORCE, _FORCE_NOT)}
    os.environ[_FORCE] = "1"
    os.environ.pop(_FORCE_NOT, None)
    try:
        with redirect_stdout(sys.stderr):
            yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _unsafe_globals(path: Path, allow: Sequence[Any]) -> list[str]:
    """Globals the pickle inside ``path`` names that are not allowed (read, never run)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint: it cannot be inspected, treat as unreadable
        return []
    allowed = set()
    for entry in allow:
        if isinstance(entry, tuple):
            allowed.add(entry[1])
        else:
            allowed.add(f"{entry.__module__}.{entry.__qualname__}")
    return [n for n in names if n not in allowed]


def _refused_in_message(exc: BaseException) -> list[str]:
    """What PyTorch's unpickler refused to build or call, from its error message."""
    found = re.findall(r"Unsupported global: GLOBAL ([\w.]+)|but got <class '([\w.]+)'>",
                       str(exc))
    return [a or b for a, b in found]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text[:100] + ("…" if len(text) > 100 else "")
    name = type(exc).__name__
    return f"{name}: {text}" if text and "Weights only" not in text else f"{name}; truncated?"


__all__ = ["DiskWriteError", "UnreadableFile", "UnsafeFile", "atomic_open",
           "atomic_torch_save", "atomic_write_bytes", "atomic_write_json", "read_torch_file",
           "third_party_weights", "to_jsonable"]
