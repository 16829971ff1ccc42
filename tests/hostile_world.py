"""Helpers of the hostile-input table (tests/test_hostile.py): what a hostile but
realistic user hands droplab, and how a refusal is checked.

- :func:`call` runs ``droplab.cli.main(argv)`` in this process and returns the exit status,
  stdout, and stderr as the user would see it: fd-level output (C libraries included) plus
  a line per warning the CLI would have printed;
- :func:`snapshot` hashes a tree (every file's bytes, every folder, every link) so a row
  can assert that nothing it touched changed;
- the ``make_*`` functions build broken inputs: image folders, run folders whose
  checkpoint, config or summary is damaged, a checkpoint whose pickle would run code.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from droplab.cli import main
from droplab.runs import RunDir
from droplab.runs import folder as run_folder

#: names a run folder may hold that are not results (lock, temporary files)
SCRATCH = (".lock",)


@dataclass
class Outcome:
    code: int
    out: str
    err_lines: list[str]

    @property
    def line(self) -> str:
        return self.err_lines[0] if self.err_lines else ""


def call(argv: list[str], capfd: pytest.CaptureFixture[str]) -> Outcome:
    """``droplab ARGV`` in this process, as its user would see it.

    Warnings are recorded and counted as the stderr lines the command line would print
    (deprecations aside: Python hides them outside ``__main__``). Afterwards the process
    "exits" as far as run folders go: a start rejected after its folder was made removes
    its leftovers, as the atexit hook of a real process does.
    """
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
        try:
            code = main(argv)
        finally:
            run_folder._remove_rejected_starts()  # what the exit of a real process does
    out, err = capfd.readouterr()
    lines = [x for x in err.splitlines() if x.strip()]
    lines += [f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}" for w in caught]
    return Outcome(code, out, lines)


def snapshot(*roots: Path) -> dict[str, str]:
    """``{path: sha256 | 'dir' | 'link->target'}`` of every entry under ``roots``
    (lock and temporary files of atomic writes aside)."""
    out: dict[str, str] = {}
    for root in roots:
        if not root.exists() and not root.is_symlink():
            out[str(root)] = "absent"
            continue
        entries = [root, *sorted(root.rglob("*"))] if root.is_dir() else [root]
        for p in entries:
            if p.name in SCRATCH:
                continue
            if p.is_symlink():
                out[str(p)] = f"link->{os.readlink(p)}"
            elif p.is_dir():
                out[str(p)] = "dir"
            elif p.is_file():
                h = hashlib.sha256(p.read_bytes()).hexdigest() if os.access(p, os.R_OK) else "?"
                st = p.stat()
                out[str(p)] = f"{h}:{st.st_mode:o}"
            else:
                out[str(p)] = "special"
    return out


def temp_leftovers(root: Path) -> list[str]:
    """Temporary files of atomic writes left under ``root``."""
    return [str(p) for p in root.rglob("*") if p.name.endswith(".tmp")]


# -- broken images --------------------------------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def lying_png(width: int = 50_000, height: int = 50_000) -> bytes:
    """A PNG whose header declares ``width × height`` pixels but holds almost no data
    (68 bytes at the defaults' small cousins: the file that killed torchvision's decoder)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


BROKEN_FILES: dict[str, bytes] = {
    "garbage.png": b"this is not an image at all",
    "empty.png": b"",
    "lying.png": lying_png(3000, 3000),
    "bomb.png": lying_png(),
    "cut.jpg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00",
    "notes.txt.png": "élève\n".encode(),
}


def make_broken_images(folder: Path, *, classes: tuple[str, ...] = ()) -> Path:
    """A folder (with class sub-folders when ``classes`` are given) of files that all fail
    to decode."""
    targets = [folder / c for c in classes] or [folder]
    for d in targets:
        d.mkdir(parents=True, exist_ok=True)
        for name, data in BROKEN_FILES.items():
            (d / name).write_bytes(data)
    return folder


