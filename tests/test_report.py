"""``droplab report``: HTML built from run folders, parsed back and checked.

Synthetic run folders are shaped like those of the train, gan and sweep tasks (the keys
of the brief); a real 1-epoch digits training run is added when the train CLI exists.
"""

from __future__ import annotations

import base64
import io
import json
import statistics
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from droplab.cli import MODULES, main
from droplab.report import (
    ReportConfig,
    RunRecord,
    image_sequences,
    load_run_record,
    rate_groups,
    rate_table,
    run,
    sweep_settings,
    sweep_table,
    thin,
    uncertainty_arrays,
)
from droplab.runs import RunDir

RATES = (0.0, 0.25, 0.5)
SEEDS = (0, 1, 2)


def _png(path: Path, seed: int, size: int = 32) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)


def _test_acc(p: float, seed: int) -> float:
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
    run_dir.write_summary({"task": "train", "test_acc": _test_acc(p, seed), "test_loss": 0.3 + p,
                           "test_ece": 0.05, "best_val_acc": 0.89, "epochs": 3, "time_s": 1.5,
                           "run_dir": str(run_dir.path)})
    if evaluation:
        rng = np.random.default_rng(seed)
        (run_dir.path / "evaluation.json").write_text(json.dumps({
            "acc": 0.9, "ece": 0.04, "mc_samples": 20,
            "entropy_correct": rng.uniform(0, 0.5, 80).tolist(),
            "entropy_wrong": rng.uniform(0.3, 2.0, 20).tolist(),
        }))
        _png(run_dir.path / "reliability.png", 1, 48)
        _png(run_dir.path / "confusion.png", 2, 40)
    return run_dir.path


def make_gan_run(root: Path, epochs: int = 14) -> Path:
    run_dir = RunDir.create(root / "gan", "gan")
    run_dir.write_config({"epochs": epochs, "dropout": 0.3, "latent_dim": 16}, task="gan")
    for e in range(1, epochs + 1):
        run_dir.log({"epoch": e, "d_loss": 1.0 / e, "g_loss": 2.0 / e, "d_real": 0.6})
        _png(run_dir.path / f"samples_epoch_{e:03d}.png", e)
    _png(run_dir.path / "samples.png", epochs)
    # droplab gan trains its feature classifier into a nested run folder; the report names
    # it but does not take its images
    clf = RunDir.create(run_dir.path / "classifier", "train")
    clf.write_config({"dataset": "digits"}, task="train")
    _png(clf.path / "learning_curves.png", 7)
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
    _png(run_dir.path / "cv_vs_rate.png", 99, 40)
    return run_dir.path


