"""One writer per run folder: the ``.lock`` file.

A process that creates or resumes a run holds ``<run>/.lock`` until it exits:

- the file is made with an exclusive create (``O_CREAT | O_EXCL``) and holds the writer's
  PID, host, start time and command line (JSON), so a second writer is told who holds it;
- the holder also keeps an advisory ``flock`` on it. The kernel drops that lock when the
  process ends, however it ends (``kill -9`` included), so a lock whose ``flock`` can be
  taken is stale and is taken over — no guessing from PIDs, which the system reuses. Where
  the file system has no ``flock`` (some network mounts), a lock from this host whose PID
  is gone is stale; a lock from another host is never assumed stale (the message says
  which file to delete once that process is known to be gone);
- the lock is re-entrant within one process (a command that opens its folder twice:
  counted), and released (file removed) by the last :meth:`RunLock.release` or at
  interpreter exit.

Readers (``evaluate``, ``report``, ``serve``) never take it.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as _dt
import errno
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any, ClassVar

from droplab.errors import UserError

try:  # POSIX; on other systems only the PID check below is used
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK = ".lock"


class RunLocked(UserError):
    """Another process is writing this run folder."""


class RunLock:
    """The held lock of one run folder (see the module docstring)."""

    _held: ClassVar[dict[Path, RunLock]] = {}

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd
        self._count = 1

    # -- acquiring ---------------------------------------------------------------------------
    @classmethod
    def acquire(cls, folder: Path) -> RunLock:
        """Hold ``folder/.lock`` or raise a one-line :class:`RunLocked`."""
        path = (folder / LOCK).resolve()
        held = cls._held.get(path)
        if held is not None and held._fd is not None:
            held._count += 1
            return held
        for _ in range(5):  # a lost race with another taker: look again
            lock = cls._try_create(path) or cls._try_take_over(path)
            if lock is not None:
                cls._held[path] = lock
                return lock
        raise RunLocked(f"{folder} is being written by another process and its lock "
                        f"{path} keeps changing; try again")

    @classmethod
    def _try_create(cls, path: Path) -> RunLock | None:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        except FileExistsError:
            return None
        except OSError as exc:
            raise UserError(f"cannot create the lock file {path} ({exc.strerror}); choose a "
                            "folder you can write to") from None
        if not _flock(fd):
            os.close(fd)  # someone opened the brand-new file first: treat as held
            return None
        lock = cls(path, fd)
        lock._write_owner()
        return lock

    @classmethod
    def _try_take_over(cls, path: Path) -> RunLock | None:
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return None  # released meanwhile: create it next round
        owner = _read_owner(fd)
        flocked = _flock(fd)
        if flocked is None:  # no flock here: fall back to the PID
            stale = owner.get("host") == socket.gethostname() and not _alive(owner)
        else:
            stale = flocked
        if not stale:
            os.close(fd)
            raise RunLocked(_held_message(path, owner, flock_known=flocked is not None))
        if not _same_file(fd, path):  # it was released and re-created while we looked
            os.close(fd)
            return None
        lock = cls(path, fd)
        lock._write_owner()
        return lock

    # -- holding -----------------------------------------------------------------------------
    def _write_owner(self) -> None:
        assert self._fd is not None
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": _dt.datetime.now().isoformat(timespec="seconds"),
                "command": " ".join(sys.argv[:6])[:200]}
        data = json.dumps(info).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        with contextlib.suppress(OSError):
            os.fsync(self._fd)

    def release(self, *, force: bool = False) -> None:
        """Give back one :meth:`acquire`; the last one (or ``force``) removes the file."""
        if self._fd is None:
            return
        self._count -= 1
        if self._count > 0 and not force:
            return
        with contextlib.suppress(OSError):
            if _same_file(self._fd, self.path):
                os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = None
        RunLock._held.pop(self.path, None)

    @property
    def held(self) -> bool:
        return self._fd is not None

    @classmethod
    def release_all(cls) -> None:
        for lock in list(cls._held.values()):
            lock.release(force=True)


atexit.register(RunLock.release_all)


# -- helpers -------------------------------------------------------------------------------------


def _flock(fd: int) -> bool | None:
    """Take the advisory lock without waiting: True taken, False held elsewhere, None n/a."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        return None  # ENOLCK / EOPNOTSUPP: this file system has no flock
    return True


def _read_owner(fd: int) -> dict[str, Any]:
    try:
        data = os.pread(fd, 4096, 0)
        owner = json.loads(data.decode() or "{}")
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _alive(owner: dict[str, Any]) -> bool:
    try:
        pid = int(owner.get("pid", 0))
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _held_message(path: Path, owner: dict[str, Any], *, flock_known: bool) -> str:
    who = f"process {owner.get('pid', '?')} on {owner.get('host', '?')}"
    since = f" since {owner['started']}" if owner.get("started") else ""
    cmd = f" ({owner['command']})" if owner.get("command") else ""
    if flock_known or owner.get("host") == socket.gethostname():
        return (f"{path.parent} is in use by {who}{since}{cmd}; wait for it to finish or stop "
                "it, then try again")
    return (f"{path.parent} is in use by {who}{since}{cmd}; if that process is gone, delete "
            f"{path} and try again")


__all__ = ["LOCK", "RunLock", "RunLocked"]
