"""Synthetic run folders and page parsing shared by the report tests.

The folders are shaped like those of the train, gan and sweep tasks (the keys those tasks
write), small enough to build in milliseconds.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from droplab.cli import main
from droplab.runs import RunDir

RATES = (0.0, 0.25, 0.5)
SEEDS = (0, 1, 2)


def png(path: Path, seed: int, size: int = 32) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)


def acc_of(p: float, seed: int) -> float:
    """The test accuracy written into the summary of the synthetic train run (p, seed)."""
    return round(0.95 - 0.2 * p + 0.01 * seed, 6)


def make_train_run(root: Path, p: float, seed: int, *, evaluation: bool = False) -> Path:
    run_dir = RunDir.create(root / f"train-p{p}-s{seed}", "train")
    run_dir.write_config(
        {"dataset": "digits", "model": {"name": "mlp", "dropout": p, "dropout_kind": "dropout"},
         "epochs": 3, "lr": 0.1, "seed": seed, "out": str(run_dir.path)},
        task="train",
    )
    for e in range(1, 4):
        run_dir.log({"epoch": e, "step": 10 * e, "train_loss": 1.0 / e + p, "val_loss": 1.1 / e,
                     "train_acc": 1 - 1 / (e + 1), "val_acc": 0.8 + 0.03 * e, "lr": 0.1 / e,
                     "dropout_p": p, "time_s": 0.5 * e, "images_per_s": 900.0 + seed})
    run_dir.write_summary({"task": "train", "test_acc": acc_of(p, seed), "test_loss": 0.3 + p,
                           "test_ece": 0.05, "best_val_acc": 0.89, "epochs": 3, "time_s": 1.5,
                           "run_dir": str(run_dir.path)})
    if evaluation:
        rng = np.random.default_rng(seed)
        (run_dir.path / "evaluation.json").write_text(json.dumps({
            "acc": 0.9, "ece": 0.04, "mc_samples": 20,
            "entropy_correct": rng.uniform(0, 0.5, 80).tolist(),
            "entropy_wrong": rng.uniform(0.3, 2.0, 20).tolist(),
        }))
        png(run_dir.path / "reliability.png", 1, 48)
        png(run_dir.path / "confusion.png", 2, 40)
    return run_dir.path


def make_gan_run(root: Path, epochs: int = 14) -> Path:
    run_dir = RunDir.create(root / "gan", "gan")
    run_dir.write_config({"epochs": epochs, "dropout": 0.3, "latent_dim": 16}, task="gan")
    for e in range(1, epochs + 1):
        run_dir.log({"epoch": e, "d_loss": 1.0 / e, "g_loss": 2.0 / e, "d_real": 0.6})
        png(run_dir.path / f"samples_epoch_{e:03d}.png", e)
    png(run_dir.path / "samples.png", epochs)
    # droplab gan trains its feature classifier into a nested run folder; the report names
    # it but does not take its images
    clf = RunDir.create(run_dir.path / "classifier", "train")
    clf.write_config({"dataset": "digits"}, task="train")
    png(clf.path / "learning_curves.png", 7)
    run_dir.write_summary({"task": "gan", "epochs": epochs, "fid": 12.5, "kid": 0.01})
    return run_dir.path


def make_sweep_run(root: Path) -> Path:
    """Shaped like ``droplab sweep``'s folder: settings with ``cv.<metric>.{mean,std}``."""
    run_dir = RunDir.create(root / "sweep", "sweep")
    run_dir.write_config({"dataset": "digits", "rates": [0.0, 0.2, 0.4], "folds": 3,
                          "kinds": ["dropout", "spatial"], "wheres": ["head"]}, task="sweep")
    settings = []
    for trial, (k, p) in enumerate((k, p) for k in ("dropout", "spatial") for p in (0.0, 0.2, 0.4)):
        acc = 0.9 - abs(p - 0.2) - (k == "spatial") * 0.02
        settings.append({"rate": p, "kind": k, "where": "head", "state": "complete",
                         "trial": trial, "folds_done": 3, "value": acc,
                         "cv": {"acc": {"mean": acc, "std": 0.01},
                                "nll": {"mean": 1 - acc, "std": 0.02}}})
        run_dir.log({"trial": trial, "state": "complete", "value": acc,
                     "params": {"rate": p, "kind": k, "where": "head"}, "duration_s": 2.0})
    run_dir.write_summary({"task": "sweep", "objective": "acc", "settings": settings,
                           "pick": {"rate": 0.2, "kind": "dropout", "where": "head"},
                           "test": {"test_acc": 0.91}, "test_acc": 0.91, "n_trials": 6})
    png(run_dir.path / "cv_vs_rate.png", 99, 40)
    return run_dir.path


class PageParser(HTMLParser):
    """Images, tables, section ids, nav links, the run tables' header cells (with class),
    the rows of the Skipped table, and the text of the whole page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.tables = 0
        self.th: list[tuple[str, str]] = []
        self.links: list[str] = []
        self.tags: list[str] = []
        self.sections: list[str] = []
        self.nav: list[str] = []
        self.skipped: list[list[str]] = []
        self.text: list[str] = []
        self._in_th: str | None = None
        self._in_nav = False
        self._table = ""
        self._buf = ""
        self._row: list[str] | None = None
        self._cell: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append(tag)
        if tag == "img":
            self.images.append(a)
        elif tag == "table":
            self.tables += 1
            self._table = a.get("class", "")
        elif tag == "th" and self._table == "runs":  # the run tables' headers only
            self._in_th, self._buf = a.get("class", ""), ""
        elif tag in ("link", "script"):
            self.links.append(tag)
        elif tag == "section":
            self.sections.append(a.get("id", ""))
        elif tag == "nav":
            self._in_nav = True
        elif tag == "tr" and "skipped" in self._table:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = ""
        if tag == "a" and self._in_nav:
            self.nav.append(a.get("href", ""))
        if tag == "a" and a.get("href", "").startswith("http"):
            self.links.append(a["href"])

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in_th is not None:
            self._buf += data
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "th" and self._in_th is not None:
            self.th.append((self._buf, self._in_th))
            self._in_th = None
        elif tag == "nav":
            self._in_nav = False
        elif tag == "td" and self._cell is not None and self._row is not None:
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row:
                self.skipped.append(self._row)
            self._row = None
        elif tag == "table":
            self._table = ""


def decode_image(src: str) -> Image.Image:
    assert src.startswith("data:image/"), src[:40]
    header, b64 = src.split(",", 1)
    assert header.endswith(";base64")
    img = Image.open(io.BytesIO(base64.b64decode(b64, validate=True)))
    img.load()
    return img


def parse(path: Path) -> PageParser:
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def report_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``droplab report ARGS``: (exit status, stdout, stderr)."""
    rc = main(["report", *args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def snapshot(root: Path) -> dict[str, str]:
    """Every file and link under ``root`` → a digest of its bytes (or its link target)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p)] = "link:" + str(p.readlink())
        elif p.is_file():
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir():
            out[str(p)] = "dir"
    return out
