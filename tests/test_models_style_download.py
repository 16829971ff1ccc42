"""VGG-19 weight downloads: chatter on stderr (``--json`` stays one object), and a failed
download is remembered instead of tried again on every ``--encoder auto`` run (issue 14.9).

The network is replaced by a stand-in for ``torch.hub.load_state_dict_from_url`` that does
what the real one does offline: print ``Downloading: …`` on stdout, then fail.
"""

from __future__ import annotations

import json
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torchvision.models._api as tv_api
from PIL import Image

from droplab.cli import main
from droplab.models.style import download_failed_marker, vgg19_weights_path


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("DROPLAB_OFFLINE", raising=False)
    calls = {"n": 0}

    def no_network(url: str, *args: object, **kwargs: object) -> dict:
        calls["n"] += 1
        sys.stdout.write(f'Downloading: "{url}" to {vgg19_weights_path()}\n')
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", no_network)
    return calls


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, list[str]]:
    capsys.readouterr()
    code = main([*argv, "--json", "--device", "cpu"])
    out, err = capsys.readouterr()
    return code, out, [line for line in err.splitlines() if line.strip()]


def test_stylize_json_is_one_object_and_the_failure_is_remembered(
        offline_hub: dict[str, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["stylize", "--content", "astronaut", "--style", "coffee", "--size", "32",
            "--steps", "1", "--no-eval"]
    code, out, err = _run([*argv, "--out", str(tmp_path / "a")], capsys)
    assert code == 0 and offline_hub["n"] == 1
    summary = json.loads(out)  # the whole of stdout is one JSON object
    assert summary["encoder"].startswith("cifar")
    marker = download_failed_marker(vgg19_weights_path())
    assert marker.is_file() and "name resolution" in marker.read_text()
    assert any(line.startswith("Downloading:") for line in err)  # moved, not lost
    note = [line for line in err if "CIFAR-10-trained encoder" in line]
    assert len(note) == 1 and str(marker) in note[0]

    # the next auto run does not touch the network and says how to retry
    code, out, err = _run([*argv, "--out", str(tmp_path / "b")], capsys)
    assert code == 0 and offline_hub["n"] == 1
    json.loads(out)
    note = [line for line in err if "CIFAR-10-trained encoder" in line]
    assert len(note) == 1 and "not retried" in note[0] and f"delete {marker}" in note[0]

    # asking for vgg19 by name does retry, and fails in one line
    code, out, err = _run([*argv, "--encoder", "vgg19", "--out", str(tmp_path / "c")], capsys)
    assert code == 2 and offline_hub["n"] == 2 and out == ""
    assert len([line for line in err if not line.startswith("Downloading:")]) == 1

    # deleting the marker (what the note says) makes auto try once more
    marker.unlink()
    code, out, _ = _run([*argv, "--out", str(tmp_path / "d")], capsys)
    assert code == 0 and offline_hub["n"] == 3 and marker.is_file()
    json.loads(out)


def test_style_train_json_is_one_object(offline_hub: dict[str, int], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    content = tmp_path / "content"
    content.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(content / f"{i}.png")
    code, out, _ = _run(["style-train", "--style", "coffee", "--content-dir", str(content),
                         "--steps", "1", "--image-size", "32", "--width", "4", "--n-residual",
                         "1", "--out", str(tmp_path / "st")], capsys)
    assert code == 0 and offline_hub["n"] == 1
    assert json.loads(out)["task"] == "style-train"
