"""droplab.runs.restore.load_run: every run kind comes back from its folder alone.

Each run is made by its real CLI command on tiny data; the restored network must hold the
checkpoint's tensors exactly, be in eval mode, compute what the saved weights compute, and
need neither the training code's objects nor the network (folders are moved first).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from droplab.cli import main
from droplab.errors import UserError
from droplab.models.gan import Discriminator, Generator
from droplab.models.style import TransformerNet
from droplab.models.transfer import FinetuneNet
from droplab.runs import RunDir
from droplab.runs.restore import LoadedRun, load_run, load_style_net


def _cli(*args: str) -> None:
    assert main([*args, "--device", "cpu", "--json"]) == 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("restore")
    content = root / "content"
    content.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (36, 40, 3), dtype=np.uint8)).save(content / f"{i}.png")
    _cli("train", "--dataset", "digits", "--classes", "0-4", "--limit", "12", "--model", "lenet",
         "--dropout", "0.3", "--epochs", "1", "--out", str(root / "train"))
    _cli("finetune", "--from", str(root / "train"), "--dataset", "digits", "--classes", "5-9",
         "--labels-per-class", "6", "--val-fraction", "0", "--epochs", "1", "--hidden", "8",
         "--dropblock", "0.1",  # (--drop-path needs residual blocks; lenet has none)
         "--out", str(root / "finetune"))
    _cli("gan", "--limit", "8", "--batch-size", "16", "--width", "8", "--z-dim", "8",
         "--epochs", "1", "--eval-samples", "0", "--loss", "wgan-gp", "--d-dropout", "0.3",
         "--out", str(root / "gan"))
    _cli("style-train", "--style", "coffee", "--content-dir", str(content), "--steps", "2",
         "--image-size", "32", "--batch-size", "2", "--width", "4", "--n-residual", "1",
         "--encoder", "random", "--dropout", "0.2", "--checkpoint-every", "1",
         "--out", str(root / "style"))
    # every folder must stand on its own: move them away from where they were written
    moved = root / "moved"
    moved.mkdir()
    out = {}
    for name in ("gan", "style"):
        out[name] = Path(shutil.move(str(root / name), str(moved / name)))
    out["train"] = Path(shutil.copytree(root / "train", moved / "train"))
    out["finetune"] = root / "finetune"  # names its source run (root/train) by path
    return out


def _weights(run: Path, key: str = "model") -> dict[str, torch.Tensor]:
    ckpt = RunDir(run).load_checkpoint()
    assert ckpt is not None
    return ckpt[key]


def _same_tensors(net: nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = net.state_dict()
    assert own.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(own[k], v), k


def _assert_eval(loaded: LoadedRun) -> None:
    for net in (loaded.model, *loaded.nets.values()):
        assert not any(m.training for m in net.modules())


def test_train_run(runs: dict[str, Path]) -> None:
    loaded = load_run(runs["train"])
    assert loaded.task == "train" and loaded.classes == ["0", "1", "2", "3", "4"]
    assert loaded.in_shape == (1, 8, 8) and len(loaded.mean) == len(loaded.std) == 1
    _same_tensors(loaded.model, _weights(runs["train"]))
    _assert_eval(loaded)
    assert loaded.summary is not None and loaded.info["finished"] is True
    # eval mode is deterministic: two passes over the same batch agree bit for bit
    x = torch.randn(4, *loaded.in_shape)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), loaded.model(x))


def test_finetune_run_rebuilds_architecture_from_config(runs: dict[str, Path]) -> None:
    loaded = load_run(runs["finetune"])
    assert loaded.task == "finetune" and isinstance(loaded.model, FinetuneNet)
    assert loaded.classes == ["5", "6", "7", "8", "9"]
    _same_tensors(loaded.model, _weights(runs["finetune"]))
    _assert_eval(loaded)
    head = [m for m in loaded.model.head if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features)[1] for m in head] == [8, 5]  # --hidden 8, 5 classes
    kinds = {type(m).__name__ for m in loaded.model.source.modules()}
    assert any("DropBlock" in k for k in kinds)  # --dropblock 0.1 surgery is rebuilt too


def test_finetune_run_names_its_source_run_when_it_is_gone(runs: dict[str, Path],
                                                           tmp_path: Path) -> None:
    cfg = json.loads((runs["finetune"] / "config.json").read_text())
    copy = tmp_path / "ft"
    shutil.copytree(runs["finetune"], copy)
    cfg["from_run"] = str(tmp_path / "nowhere")
    (copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="restore that folder") as info:
        load_run(copy)
    assert "\n" not in str(info.value) and "nowhere" in str(info.value)


def test_gan_run_restores_all_three_nets(runs: dict[str, Path]) -> None:
    loaded = load_run(runs["gan"])
    assert loaded.task == "gan" and set(loaded.nets) == {"g", "d", "g_ema"}
    assert isinstance(loaded.model, Generator) and loaded.model is loaded.nets["g_ema"]
    assert isinstance(loaded.nets["d"], Discriminator)
    for key in ("g", "d", "g_ema"):
        _same_tensors(loaded.nets[key], _weights(runs["gan"], key))
    _assert_eval(loaded)
    # the stored options shape the nets: WGAN-GP's critic has no BatchNorm, D dropout 0.3
    d = loaded.nets["d"]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in d.modules())
    rates = {round(float(m.p), 6) for m in d.modules() if type(m).__name__ == "Dropout"}
    assert rates == {0.3}
    z = torch.randn(3, 8)  # --z-dim 8
    with torch.no_grad():
        img = loaded.model(z)
    assert img.shape == (3, *loaded.in_shape) and img.abs().max() <= 1.0


def test_style_run_from_folder_or_checkpoint_file(runs: dict[str, Path]) -> None:
    loaded = load_run(runs["style"])
    assert loaded.task == "style-train" and isinstance(loaded.model, TransformerNet)
    _same_tensors(loaded.model, _weights(runs["style"]))
    _assert_eval(loaded)
    net, state = load_style_net(runs["style"] / "checkpoint.pt")
    assert state["step"] == 2 and net.config == loaded.model.config
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), loaded.model(x))


def test_runs_without_a_model_are_refused_in_one_line(runs: dict[str, Path],
                                                      tmp_path: Path) -> None:
    stylize = tmp_path / "stylize"
    stylize.mkdir()
    (stylize / "config.json").write_text(json.dumps({"task": "stylize"}))
    with pytest.raises(UserError, match="has no trained model") as info:
        load_run(stylize)
    assert "\n" not in str(info.value)

    fresh = tmp_path / "fresh"
    shutil.copytree(runs["train"], fresh)
    (fresh / "checkpoint.pt").unlink()
    with pytest.raises(UserError, match=r"no checkpoint\.pt yet"):
        load_run(fresh)

    broken = tmp_path / "broken"
    shutil.copytree(runs["train"], broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_run(broken)

    # a checkpoint cut short: a one-line error that does not advise deleting the model
    cut = tmp_path / "cut"
    shutil.copytree(runs["train"], cut)
    data = (cut / "checkpoint.pt").read_bytes()
    (cut / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError) as info:
        load_run(cut)
    msg = str(info.value)
    assert "\n" not in msg and "cannot be read" in msg and "delete" not in msg


def test_gan_restores_from_nested_config_json_alone(runs: dict[str, Path],
                                                    tmp_path: Path) -> None:
    """Architecture options may live only in config.json's sections (droplab.config)."""
    copy = tmp_path / "gan"
    shutil.copytree(runs["gan"], copy)
    run = RunDir(copy)
    ckpt = run.load_checkpoint()
    assert ckpt is not None
    flat = ckpt.pop("config")
    run.save_checkpoint(ckpt)
    nested = {"task": "gan", "model": {"z_dim": flat["z_dim"], "width": flat["width"],
                                       "loss": flat["loss"], "spectral_norm": False},
              "dropout": {"d_dropout": flat["d_dropout"], "g_dropout": flat["g_dropout"]},
              "train": {"ema": flat["ema"]}}
    (copy / "config.json").write_text(json.dumps(nested))
    loaded = load_run(copy)
    for key in ("g", "d", "g_ema"):
        _same_tensors(loaded.nets[key], _weights(runs["gan"], key))
    assert loaded.model is loaded.nets["g_ema"]