# -- broken run folders ---------------------------------------------------------------------
class Payload:
    """Pickles to a call that creates ``marker``: what a malicious checkpoint carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def poison_checkpoint(run: Path, marker: Path, name: str = "checkpoint.pt") -> None:
    """Replace ``run/name`` by the real contents plus a pickle payload that would create
    ``marker`` when unpickled."""
    good = RunDir(run).load_checkpoint(name) or {}
    torch.save({**good, "meta": Payload(marker)}, run / name)


def _cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _config_of(task: str) -> Callable[[Path], None]:
    def write(run: Path) -> None:
        stored = json.loads((run / "config.json").read_text())
        stored["task"] = task
        (run / "config.json").write_text(json.dumps(stored))
    return write


def _replace(name: str, data: bytes) -> Callable[[Path], None]:
    def write(run: Path) -> None:
        target = run / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
        target.write_bytes(data)
    return write


def _make_dir(name: str) -> Callable[[Path], None]:
    def make(run: Path) -> None:
        (run / name).unlink(missing_ok=True)
        (run / name).mkdir()
    return make


def _remove(name: str) -> Callable[[Path], None]:
    return lambda run: (run / name).unlink()


def _link(name: str, target: str) -> Callable[[Path], None]:
    def make(run: Path) -> None:
        (run / name).unlink(missing_ok=True)
        (run / name).symlink_to(target)
    return make


def _fifo(name: str) -> Callable[[Path], None]:
    def make(run: Path) -> None:
        (run / name).unlink(missing_ok=True)
        os.mkfifo(run / name)
    return make


#: damage done to a copy of a good run folder, by name (``run:<damage>`` in the table)
DAMAGE: dict[str, Callable[[Path], None]] = {
    "ckpt-garbage": _replace("checkpoint.pt", b"not a checkpoint\n" * 40),
    "ckpt-empty": _replace("checkpoint.pt", b""),
    "ckpt-cut": lambda run: _cut(run / "checkpoint.pt"),
    "ckpt-missing": _remove("checkpoint.pt"),
    "ckpt-dir": _make_dir("checkpoint.pt"),
    "ckpt-fifo": _fifo("checkpoint.pt"),
    "ckpt-devzero": _link("checkpoint.pt", "/dev/zero"),
    "ckpt-json": _replace("checkpoint.pt", b'{"model": [1, 2, 3]}'),
    "config-garbage": _replace("config.json", b"{ this is not json"),
    "config-binary": _replace("config.json", b"\xff\xfe\x00\x00garbage\x80\x81"),
    "config-list": _replace("config.json", b"[1, 2, 3]"),
    "config-empty": _replace("config.json", b""),
    "config-deep": _replace("config.json", b"[" * 100_000 + b"]" * 100_000),
    "config-dir": _make_dir("config.json"),
    "config-fifo": _fifo("config.json"),
    "config-missing": _remove("config.json"),
    "config-wrong-types": _replace(
        "config.json", b'{"task": "train", "data": {"dataset": 5, "limit": "many"}, '
        b'"model": {"dropout": "half"}, "train": {"epochs": -3}}'),
    "config-gan": _config_of("gan"),
    "config-style": _config_of("style-train"),
    "config-train": _config_of("train"),
    "config-unknown-task": _config_of("bake-a-cake"),
    "summary-garbage": _replace("summary.json", b"{ cut sho"),
    "summary-list": _replace("summary.json", b"[]"),
    "metrics-garbage": _replace("metrics.jsonl", b'{"epoch": "x", "step": "seven"}\n[1]\n"s"\n'),
}


def damaged_copy(good: Path, damage: str, dest: Path) -> Path:
    """A copy of the run folder ``good`` at ``dest`` with ``damage`` done to it."""
    shutil.copytree(good, dest, symlinks=True)
    (dest / ".lock").unlink(missing_ok=True)
    DAMAGE[damage](dest)
    return dest
