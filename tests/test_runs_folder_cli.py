"""Every command refuses an ``--out`` that holds another run, and leaves it byte-identical.

Also: a start rejected after its folder was made does not block the corrected command, and
output paths that cannot be folders are one line (issue 14, items 3, 6 and 8).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from droplab.cli import main
from droplab.runs import RunDir


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def taken(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("taken") / "run"
    assert main(["train", "--dataset", "digits", "--classes", "0-4", "--limit", "12",
                 "--model", "lenet", "--epochs", "1", "--out", str(out), "--device", "cpu"]) == 0
    return out


@pytest.fixture(scope="module")
def content(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("content")
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return d


def _commands(taken: Path, content: Path) -> dict[str, tuple[list[str], bool]]:
    """argv with ``--out taken`` and whether the command has ``--resume``."""
    out = ["--out", str(taken), "--device", "cpu"]
    return {
        "train": (["train", "--dataset", "digits", "--epochs", "1", *out], True),
        "finetune": (["finetune", "--from", str(taken), "--dataset", "digits", "--classes",
                      "5-9", "--epochs", "1", *out], True),
        "gan": (["gan", "--limit", "8", "--batch-size", "16", "--epochs", "1",
                 "--eval-samples", "0", *out], True),
        "style-train": (["style-train", "--style", "coffee", "--content-dir", str(content),
                         "--steps", "1", "--image-size", "32", "--encoder", "random", *out], True),
        "stylize": (["stylize", "--content", str(content / "0.png"), "--style", "coffee",
                     "--size", "32", "--steps", "1", "--encoder", "random", "--no-eval", *out],
                    False),
        "sweep": (["sweep", "--dataset", "digits", "--limit", "30", "--model", "mlp",
                   "--rates", "0,0.5", "--folds", "2", "--epochs", "1", *out], True),
    }


@pytest.mark.parametrize("command", ["train", "finetune", "gan", "style-train", "stylize",
                                     "sweep", "style-apply"])
def test_out_holding_another_run_is_refused_and_untouched(
        command: str, taken: Path, content: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    if command == "style-apply":  # needs a style model; its --out is the train run
        model = tmp_path / "style"
        assert main(["style-train", "--style", "coffee", "--content-dir", str(content),
                     "--steps", "1", "--image-size", "32", "--encoder", "random", "--width",
                     "4", "--n-residual", "1", "--out", str(model), "--device", "cpu"]) == 0
        argv, resumable = ["style-apply", str(model), str(content / "0.png"), "--out",
                           str(taken), "--device", "cpu"], False
    else:
        argv, resumable = _commands(taken, content)[command]
    before = _snapshot(taken)
    capsys.readouterr()
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "already holds a run" in err[0], err
    assert ("--resume" in err[0]) == resumable
    assert _snapshot(taken) == before


def test_rejected_start_does_not_block_the_corrected_command(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["train", "--dataset", "imagefolder:" + str(tmp_path / "nowhere"), "--out",
                 str(out), "--device", "cpu"]) == 2
    assert main(["train", "--dataset", "digits", "--limit", "10", "--epochs", "1", "--out",
                 str(out), "--device", "cpu"]) == 0
    assert (out / "summary.json").exists()


@pytest.mark.parametrize("where", ["file", "under-file"])
def test_out_that_cannot_be_a_folder_is_one_line(where: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me")
    out = blocker if where == "file" else blocker / "run"
    capsys.readouterr()
    assert main(["train", "--dataset", "digits", "--epochs", "1", "--out", str(out),
                 "--device", "cpu"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "is a file" in err[0]
    assert blocker.read_text() == "keep me"


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1.7 MB tmpfs (where ``mount`` is allowed): room for one LeNet checkpoint, not two."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1700k", "tmpfs", str(disk)],
            capture_output=True).returncode != 0:
        pytest.skip("needs permission to mount a tmpfs")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_full_disk_inside_torch_save_is_one_line_and_keeps_the_checkpoint(
        tiny_disk: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tiny_disk / "run"
    capsys.readouterr()
    code = main(["train", "--dataset", "digits", "--limit", "10", "--model", "lenet",
                 "--epochs", "3", "--out", str(out), "--device", "cpu"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1, err
    assert "No space left on device" in err[0] and "intact" in err[0]
    ckpt = RunDir(out).load_checkpoint()  # epoch 1's checkpoint survived, and reads
    assert ckpt is not None and ckpt["epoch"] == 1
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert all(line.endswith("}") for line in (out / "metrics.jsonl").read_text().splitlines())


def test_onnx_under_a_file_is_one_line(content: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnx")
    model = tmp_path / "style"
    assert main(["style-train", "--style", "coffee", "--content-dir", str(content), "--steps",
                 "1", "--image-size", "32", "--encoder", "random", "--width", "4",
                 "--n-residual", "1", "--out", str(model), "--device", "cpu"]) == 0
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me")
    capsys.readouterr()
    assert main(["style-apply", str(model), "--onnx", str(blocker / "net.onnx"),
                 "--device", "cpu"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "is a file" in err[0] and blocker.read_text() == "keep me"
