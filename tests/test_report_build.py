"""``droplab report`` end to end (``droplab.report.build``): the page, the summary, and
every way ``--out`` / ``--tensorboard`` can be wrong (one line, exit 2, nothing changed).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from droplab.cli import MODULES, main
from droplab.report import ReportConfig, RunRecord, load_run_record, run
from droplab.runs import RunDir
from report_runs import (
    RATES,
    SEEDS,
    decode_image,
    make_gan_run,
    make_sweep_run,
    make_train_run,
    parse,
    png,
    report_cli,
    snapshot,
)


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, Any]:
    root = tmp_path / "runs"
    train = [make_train_run(root, p, s, evaluation=(p == 0.25 and s == 0))
             for p in RATES for s in SEEDS]
    return {"root": root, "train": train, "gan": make_gan_run(root), "sweep": make_sweep_run(root)}


def test_report_of_mixed_runs_embeds_decodable_images_and_highlights_differences(
    runs: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "rep" / "report.html"
    paths = [str(p) for p in runs["train"]] + [str(runs["gan"]), str(runs["sweep"])]
    rc, stdout, err = report_cli([*paths, "--out", str(out), "--json"], capsys)
    assert rc == 0, err
    assert err == ""  # nothing was skipped, so nothing is said
    summary = json.loads(stdout)
    assert summary["path"] == str(out) and summary["runs"] == 11 and summary["skipped"] == []
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
    # the nav lists every section in page order; no Skipped section when nothing was skipped
    assert page.nav == ["#" + s for s in page.sections] and "skipped" not in page.sections
    assert page.sections[:2] == ["runs", "rates"] and "curves" in page.sections


def test_differences_only_where_values_differ(
    runs: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.html"
    two = [str(runs["train"][0]), str(runs["train"][1])]  # p=0.0, seeds 0 and 1
    rc, _, err = report_cli([*two, "--out", str(out)], capsys)
    assert rc == 0, err
    diff = {t for t, c in parse(out).th if c == "diff"}
    # seed, out, run_dir and the numbers that depend on the seed differ; nothing else does
    assert diff == {"seed", "out", "run_dir", "test_acc"}


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


def test_a_report_may_replace_its_own_page_and_never_reads_its_own_plots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "runs"
    gan = make_gan_run(root, epochs=3)
    out = root / "index.html"  # the page and index_files/ inside the folder of runs
    first = json.loads(report_cli([str(root), "--out", str(out), "--json"], capsys)[1])
    rc, stdout, err = report_cli([str(root), "--out", str(out), "--json"], capsys)
    assert rc == 0 and err == ""
    second = json.loads(stdout)
    # index_files/ is neither a skipped folder nor a run; the page was rewritten in place
    assert second["skipped"] == [] and second["runs"] == first["runs"] == 1
    assert second["plots"] == first["plots"] == [str(root / "index_files" / "curves_gan.png")]
    # a page inside a run folder: its plots are not taken for the run's images
    inner = gan / "report.html"
    assert report_cli([str(gan), "--out", str(inner)], capsys)[0] == 0
    rc, stdout, _ = report_cli([str(gan), "--out", str(inner), "--json"], capsys)
    assert rc == 0 and json.loads(stdout)["images_embedded"] == 3 + 1  # 3 frames + samples.png
    # a page written by the previous release (no generator tag) is also ours to replace
    old = tmp_path / "old.html"
    old.write_text("<html><body><header><h1>x</h1><p>1 run · generated 2026-11-30 10:00 "
                   "by droplab report</p></header></body></html>")
    assert report_cli([str(gan), "--out", str(old)], capsys)[0] == 0
    assert '<meta name="generator" content="droplab report">' in old.read_text()


def _sys_not_creatable() -> bool:
    try:
        os.mkdir("/sys/droplab-report-probe")
    except OSError:
        return Path("/sys").is_dir()
    os.rmdir("/sys/droplab-report-probe")
    return False


def _case_out_non_report(t: Path) -> list[str]:
    (t / "notes.html").write_text("<html><body>my notes</body></html>")
    return ["--out", str(t / "notes.html")]


def _case_out_link(t: Path) -> list[str]:
    (t / "secret.txt").write_text("keep me")
    (t / "link.html").symlink_to(t / "secret.txt")
    return ["--out", str(t / "link.html")]


def _case_files_foreign(t: Path) -> list[str]:
    (t / "r_files").mkdir()
    png(t / "r_files" / "holiday.png", 5)
    return ["--out", str(t / "r.html")]


def _case_files_is_file(t: Path) -> list[str]:
    (t / "r_files").write_text("not a folder")
    return ["--out", str(t / "r.html")]


def _case_files_link(t: Path) -> list[str]:
    (t / "elsewhere").mkdir()
    (t / "r_files").symlink_to(t / "elsewhere")
    return ["--out", str(t / "r.html")]


def _case_out_under_file(t: Path) -> list[str]:
    (t / "blocker").write_text("")
    return ["--out", str(t / "blocker" / "report.html")]


def _case_out_deep_under_file(t: Path) -> list[str]:
    (t / "blocker").write_text("")
    return ["--out", str(t / "blocker" / "a" / "b" / "report.html")]


def _case_out_folder(t: Path) -> list[str]:
    (t / "dir").mkdir()
    return ["--out", str(t / "dir")]


def _case_out_folder_after_suffix(t: Path) -> list[str]:
    (t / "page.html").mkdir()
    return ["--out", str(t / "page")]


def _case_tb_file(t: Path) -> list[str]:
    (t / "tb").write_text("")
    return ["--out", str(t / "r.html"), "--tensorboard", str(t / "tb")]


def _case_tb_under_file(t: Path) -> list[str]:
    (t / "tb").write_text("")
    return ["--out", str(t / "r.html"), "--tensorboard", str(t / "tb" / "logs")]


#: (name, setup → extra args, needle in the error, run folders to pass)
HOSTILE: list[tuple[str, Callable[[Path], list[str]], str]] = [
    ("out is an existing non-report file", _case_out_non_report, "exists and is not a droplab report"),
    ("out is a link to a non-report file", _case_out_link, "exists and is not a droplab report"),
    ("plot folder holds someone else's files", _case_files_foreign, "already holds files"),
    ("plot folder is a file", _case_files_is_file, "is not a folder"),
    ("plot folder is a link elsewhere", _case_files_link, "is not a folder"),
    ("out under a file", _case_out_under_file, "cannot create"),
    ("out deep under a file", _case_out_deep_under_file, "cannot create"),
    ("out is a folder", _case_out_folder, "is a folder"),
    ("out.html is a folder", _case_out_folder_after_suffix, "is a folder"),
    ("tensorboard is a file", _case_tb_file, "is a file"),
    ("tensorboard under a file", _case_tb_under_file, "cannot create"),
]


@pytest.mark.parametrize(("setup", "needle"), [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
def test_bad_output_paths_are_one_line_and_change_nothing(
    setup: Callable[[Path], list[str]], needle: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_dir = make_gan_run(tmp_path / "runs", epochs=2)
    work = tmp_path / "work"
    work.mkdir()
    args = setup(work)
    before = snapshot(tmp_path)
    rc, out, err = report_cli([str(run_dir), *args], capsys)
    assert rc == 2, err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("droplab report: error: "), err
    assert needle in lines[0], (needle, err)
    assert snapshot(tmp_path) == before  # nothing written, nothing overwritten


@pytest.mark.skipif(not _sys_not_creatable(), reason="needs a /sys where folders cannot be made")
def test_out_that_cannot_be_created_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = make_gan_run(tmp_path, epochs=2)
    rc, out, err = report_cli([str(run_dir), "--out", "/sys/droplab-report/r.html"], capsys)
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "cannot create /sys/droplab-report" in err


def _bad_runs(t: Path) -> dict[str, list[str]]:
    (t / "plain").mkdir()
    (t / "plain" / "notes.txt").write_text("x")
    (t / "empty").mkdir()
    (t / "file.txt").write_text("x")
    RunDir.create(t / "dead", "train").config_path.write_text("{")  # not JSON, and nothing else
    return {"plain": [str(t / "plain")], "missing": [str(t / "missing")], "none": [],
            "empty": [str(t / "empty")], "file": [str(t / "file.txt")], "dead": [str(t / "dead")],
            "dead+missing": [str(t / "dead"), str(t / "missing")]}


BAD_RUNS = [
    ("plain", "is not a droplab run folder"),
    ("missing", "does not exist"),
    ("none", "no run folders given"),
    ("empty", "is an empty folder"),
    ("file", "is a file, not a run folder"),
    ("dead", "config.json cannot be read as JSON"),
    ("dead+missing", "(and 3 more problems)"),
]


@pytest.mark.parametrize(("case", "needle"), BAD_RUNS, ids=[c for c, _ in BAD_RUNS])
def test_nothing_readable_is_one_line_and_writes_nothing(
    case: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _bad_runs(tmp_path)[case]
    before = snapshot(tmp_path)
    rc, stdout, err = report_cli([*args, "--out", str(tmp_path / "r.html")], capsys)
    assert rc == 2, err
    assert stdout == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("droplab report: error: "), err
    assert needle in lines[0], (needle, err)
    assert ("nothing to report" in lines[0]) == (case != "none")
    assert snapshot(tmp_path) == before


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
    assert rec.task == "train" and rec.metrics and "test_acc" in rec.summary and rec.skipped == []
    out = tmp_path / "report.html"
    rc, stdout, err = report_cli([str(run_dir), "--out", str(out), "--json"], capsys)
    assert rc == 0, err
    summary = json.loads(stdout)
    assert any(Path(p).name == "curves_train.png" for p in summary["plots"])
    page = parse(out)
    assert all(decode_image(i["src"]).width > 0 for i in page.images)
    assert any(t == "test_acc" for t, _ in page.th)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Any:
    """A 96 KiB tmpfs (needs the right to mount; skipped without it)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_a_full_disk_is_one_line_and_keeps_the_previous_page(
    tiny_disk: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = [make_train_run(tmp_path / "runs", p, 0, evaluation=True) for p in (0.1, 0.3)]
    previous = tiny_disk / "reports" / "r.html"
    previous.parent.mkdir()
    previous.write_text('<html><head><meta name="generator" content="droplab report"></head>'
                        "<body>the earlier report</body></html>")
    before = snapshot(tiny_disk)
    # the new page and its plots (well over 96 KiB) cannot fit
    rc, out, err = report_cli([*map(str, runs), "--out", str(previous)], capsys)
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "No space left on device" in lines[0], err
    assert snapshot(tiny_disk) == before  # earlier page intact; no plots, temp files or folders
    # the same into a new folder on the full disk leaves no folder behind
    rc, _, err = report_cli([*map(str, runs), "--out", str(tiny_disk / "new" / "deep" / "r.html")],
                            capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert snapshot(tiny_disk) == before


def test_help_comes_from_the_config_and_usage_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # argparse wraps help lines (also at hyphens)
    with pytest.raises(SystemExit) as exc:
        main(["report", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(ReportConfig):  # every option's help text, once each
        help_text = " ".join(f.metadata["droplab.option"].help.split())
        assert text.count(help_text) == 1, f.name
    assert "(default report.html)" in text
    rc, out, err = report_cli(["--bogus"], capsys)
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "unrecognized arguments: --bogus" in err
