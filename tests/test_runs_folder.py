"""Run folders: atomic writes keep the previous file on failure; metrics survive crashes."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from droplab import runs
from droplab.errors import DataNotFound, UserError
from droplab.runs import DiskWriteError, RunDir, atomic_write_json, to_jsonable


def test_create_refuses_existing_run_and_resume_requires_config(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "a", task="train")
    run.write_config({"lr": 0.1}, task="train")
    run.log({"epoch": 1})
    before = {p.name: p.read_bytes() for p in run.path.iterdir()}
    with pytest.raises(UserError, match="already holds a run; pass --resume") as info:
        RunDir.create(tmp_path / "a", task="train")
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="choose a new --out folder"):
        RunDir.create(tmp_path / "a", task="style-apply", resumable=False)
    assert {p.name: p.read_bytes() for p in run.path.iterdir()} == before  # untouched
    assert RunDir.create(tmp_path / "a", task="train", resume=True).read_config() == {
        "task": "train",
        "lr": 0.1,
    }
    with pytest.raises(DataNotFound, match="does not exist"):
        RunDir.create(tmp_path / "b", task="train", resume=True)
    (tmp_path / "c").mkdir()
    with pytest.raises(DataNotFound, match=r"holds no run \(no config\.json\)"):
        RunDir.create(tmp_path / "c", task="train", resume=True)


@pytest.mark.parametrize("result", ["metrics.jsonl", "checkpoint.pt", "summary.json"])
def test_each_result_file_makes_a_folder_a_run(tmp_path: Path, result: str) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / result).write_text("x")
    with pytest.raises(UserError, match="already holds a run"):
        RunDir.create(tmp_path / "r", task="train")


def test_rejected_start_does_not_block_the_corrected_command(tmp_path: Path) -> None:
    """A start that failed after writing config.json (a bad dataset, say) left only that."""
    out = tmp_path / "r"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"task": "train", "dataset": "typo"}))
    (out / ".config.json.abc.tmp").write_text("{")  # a write cut short
    run = RunDir.create(out, task="train")
    run.write_config({"dataset": "digits"}, task="train")
    assert run.read_config()["dataset"] == "digits"
    # a folder of someone's files that is not a run is not refused either
    pics = tmp_path / "pictures"
    pics.mkdir()
    (pics / "cat.png").write_bytes(b"png")
    RunDir.create(pics, task="style-apply", resumable=False)
    assert (pics / "cat.png").read_bytes() == b"png"


def test_rejected_start_is_cleaned_at_exit(tmp_path: Path) -> None:
    """In a real process: the folder made for a run that produced nothing is removed."""
    script = (
        "import sys; from droplab.runs import RunDir\n"
        f"a = RunDir.create({str(tmp_path / 'new')!r}, task='train')\n"
        "a.write_config({'x': 1}, task='train')\n"
        f"b = RunDir.create({str(tmp_path / 'kept')!r}, task='train')\n"
        "b.write_config({'x': 1}, task='train'); b.log({'epoch': 1})\n"
        f"c = RunDir.create({str(tmp_path / 'given')!r}, task='train')\n"
        "c.write_config({'x': 1}, task='train')\n"
        "sys.exit(2)\n"
    )
    (tmp_path / "given").mkdir()
    (tmp_path / "given" / "notes.txt").write_text("mine")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, env=_env())
    assert proc.returncode == 2, proc.stderr
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["config.json",
                                                                   "metrics.jsonl"]
    assert sorted(p.name for p in (tmp_path / "given").iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("case", ["file", "under-file", "read-only"])
def test_output_path_problems_are_one_line_before_anything_is_written(
        tmp_path: Path, case: str) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("data")
    if case == "file":
        out, expect = blocker, "is a file, not a folder"
    elif case == "under-file":
        out, expect = blocker / "run", "is a file"
    else:
        if os.geteuid() == 0:
            pytest.skip("root can write anywhere")
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        out, expect = ro / "run", "not writable"
    with pytest.raises(UserError, match=expect) as info:
        RunDir.create(out, task="train")
    assert "\n" not in str(info.value)
    assert blocker.read_text() == "data"


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", src)}


def test_default_run_dir_is_unique(tmp_path: Path) -> None:
    a = runs.default_run_dir("train", tmp_path)
    a.mkdir(parents=True)
    b = runs.default_run_dir("train", tmp_path)
    assert a != b and a.name.startswith("train-") and b.name.startswith(a.name)


def test_metrics_append_read_truncate_and_skip_torn_line(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "r", task="train")
    for epoch in range(1, 5):
        run.log({"epoch": epoch, "loss": 1.0 / epoch, "t": torch.tensor(2.0)})
    with open(run.metrics_path, "a") as fh:  # a line cut short by a crash
        fh.write('{"epoch": 5, "lo')
    records = run.read_metrics()
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert records[0]["t"] == 2.0
    run.truncate_metrics(lambda r: r["epoch"] <= 2)
    assert [r["epoch"] for r in run.read_metrics()] == [1, 2]


def test_checkpoint_roundtrip_and_atomic_failure_keeps_previous(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = RunDir.create(tmp_path / "r", task="train")
    run.save_checkpoint({"epoch": 1, "w": torch.ones(3)})
    before = run.checkpoint_path.read_bytes()

    real_save = torch.save

    def full_disk(obj, fh, *a, **k):  # write some bytes, then fail like a full disk
        real_save({"partial": torch.zeros(1000)}, fh)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(DiskWriteError) as info:
        run.save_checkpoint({"epoch": 2, "w": torch.zeros(3)})
    msg = str(info.value)
    assert "\n" not in msg and "No space left" in msg and "intact" in msg
    assert run.checkpoint_path.read_bytes() == before
    assert not [p for p in run.path.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(torch, "save", real_save)
    assert run.load_checkpoint()["epoch"] == 1


def test_unreadable_checkpoint_is_a_user_error(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "r", task="train")
    run.checkpoint_path.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot be read"):
        run.load_checkpoint()


def test_to_jsonable_and_atomic_json(tmp_path: Path) -> None:
    import dataclasses

    import numpy as np

    @dataclasses.dataclass
    class Cfg:
        path: Path
        sizes: tuple[int, ...]

    data = {"cfg": Cfg(Path("/x"), (1, 2)), "np": np.float32(0.5), "nan": float("nan")}
    assert to_jsonable(data) == {"cfg": {"path": "/x", "sizes": [1, 2]}, "np": 0.5, "nan": None}
    atomic_write_json(tmp_path / "s.json", data)
    assert json.loads((tmp_path / "s.json").read_text())["np"] == 0.5


def test_open_rejects_non_run(tmp_path: Path) -> None:
    with pytest.raises(DataNotFound, match="does not exist"):
        RunDir.open(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataNotFound, match="not a droplab run folder"):
        RunDir.open(tmp_path / "plain")


def test_stored_paths_follow_a_moved_folder(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "a", task="sweep")
    inside, outside = run.path / "study" / "db.sqlite", tmp_path / "shared.db"
    assert run.record_path(inside) == "study/db.sqlite"
    assert run.record_path(outside) == str(outside.resolve())
    run.close()
    moved = RunDir(tmp_path / "b")
    (tmp_path / "a").rename(moved.path)
    assert moved.resolve_path("study/db.sqlite") == (moved.path / "study/db.sqlite").resolve()
    assert moved.resolve_path(outside) == outside
    # an old config.json with an absolute path inside the folder it was created in
    old = str((tmp_path / "a" / "study" / "db.sqlite").resolve())
    assert moved.resolve_path(old, stored_out=tmp_path / "a") == (
        moved.path / "study" / "db.sqlite").resolve()


def test_results_get_umask_permissions_not_mkstemps_0600(tmp_path: Path) -> None:
    script = ("import os; os.umask(0o027)\n"
              "from droplab.fileio import atomic_write_json\n"
              f"atomic_write_json({str(tmp_path / 's.json')!r}, {{'a': 1}})\n")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60, env=_env())
    assert (tmp_path / "s.json").stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize("umask", [0o002, 0o022, 0o077])
def test_atomic_writes_follow_the_umask_of_now_like_open(tmp_path: Path, umask: int) -> None:
    """Set after droplab was imported (a report published by a group-writable umask):
    the page gets what ``open()`` would give it, and so do bytes and torch files."""
    from droplab.fileio import atomic_torch_save, atomic_write_bytes

    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "s.json", {"a": 1})
        atomic_write_bytes(tmp_path / "page.html", b"<html></html>")
        atomic_torch_save({"w": torch.zeros(1)}, tmp_path / "checkpoint.pt")
        with open(tmp_path / "plain.txt", "w") as fh:
            fh.write("x")
    finally:
        os.umask(old)
    want = (tmp_path / "plain.txt").stat().st_mode & 0o777
    assert want == 0o666 & ~umask
    for name in ("s.json", "page.html", "checkpoint.pt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == want, name
