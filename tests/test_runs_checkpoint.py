"""droplab.runs.checkpoint: the contract on save, refusal of code on load, old files load.

The attack is the one of the issue: a ``checkpoint.pt`` whose pickle carries a
``__reduce__`` payload. Loading it with ``weights_only=False`` would call the payload
(here: create a marker file); droplab must refuse it in one line, naming the file, with the
marker never created. PyTorch's own tests of the weights-only unpickler
(test/test_serialization.py: ``test_weights_only_*``) check the same property for the
loader itself; these check it for droplab's entry point and its allow-list.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import random
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from droplab.fileio import UnreadableFile, UnsafeFile, read_torch_file
from droplab.runs import RunDir
from droplab.runs.checkpoint import load_checkpoint, save_checkpoint, to_checkpoint


class _Payload:
    """Pickles as "call os.system('touch MARKER')" — what a hostile file would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def write_malicious(path: Path, marker: Path) -> Path:
    """A file that looks like a droplab checkpoint and runs a command when unpickled."""
    torch.save({"model": {"w": torch.ones(2)}, "epoch": 1, "meta": _Payload(marker)}, path)
    return path


def test_malicious_checkpoint_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    path = write_malicious(tmp_path / "checkpoint.pt", marker)
    with pytest.raises(UnsafeFile) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and "system" in msg and "nothing" in msg
    assert not marker.exists()
    # the same file through the generic reader used for weight files
    with pytest.raises(UnsafeFile):
        read_torch_file(path, what="weights file")
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_plain_pickle_payload_is_refused(tmp_path: Path) -> None:
    """Not even a torch zip file: a bare pickle is read by the legacy path, still restricted."""
    marker = tmp_path / "MARKER"
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(pickle.dumps({"x": _Payload(marker)}))
    with pytest.raises((UnsafeFile, UnreadableFile)) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    assert not marker.exists()


def test_previous_release_checkpoint_loads_with_numpy_state_as_tensor(tmp_path: Path) -> None:
    """The previous release stored ``np.random.get_state()`` and ``random.getstate()``."""
    np.random.seed(123)
    state = np.random.get_state()
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": OrderedDict(w=torch.arange(3.0)), "epoch": 2,
                "rng": {"python": random.getstate(), "numpy": state,
                        "torch": torch.get_rng_state()}}, path)
    with pytest.raises(pickle.UnpicklingError):  # PyTorch alone refuses it ...
        torch.load(path, weights_only=True)
    ckpt = load_checkpoint(path)  # ... droplab's allow-list accepts exactly this
    key = ckpt["rng"]["numpy"][1]
    assert isinstance(key, torch.Tensor) and key.shape == (624,)
    np.random.seed(0)
    np.random.set_state(ckpt["rng"]["numpy"])  # NumPy takes the tensor back
    expected = np.random.RandomState()
    expected.set_state(state)
    assert np.random.rand() == expected.rand()
    random.setstate(ckpt["rng"]["python"])


def test_numpy_object_array_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    torch.save({"x": np.array([1, "a"], dtype=object)}, path)
    with pytest.raises(UnsafeFile) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_save_converts_numpy_and_refuses_objects(tmp_path: Path) -> None:
    @dataclasses.dataclass
    class Cfg:
        lr: float = 0.1

    sd = torch.nn.BatchNorm1d(2).state_dict()
    state = {"model": sd, "rng": ("MT19937", np.arange(4, dtype=np.uint32), 1, 0, 0.0),
             "loss": np.float32(0.5), "shape": torch.Size([1, 8, 8]), "dtype": torch.float16}
    out = to_checkpoint(state)
    assert out["model"] is sd  # unchanged containers keep identity (and _metadata)
    assert isinstance(out["rng"][1], torch.Tensor) and out["rng"][1].tolist() == [0, 1, 2, 3]
    assert type(out["loss"]) is float and state["rng"][1].dtype == np.uint32  # input untouched
    save_checkpoint(state, tmp_path / "ok.pt")
    back = load_checkpoint(tmp_path / "ok.pt")
    assert back["shape"] == torch.Size([1, 8, 8]) and back["dtype"] is torch.float16
    assert back["model"]._metadata == sd._metadata  # BatchNorm's version survives
    with pytest.raises(TypeError, match=r"\['meta'\]\['cfg'\] is a dataclass"):
        save_checkpoint({"meta": {"cfg": Cfg()}}, tmp_path / "bad.pt")
    with pytest.raises(TypeError, match="object of type"):
        save_checkpoint({"x": [object()]}, tmp_path / "bad.pt")
    assert not (tmp_path / "bad.pt").exists()


def test_truncated_and_foreign_files_are_one_line_with_the_callers_advice(
        tmp_path: Path) -> None:
    run = RunDir.create(tmp_path / "r", task="train")
    run.save_checkpoint({"epoch": 1, "w": torch.ones(1000)})
    data = run.checkpoint_path.read_bytes()
    run.checkpoint_path.write_bytes(data[:200])
    with pytest.raises(UnreadableFile) as info:
        run.load_checkpoint()
    msg = str(info.value)
    assert "\n" not in msg and "cannot be read" in msg and "new --out" in msg
    with pytest.raises(UnreadableFile, match=r"restore checkpoint\.pt from a copy"):
        run.load_checkpoint(advice="restore checkpoint.pt from a copy")
    run.checkpoint_path.write_text("hello")
    with pytest.raises(UnreadableFile):
        run.load_checkpoint()
    torch.save([1, 2], run.checkpoint_path)
    with pytest.raises(UnreadableFile, match="holds a list"):
        run.load_checkpoint()
