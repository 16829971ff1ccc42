"""A hostile ``checkpoint.pt`` under every command that reads one (issue 14, item 1).

Each run folder is real (made by its own command on tiny data); its checkpoint is then
replaced by one whose pickle would create a marker file when unpickled. Every command must
refuse it with exit status 2 and one stderr line naming the file, and the marker must never
appear. ``droplab serve`` runs as a real process (it would otherwise start listening).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from droplab.cli import main
from droplab.runs import RunDir

REPO = Path(__file__).resolve().parents[1]

GAN = ["--limit", "8", "--batch-size", "16", "--width", "8", "--z-dim", "8", "--epochs", "1",
       "--eval-samples", "0"]
STYLE = ["--style", "coffee", "--steps", "2", "--image-size", "32", "--batch-size", "2",
         "--width", "4", "--n-residual", "1", "--encoder", "random", "--checkpoint-every", "1"]
TRAIN = ["--dataset", "digits", "--classes", "0-4", "--limit", "12", "--model", "lenet",
         "--epochs", "1"]


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Intact run folders of every kind that has a checkpoint."""
    root = tmp_path_factory.mktemp("hostile")
    content = root / "content"
    content.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(content / f"{i}.png")
    runs = {"train": root / "train", "gan": root / "gan", "style": root / "style",
            "content": content}
    assert main(["train", *TRAIN, "--out", str(runs["train"]), "--device", "cpu"]) == 0
    assert main(["gan", *GAN, "--out", str(runs["gan"]), "--device", "cpu"]) == 0
    assert main(["style-train", *STYLE, "--content-dir", str(content), "--out",
                 str(runs["style"]), "--device", "cpu"]) == 0
    return runs


def _poisoned(clean: dict[str, Path], kind: str, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the ``kind`` run whose checkpoint.pt carries the payload; (run, marker)."""
    run = tmp_path / f"{kind}-run"
    shutil.copytree(clean[kind], run)
    marker = tmp_path / "MARKER"
    good = RunDir(run).load_checkpoint() or {}  # the real contents, plus the payload
    torch.save({**good, "meta": _Payload(marker)}, run / "checkpoint.pt")
    return run, marker


def _refused(code: int, err: str, run: Path, marker: Path) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert "refused to load" in lines[0] and str(run / "checkpoint.pt") in lines[0]
    assert "delete" not in lines[0]
    assert not marker.exists()


CASES = {
    "evaluate": ("train", lambda run, c: ["evaluate", str(run), "--device", "cpu"]),
    "train --resume": ("train", lambda run, c: ["train", "--out", str(run), "--resume",
                                                "--device", "cpu"]),
    "finetune --from": ("train", lambda run, c: [
        "finetune", "--from", str(run), "--dataset", "digits", "--classes", "5-9",
        "--epochs", "1", "--out", str(run.parent / "ft"), "--device", "cpu"]),
    "gan --feature-extractor": ("train", lambda run, c: [
        "gan", *GAN[:-2], "--feature-extractor", str(run), "--out", str(run.parent / "g"),
        "--device", "cpu"]),
    "gan --resume": ("gan", lambda run, c: ["gan", *GAN, "--out", str(run), "--resume",
                                            "--device", "cpu"]),
    "style-train --resume": ("style", lambda run, c: [
        "style-train", *STYLE, "--content-dir", str(c["content"]), "--out", str(run),
        "--resume", "--device", "cpu"]),
    "style-apply": ("style", lambda run, c: [
        "style-apply", str(run), str(c["content"] / "0.png"), "--out",
        str(run.parent / "styled"), "--device", "cpu"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_command_refuses_hostile_checkpoint(case: str, clean: dict[str, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    kind, argv = CASES[case]
    run, marker = _poisoned(clean, kind, tmp_path)
    if "--resume" in case:  # an interrupted run: resuming must read its checkpoint
        (run / "summary.json").unlink()
    capsys.readouterr()
    code = main(argv(run, clean))
    _refused(code, capsys.readouterr().err, run, marker)
    for made in ("ft", "g", "styled"):  # a refused start leaves no half-made run behind
        assert not (run.parent / made / "summary.json").exists()


@pytest.mark.parametrize("kind", ["train", "style"])
def test_serve_refuses_hostile_checkpoint_at_start_up(kind: str, clean: dict[str, Path],
                                                      tmp_path: Path) -> None:
    run, marker = _poisoned(clean, kind, tmp_path)
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO / "src"))}
    proc = subprocess.run([sys.executable, "-m", "droplab", "serve", str(run), "--port", "0",
                           "--device", "cpu"], capture_output=True, text=True, timeout=120,
                          env=env)
    _refused(proc.returncode, proc.stderr, run, marker)