class PageParser(HTMLParser):
    """Images (src, alt), tables, and the header cells of the run tables with their class."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.tables = 0
        self.th: list[tuple[str, str]] = []
        self.links: list[str] = []
        self._in_th: str | None = None
        self._table = ""
        self._buf = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.images.append(a)
        elif tag == "table":
            self.tables += 1
            self._table = a.get("class", "")
        elif tag == "th" and self._table == "runs":  # the run tables' headers only
            self._in_th, self._buf = a.get("class", ""), ""
        elif tag in ("link", "script"):
            self.links.append(tag)
        if tag == "a" and a.get("href", "").startswith("http"):
            self.links.append(a["href"])

    def handle_data(self, data: str) -> None:
        if self._in_th is not None:
            self._buf += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "th" and self._in_th is not None:
            self.th.append((self._buf, self._in_th))
            self._in_th = None


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


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, Any]:
    root = tmp_path / "runs"
    train = [make_train_run(root, p, s, evaluation=(p == 0.25 and s == 0))
             for p in RATES for s in SEEDS]
    return {"root": root, "train": train, "gan": make_gan_run(root), "sweep": make_sweep_run(root)}


def _report(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(["report", *args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_report_of_mixed_runs_embeds_decodable_images_and_highlights_differences(
    runs: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rep" / "report.html"
    paths = [str(p) for p in runs["train"]] + [str(runs["gan"]), str(runs["sweep"])]
    rc, stdout, err = _report([*paths, "--out", str(out), "--json"], capsys)
    assert rc == 0, err
    summary = json.loads(stdout)
    assert summary["path"] == str(out) and summary["runs"] == 11
    plots = [Path(p) for p in summary["plots"]]
    names = {p.name for p in plots}
    # learning curves per task, the rate plot (3 rates x 3 seeds), the sweep, the histograms
    assert {"curves_train.png", "curves_gan.png", "metrics_vs_rate.png", "sweep_sweep.png"} <= names
    assert any(n.startswith("uncertainty_") for n in names)
    assert all(p.parent == tmp_path / "rep" / "report_files" and p.stat().st_size > 1000 for p in plots)

    page = parse(out)
    assert page.links == []  # self-contained: no scripts, stylesheets or external links
    srcs = [i["src"] for i in page.images]
    decoded = [decode_image(s) for s in srcs]
    assert all(im.width > 0 and im.height > 0 for im in decoded)
    # every plot PNG written to report_files is embedded byte for byte
    embedded = {base64.b64decode(s.split(",", 1)[1]) for s in srcs}
    assert all(p.read_bytes() in embedded for p in plots)
    # run images: evaluate's two PNGs and the GAN sequence thinned to 10 of 14 frames
    alts = [i["alt"] for i in page.images]
    assert {"reliability.png", "confusion.png", "cv_vs_rate.png", "samples.png"} <= set(alts)
    assert "learning_curves.png" not in alts and "classifier/learning_curves.png" not in alts
    assert "1 nested run folders: classifier" in out.read_text()
    gan_frames = [a for a in alts if a.startswith("samples_epoch_")]
    assert len(gan_frames) == 10 and gan_frames[0] == "samples_epoch_001.png"
    assert gan_frames[-1] == "samples_epoch_014.png"
    assert summary["images_embedded"] == 14

    # one summary and one config table per task; columns that differ between the runs of
    # a task carry class "diff", constant ones do not (a single gan/sweep run: no diffs)
    assert page.tables == 2 * 3 + 2  # + the sweep settings and the rate table
    # the sweep table: one "mean ± std" cell per metric, the best setting's row marked
    text = out.read_text()
    assert "<tr class=\"best\"><td>0.2</td><td>dropout</td>" in text  # the pick
    assert "<td>0.9 ± 0.01</td>" in text
    classes: dict[str, set[str]] = {}
    for text, cls in page.th:
        classes.setdefault(text, set()).add(cls)
    for key in ("model.dropout", "seed", "test_loss", "out", "run_dir"):  # train runs only
        assert classes[key] == {"diff"}, key
    assert classes["test_acc"] == {"diff", ""}  # differs in the train runs, one sweep run
    for key in ("dataset", "lr", "model.name", "epochs", "test_ece", "best_val_acc", "rates"):
        assert classes[key] == {""}, key


def test_differences_only_where_values_differ(
    runs: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.html"
    two = [str(runs["train"][0]), str(runs["train"][1])]  # p=0.0, seeds 0 and 1
    rc, _, err = _report([*two, "--out", str(out)], capsys)
    assert rc == 0, err
    diff = {t for t, c in parse(out).th if c == "diff"}
    # seed, out, run_dir and the numbers that depend on the seed differ; nothing else does
    assert diff == {"seed", "out", "run_dir", "test_acc"}


def test_rate_table_is_mean_and_sample_std_over_seeds(runs: dict[str, Any]) -> None:
    records = [load_run_record(p) for p in runs["train"]]
    groups = rate_groups(records)
    assert list(groups) == ["train"]  # only the seed varies besides the rate
    rows = {r["p"]: r for r in rate_table(groups)}
    assert sorted(rows) == list(RATES)
    for p in RATES:
        vals = [_test_acc(p, s) for s in SEEDS]
        assert rows[p]["n"] == 3
        assert rows[p]["test_acc_mean"] == pytest.approx(statistics.fmean(vals), abs=1e-12)
        # seeds add 0, .01, .02: sample std = 0.01 exactly
        assert rows[p]["test_acc_std"] == pytest.approx(0.01, abs=1e-9)


def test_sweep_settings_and_uncertainty_arrays_are_found() -> None:
    settings = sweep_settings({"best": 0.2, "per_setting": {"p=0.1": {"p": 0.1, "cv_mean": 0.9,
                                                                       "cv_std": 0.02}}})
    assert settings == [{"setting": "p=0.1", "p": 0.1, "cv_mean": 0.9, "cv_std": 0.02}]
    assert sweep_settings({"test_acc": 0.9, "classes": ["a", "b"]}) is None
    arrays = uncertainty_arrays({"mi": {"entropy": [0.1] * 12}, "acc": 0.5, "labels": [1] * 50})
    assert list(arrays) == ["mi.entropy"]


def test_sweep_table_marks_the_pick_else_the_best_mean() -> None:
    settings = [{"rate": 0.1, "cv": {"nll": {"mean": 0.3, "std": 0.1}}},
                {"rate": 0.3, "cv": {"nll": {"mean": 0.2, "std": 0.1}}},
                {"rate": 0.5, "cv": {"nll": {"mean": 0.4, "std": 0.1}}}]
    # no pick: NLL is lower-is-better, so 0.3 wins
    assert '<tr class="best"><td>0.3</td><td>0.2 ± 0.1</td>' in sweep_table(settings)
    picked = sweep_table(settings, pick={"rate": 0.5, "cv_score": 0.4})
    assert '<tr class="best"><td>0.5</td>' in picked and picked.count('class="best"') == 1


def test_image_sequences_of_gan_and_style_runs(tmp_path: Path) -> None:
    # gan: samples_epoch_XXX.png; stylize: step-XXXXX.png beside stylized.png
    names = ["samples_epoch_002.png", "samples_epoch_010.png", "samples_epoch_001.png",
             "step-00050.png", "step-00100.png", "stylized.png", "samples.png"]
    for i, n in enumerate(names):
        _png(tmp_path / n, i, 8)
    seqs, singles = image_sequences(sorted(tmp_path.iterdir()), tmp_path)
    assert {k: [n for n, _ in v] for k, v in seqs.items()} == {
        "samples (epoch)": [1, 2, 10], "steps": [50, 100]}
    assert sorted(p.name for p in singles) == ["samples.png", "stylized.png"]


def test_uncertainty_npz_is_split_by_correctness(tmp_path: Path) -> None:
    run_dir = make_train_run(tmp_path, 0.5, 0)
    entropy = np.linspace(0.0, 2.0, 40)
    correct = entropy < 0.5  # 10 confident correct images, 30 uncertain wrong ones
    np.savez(run_dir / "uncertainty.npz", mc_entropy=entropy, correct=correct,
             labels=np.arange(40))
    rec = load_run_record(run_dir)
    assert sorted(rec.uncertainty) == ["mc_entropy_correct", "mc_entropy_wrong"]
    assert rec.uncertainty["mc_entropy_correct"] == pytest.approx(entropy[:10].tolist())
    assert len(rec.uncertainty["mc_entropy_wrong"]) == 30
    summary = run(ReportConfig(runs=[str(run_dir)], out=str(tmp_path / "r.html")))
    assert any(Path(p).name == "uncertainty_train-p0.5-s0.png" for p in summary["plots"])


def test_thin_keeps_first_and_last() -> None:
    frames = list(range(37))
    t = thin(frames, 10)
    assert len(t) == 10 and t[0] == 0 and t[-1] == 36 and t == sorted(set(t))
    assert thin(frames[:4], 10) == frames[:4]


def test_folder_of_runs_expands_and_labels_stay_unique(tmp_path: Path) -> None:
    # a folder of run folders stands for all of them; the same run name under two parents
    # gets the parent in its label
    make_train_run(tmp_path / "runs", 0.0, 0)
    make_gan_run(tmp_path / "runs", epochs=2)
    make_gan_run(tmp_path / "other", epochs=2)
    summary = run(ReportConfig(runs=[str(tmp_path / "runs"), str(tmp_path / "other" / "gan")],
                               out=str(tmp_path / "x")))
    assert summary["runs"] == 3
    assert summary["path"] == str(tmp_path / "x.html")
    html_text = Path(summary["path"]).read_text()
    assert "runs/gan" in html_text and "other/gan" in html_text


def test_tensorboard_export_holds_the_same_scalars(runs: dict[str, Any], tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = tmp_path / "tb"
    summary = run(ReportConfig(runs=[str(runs["train"][3])], out=str(tmp_path / "r.html"),
                               tensorboard=str(tb)))
    assert summary["tensorboard"] == [str(tb / "train-p0.25-s0")]
    acc = EventAccumulator(summary["tensorboard"][0])
    acc.Reload()
    val_loss = acc.Scalars("val_loss")
    assert [e.step for e in val_loss] == [10, 20, 30]  # "step" is the global step
    assert [e.value for e in val_loss] == pytest.approx([1.1, 0.55, 1.1 / 3], rel=1e-6)
    assert acc.Scalars("summary/test_acc")[0].value == pytest.approx(_test_acc(0.25, 0), rel=1e-6)


def test_bad_input_gives_one_line_errors(
    runs: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_run = tmp_path / "plain"
    not_run.mkdir()
    (not_run / "notes.txt").write_text("x")
    cases = [
        ([str(not_run)], "is not a droplab run folder"),
        ([str(tmp_path / "missing")], "does not exist"),
        ([], "no run folders given"),
    ]
    blocker = tmp_path / "file"
    blocker.write_text("")
    cases.append(([str(runs["gan"]), "--out", str(blocker / "report.html")], "cannot create"))
    cases.append(([str(runs["gan"]), "--out", str(tmp_path)], "is a folder"))
    bad_json = make_gan_run(tmp_path / "broken", epochs=1)
    (bad_json / "summary.json").write_text("{not json")
    cases.append(([str(bad_json)], "cannot be read as JSON"))
    for args, needle in cases:
        rc, out, err = _report(args, capsys)
        assert rc == 2, (args, err)
        assert out == ""
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("droplab report: error: "), err
        assert needle in lines[0], (needle, err)


@pytest.mark.skipif("train" not in MODULES, reason="the train CLI is not registered yet")
def test_report_of_a_real_digits_training_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "train"
    rc = main(["train", "--dataset", "digits", "--epochs", "1", "--limit", "20", "--widths", "32",
               "--out", str(run_dir), "--json"])
    capsys.readouterr()
    assert rc == 0
    rec: RunRecord = load_run_record(run_dir)
    assert rec.task == "train" and rec.metrics and "test_acc" in rec.summary
    out = tmp_path / "report.html"
    rc, stdout, err = _report([str(run_dir), "--out", str(out), "--json"], capsys)
    assert rc == 0, err
    summary = json.loads(stdout)
    assert any(Path(p).name == "curves_train.png" for p in summary["plots"])
    page = parse(out)
    assert all(decode_image(i["src"]).width > 0 for i in page.images)
    assert any(t == "test_acc" for t, _ in page.th)
