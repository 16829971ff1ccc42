"""Run folders: atomic writes keep the previous file on failure; metrics survive crashes."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch

from droplab import runs
from droplab.errors import DataNotFound, UserError
from droplab.runs import DiskWriteError, RunDir, atomic_write_json, to_jsonable


def test_create_refuses_existing_run_and_resume_requires_config(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "a", task="train")
    run.write_config({"lr": 0.1}, task="train")
    with pytest.raises(UserError, match="already holds a run"):
        RunDir.create(tmp_path / "a", task="train")
    assert RunDir.create(tmp_path / "a", task="train", resume=True).read_config() == {
        "task": "train",
        "lr": 0.1,
    }
    with pytest.raises(DataNotFound, match=r"no config\.json"):
        RunDir.create(tmp_path / "b", task="train", resume=True)


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
