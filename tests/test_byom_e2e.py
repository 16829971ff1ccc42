"""End to end through the CLI: ``droplab evaluate RUN --mc 30 --json`` on a run of every
droplab model and on a finetune run, and ``droplab inspect`` on the same folders."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from droplab.cli import main

MODELS = {
    "mlp": ["--widths", "32"],
    "lenet": [],
    "convnet": ["--widths", "8,16", "--dropout-where", "all"],
    "resnet18-cifar": ["--dropout-kind", "droppath", "--dropout-where", "all"],
    "tv:resnet18": [],
}


def _json(capsys: pytest.CaptureFixture[str]) -> dict:
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1  # --json prints exactly one object
    return json.loads(out[0])


def _train(out: Path, model: str, extra: list[str]) -> None:
    rc = main(["train", "--dataset", "digits", "--classes", "0-2", "--limit", "20",
               "--model", model, "--dropout", "0.3", "--epochs", "1", "--batch-size", "16",
               "--val-fraction", "0", "--device", "cpu", "--out", str(out), "--json", *extra])
    assert rc == 0


def _evaluate_mc(out: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    """``droplab evaluate OUT --mc 30 --json``, checked; no fallback to full passes."""
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["evaluate", str(out), "--mc", "30", "--json"]) == 0
    assert not [w for w in caught if "full passes" in str(w.message)]
    s = _json(capsys)
    _check_mc(s, out)
    return s


def _check_mc(s: dict, out: Path) -> None:
    assert s["mc_samples"] == 30 and 0 <= s["mc_acc"] <= 1
    assert s["mc_mutual_information"] > 0  # the 30 passes differ
    assert (out / "evaluation.json").is_file() and (out / "uncertainty.npz").is_file()


@pytest.mark.parametrize("model", list(MODELS))
def test_evaluate_mc_on_every_droplab_model(model: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    _train(out, model, MODELS[model])
    _evaluate_mc(out, capsys)  # every droplab model traces
    assert main(["inspect", str(out), "--json"]) == 0
    report = _json(capsys)
    assert report["active"] >= 1 and report["plan"]["cached"]


def test_evaluate_mc_on_a_finetune_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    src = tmp_path / "src"
    _train(src, "lenet", [])
    out = tmp_path / "ft"
    assert main(["finetune", "--dataset", "digits", "--classes", "3-5", "--from", str(src),
                 "--strategy", "full", "--epochs", "1", "--labels-per-class", "8",
                 "--val-fraction", "0", "--out", str(out), "--json"]) == 0
    _evaluate_mc(out, capsys)


def test_evaluate_mc_without_dropout_is_a_one_line_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    rc = main(["train", "--dataset", "digits", "--classes", "0-2", "--limit", "20",
               "--model", "mlp", "--widths", "16", "--dropout", "0", "--epochs", "1",
               "--val-fraction", "0", "--out", str(out), "--json"])
    assert rc == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--mc", "30"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "identical" in err


@pytest.mark.parametrize("backbone", ["tv:resnet18", "timm:resnet18"])
def test_finetune_drop_path_is_stochastic_depth_on_branches(
        backbone: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if backbone.startswith("timm"):
        pytest.importorskip("timm")
    from droplab.runs.restore import load_run
    from droplab.surgery import find_dropout

    out = tmp_path / "ft"
    assert main(["finetune", "--dataset", "digits", "--classes", "0-2", "--backbone", backbone,
                 "--weights", "none", "--drop-path", "0.2", "--strategy", "full",
                 "--epochs", "1", "--labels-per-class", "4", "--image-size", "32",
                 "--val-fraction", "0", "--out", str(out), "--json"]) == 0
    paths = [d for d in find_dropout(load_run(out).model) if d.kind == "droppath"]
    if backbone.startswith("tv"):  # one per residual block, after its branch's last BN
        assert [d.name.rsplit(".", 2)[-2:] for d in paths] == [["bn2", "post_dropout"]] * 8
        assert [d.p for d in paths] == [pytest.approx(0.2 * i / 8) for i in range(1, 9)]
    else:  # timm's own drop_path_rate: its linspace rule, the deepest block at 0.2
        assert len(paths) == 7 and max(d.p for d in paths) == pytest.approx(0.2)
    _evaluate_mc(out, capsys)


def test_finetune_drop_path_on_a_backbone_without_residual_blocks_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    _train(src, "lenet", [])
    capsys.readouterr()
    assert main(["finetune", "--dataset", "digits", "--classes", "3-5", "--from", str(src),
                 "--drop-path", "0.1", "--epochs", "1", "--out", str(tmp_path / "ft")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no residual blocks" in err
