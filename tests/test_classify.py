"""The classify task end to end on tiny data: files, figures, reload, evaluation, resume."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from droplab.engine import predict_proba
from droplab.errors import InvalidValue, ResumeError, UnknownName
from droplab.runs.restore import load_run
from droplab.tasks.classify import ClassifyConfig, _convert, evaluate_run, run

TIMING = ("time_s", "images_per_s")


def digits_cfg(out: Path, **kw) -> ClassifyConfig:
    base = dict(dataset="digits", model="mlp", widths=[128], dropout=0.5, epochs=2,
                out=str(out), device="cpu")
    base.update(kw)
    return ClassifyConfig.build(**base)


def write_folder(root: Path, per_class: int = 20, size: int = 16) -> Path:
    """Three visually distinct RGB classes (red blob, green bars, blue ramp) plus noise."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    patterns = {
        "blob": np.stack([((yy - 8) ** 2 + (xx - 8) ** 2 < 20) * 200, yy * 0, yy * 0], -1),
        "bars": np.stack([yy * 0, (xx % 4 < 2) * 200, yy * 0], -1),
        "ramp": np.stack([yy * 0, yy * 0, xx * 12], -1),
    }
    for name, pat in patterns.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = np.clip(pat + rng.normal(0, 25, pat.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{i}.png")
    return root


def test_run_writes_folder_and_reloads(tmp_path: Path) -> None:
    out = tmp_path / "r"
    s = run(digits_cfg(out, epochs=3))
    for f in ("config.json", "metrics.jsonl", "checkpoint.pt", "summary.json", "learning_curves.png"):
        assert (out / f).is_file(), f
    assert json.loads((out / "config.json").read_text())["task"] == "train"
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(s))
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    for key in ("test_acc", "test_loss", "test_ece", "test_brier", "best_val_acc", "epochs",
                "time_s", "images_per_s", "run_dir", "num_params"):
        assert s[key] is not None, key
    # 10 balanced classes: chance is 0.1; 3 epochs of a 128-unit MLP reach > 0.85
    assert 0.85 < s["test_acc"] <= 1 and 0 <= s["test_ece"] <= 1 and s["test_loss"] > 0
    assert s["train_images"] + round(0.1 * 1437) == 1437 and s["test_images"] == 360

    loaded = load_run(out)
    assert not loaded.model.training and loaded.classes == [str(i) for i in range(10)]
    assert loaded.in_shape == (1, 8, 8) and loaded.summary == s
    from droplab import data as D

    bundle = D.load_dataset("digits", seed=0)
    loader = D.Loader(bundle.test, batch_size=128, shuffle=False, mean=loaded.mean, std=loaded.std)
    probs, labels = predict_proba(loaded.model, loader, "cpu")
    assert float((probs.argmax(1) == labels).double().mean()) == pytest.approx(s["test_acc"])


def test_same_seed_same_numbers_other_seed_differs(tmp_path: Path) -> None:
    a = run(digits_cfg(tmp_path / "a", seed=3))
    b = run(digits_cfg(tmp_path / "b", seed=3))
    c = run(digits_cfg(tmp_path / "c", seed=4))

    def metrics(p: Path) -> list[dict]:
        recs = [json.loads(line) for line in (p / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in TIMING} for r in recs]

    assert metrics(tmp_path / "a") == metrics(tmp_path / "b")
    assert a["test_acc"] == b["test_acc"] and a["test_loss"] == b["test_loss"]
    assert metrics(tmp_path / "a") != metrics(tmp_path / "c")
    assert c["test_loss"] != a["test_loss"]


def test_resume_checks_and_finished_run(tmp_path: Path) -> None:
    out = tmp_path / "r"
    s = run(digits_cfg(out))
    metrics = (out / "metrics.jsonl").read_bytes()
    assert run(digits_cfg(out), resume=True) == json.loads(json.dumps(s))
    assert (out / "metrics.jsonl").read_bytes() == metrics
    with pytest.raises(ResumeError, match=r"--model \(stored 'mlp', given 'lenet'\)") as err:
        run(digits_cfg(out, model="lenet"), resume=True)
    assert "\n" not in str(err.value)
    with pytest.raises(ResumeError, match="classes"):
        run(digits_cfg(out, classes=["0", "1", "2", "3", "4"]), resume=True)


def test_config_validation() -> None:
    with pytest.raises(InvalidValue, match="--dropout"):
        ClassifyConfig.build(dropout=1.0)
    with pytest.raises(InvalidValue, match="val-fraction"):
        ClassifyConfig.build(val_fraction=1.0)
    with pytest.raises(UnknownName, match="optimizer"):
        ClassifyConfig.build(optimizer="lamb")


def test_imagefolder_training_and_evaluation_with_mc_and_ood(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "imgs")
    out = tmp_path / "r"
    s = run(ClassifyConfig.build(dataset=f"imagefolder:{folder}", model="mlp", epochs=4,
                                 batch_size=8, val_fraction=0.2, out=str(out), device="cpu"))
    assert s["classes"] == ["bars", "blob", "ramp"] and s["in_shape"] == [3, 16, 16]
    # three easily separable classes: chance is 1/3
    assert s["test_acc"] >= 0.75

    # a digits run evaluated against the RGB folder as OOD (converted to 1×8×8)
    drun = tmp_path / "d"
    run(digits_cfg(drun))
    ev = evaluate_run(drun, mc=5, ood=f"imagefolder:{folder}", device="cpu")
    for key in ("acc", "nll", "ece", "brier", "mc_acc", "mc_ece", "mc_nll", "mc_entropy",
                "mc_mutual_information", "ood_auroc_mutual_information", "ood_auroc_max_prob"):
        assert ev[key] is not None and np.isfinite(ev[key]), key
    assert 0 <= ev["ood_auroc_max_prob"] <= 1 and ev["ood_images"] == 12
    # MI ≥ 0 and entropy ≥ MI (entropy = MI + expected entropy, both ≥ 0)
    assert 0 <= ev["mc_mutual_information"] <= ev["mc_entropy"]
    assert ev["acc"] == pytest.approx(json.loads((drun / "summary.json").read_text())["test_acc"])
    for f in ("reliability.png", "confusion.png", "evaluation.json"):
        assert (drun / f).stat().st_size > 1000, f
    assert json.loads((drun / "evaluation.json").read_text())["mc_samples"] == 5


def test_convert_channels_and_size() -> None:
    rgb = torch.zeros(2, 3, 16, 16, dtype=torch.uint8)
    rgb[:, 1] = 255  # pure green → luma 0.587·255 ≈ 150
    grey = _convert(rgb, (1, 8, 8))
    assert grey.shape == (2, 1, 8, 8) and grey.dtype == torch.uint8
    assert int(grey[0, 0, 4, 4]) == 150
    back = _convert(grey, (3, 32, 32))
    assert back.shape == (2, 3, 32, 32) and int(back[1, 2, 10, 10]) == 150


def test_mnist_from_shared(shared_dir: Path, tmp_path: Path) -> None:
    if not (shared_dir / "datasets" / "MNIST" / "raw").is_dir():
        pytest.skip("no MNIST in the shared data")
    s = run(ClassifyConfig.build(dataset="mnist", data_root=str(shared_dir / "datasets"), limit=60,
                           model="mlp", epochs=2, download=False, out=str(tmp_path / "m"),
                           device="cpu"))
    # 540 training images, 600 test images: well above chance (0.1)
    assert s["in_shape"] == [1, 28, 28] and s["test_images"] == 600 and s["test_acc"] > 0.6


@pytest.mark.slow
def test_ddp_two_processes_gloo(tmp_path: Path) -> None:
    """torchrun with 2 CPU processes (gloo): same accuracy band as one process (≥ 0.9)."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DROPLAB_PROGRESS": "0"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", str(29500 + os.getpid() % 1000), "-m", "droplab", "train",
           "--dataset", "digits", "--model", "mlp", "--epochs", "5", "--device", "cpu",
           "--out", str(out), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    s = json.loads(proc.stdout.strip().splitlines()[-1])
    assert s["world_size"] == 2 and s["test_acc"] >= 0.9
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [1, 2, 3, 4, 5]
    # each rank sees half of the 1293 training images per epoch with half the batch
    assert recs[0]["step"] == math.ceil(math.ceil(1293 / 2) / 16)


def test_reliability_bins_match_uncertainty_ece(tmp_path: Path) -> None:
    """plots.calibration_bins and uncertainty.expected_calibration_error agree (same
    equal-width 15-bin definition), and the figures are written as PNG files."""
    from droplab import plots
    from droplab.uncertainty import expected_calibration_error

    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(500, 4, generator=g), 1)
    labels = torch.randint(0, 4, (500,), generator=g)
    b = plots.calibration_bins(probs, labels, 15)
    ok = b["count"] > 0
    ece = float(np.sum(b["count"][ok] / 500 * np.abs(b["accuracy"][ok] - b["confidence"][ok])))
    assert ece == pytest.approx(expected_calibration_error(probs, labels, 15), abs=1e-6)
    assert b["count"].sum() == 500
    plots.reliability_diagram(probs, labels, tmp_path / "rel.png")
    plots.confusion_matrix_plot(labels, probs.argmax(1), list("abcd"), tmp_path / "cm.png")
    plots.learning_curves([{"epoch": 1, "train_loss": 1.0, "val_acc": 0.5}], tmp_path / "lc.png")
    for f in ("rel.png", "cm.png", "lc.png"):
        assert (tmp_path / f).read_bytes()[:4] == b"\x89PNG"
