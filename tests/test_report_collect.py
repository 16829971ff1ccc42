"""Reading run folders (``droplab.report.collect``): damaged folders do not stop a report.

One folder tree holds every kind of damage issue 14 names — unreadable JSON, metric lines
cut short, empty folders, broken images, missing files — beside good runs. The report
must render every readable run, list each problem exactly once (page, stderr, --json)
and exit 0. Hostile files (a FIFO, a pickle payload in an .npz, JSON nested 10,000 deep,
a zip bomb) are refused without hanging, running code or exhausting memory.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

import droplab.report.collect as C
from droplab.errors import DataNotFound
from droplab.report import ReportConfig, expand_run_paths, load_run_record, read_runs, run
from droplab.report.collect import read_json_object, read_metrics
from droplab.report.skipped import Skipped
from droplab.runs import RunDir
from report_runs import make_gan_run, make_train_run, parse, png, report_cli

MARKER = "droplab-report-pickle-marker"


class _Payload:
    """Unpickling this would create a marker file (it must never happen)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _train(root: Path, name: str, p: float = 0.1) -> Path:
    return make_train_run(root, p, 0).rename(root / name)


def broken_tree(root: Path) -> dict[str, str]:
    """Good runs beside every kind of damage; returns {path: kind} of the problems."""
    problems: dict[str, str] = {}
    make_train_run(root, 0.0, 0)  # good
    make_gan_run(root, epochs=3)  # good, with a nested run folder
    d = _train(root, "bad-summary")
    (d / "summary.json").write_text("{not json")
    problems[str(d / "summary.json")] = "unreadable JSON"
    d = _train(root, "bad-config")
    (d / "config.json").write_text("[1, 2")
    problems[str(d / "config.json")] = "unreadable JSON"
    d = _train(root, "list-summary")
    (d / "summary.json").write_text("[1, 2]")
    problems[str(d / "summary.json")] = "unreadable JSON"
    d = _train(root, "cut-metrics")
    with open(d / "metrics.jsonl", "ab") as fh:  # 3 good lines, then 3 bad ones
        fh.write(b'[1]\n\xff\xfe not text\n{"epoch": 4, "train_lo')
    problems[str(d / "metrics.jsonl")] = "metrics lines"
    d = _train(root, "no-summary")
    (d / "summary.json").unlink()
    problems[str(d / "summary.json")] = "missing file"
    (root / "empty").mkdir()
    problems[str(root / "empty")] = "empty folder"
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("x")
    problems[str(root / "notes")] = "not a run folder"
    d = _train(root, "broken-images")
    png(d / "ok.png", 3)
    good = (d / "ok.png").read_bytes()
    (d / "truncated.png").write_bytes(good[: len(good) // 2])
    (d / "text.png").write_text("hello")
    (d / "gone.png").symlink_to(d / "nowhere.png")
    problems |= {str(d / "truncated.png"): "broken image", str(d / "text.png"): "broken image",
                 str(d / "gone.png"): "missing file"}
    d = _train(root, "bad-npz")
    (d / "uncertainty.npz").write_bytes(b"PK\x03\x04 not a zip")
    problems[str(d / "uncertainty.npz")] = "unreadable file"
    d = _train(root, "bad-eval")
    (d / "evaluation.json").write_text("{")
    problems[str(d / "evaluation.json")] = "unreadable JSON"
    d = _train(root, "fifo-summary")
    (d / "summary.json").unlink()
    os.mkfifo(d / "summary.json")  # reading it would block forever
    problems[str(d / "summary.json")] = "unreadable file"
    d = RunDir.create(root / "nothing", "train")
    d.config_path.write_text("}")
    problems |= {str(d.config_path): "unreadable JSON", str(d.summary_path): "missing file",
                 str(d.path): "run left out"}
    return problems


GOOD_RUNS = {"train-p0.0-s0", "gan", "bad-summary", "bad-config", "list-summary", "cut-metrics",
             "no-summary", "broken-images", "bad-npz", "bad-eval", "fifo-summary"}


def test_every_kind_of_damage_is_listed_once_and_the_rest_renders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "runs"
    root.mkdir()
    problems = broken_tree(root)
    out = tmp_path / "report.html"
    rc, stdout, err = report_cli([str(root), "--out", str(out), "--json"], capsys)
    assert rc == 0, err
    summary = json.loads(stdout)  # stdout holds exactly one JSON object
    # --json: each problem once, with its kind
    assert {s["path"]: s["kind"] for s in summary["skipped"]} == problems
    assert len(summary["skipped"]) == len(problems)
    # stderr: one line per problem, each once (there are fewer than the 20 printed)
    lines = err.strip().splitlines()
    assert len(lines) == len(problems)
    for path in problems:
        assert sum(line.startswith(f"droplab report: skipped: {path} ") for line in lines) == 1, path
    # the page: a Skipped section listing the same problems, reachable from the nav
    page = parse(out)
    assert "skipped" in page.sections and "#skipped" in page.nav
    assert sorted(r[0] for r in page.skipped) == sorted(problems)
    assert {r[0]: r[1] for r in page.skipped} == problems
    # every readable run is in the report (only "nothing" is left out)
    assert {Path(p).name for p in summary["run_dirs"]} == GOOD_RUNS
    # the counted metrics file still contributes its three good epochs
    rec = load_run_record(root / "cut-metrics")
    assert [r["epoch"] for r in rec.metrics] == [1, 2, 3]
    assert "has 3 of 6 lines that are not JSON objects (first at line 4)" in rec.skipped[0].reason
    # the good image of the damaged folder is shown, the broken ones are not
    alts = {i["alt"] for i in page.images}
    assert "ok.png" in alts and not alts & {"truncated.png", "text.png", "gone.png"}
    # a run whose config is unreadable still shows its summary (its task comes from there)
    assert load_run_record(root / "bad-config").task == "train"


def test_a_tree_where_nothing_is_readable_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    RunDir.create(tmp_path / "nothing", "train").config_path.write_text("}")
    with pytest.raises(DataNotFound, match=r"^nothing to report: .*empty is an empty folder .*"
                                           r"\(and 3 more problems\)$"):
        read_runs([tmp_path])


def test_metric_lines_are_counted_per_file(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    good = [json.dumps({"epoch": i, "loss": 1 / i}) for i in range(1, 6)]
    lines = [good[0], "", good[1], "NaN", good[2], '"text"', "{", good[3], "   ", good[4], "{\"a\":"]
    path.write_text("\n".join(lines))
    skipped: list[Skipped] = []
    rows = read_metrics(path, skipped)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5]
    # blank lines are not records; NaN, a string, and two cut lines are 4 skipped of 9
    assert len(skipped) == 1 and skipped[0].kind == "metrics lines"
    assert "has 4 of 9 lines" in skipped[0].reason and "first at line 4" in skipped[0].reason
    # a clean file says nothing
    path.write_text("\n".join(good) + "\n")
    skipped.clear()
    assert len(read_metrics(path, skipped)) == 5 and skipped == []


def test_hostile_json_is_refused_without_recursing_or_filling_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text('{"a": ' * 10_000 + "1" + "}" * 10_000)
    skipped: list[Skipped] = []
    assert read_json_object(deep, skipped) is None
    assert "nested" in skipped[0].reason
    # just inside the depth cap is fine
    ok = tmp_path / "ok.json"
    ok.write_text('{"a": ' * (C.MAX_JSON_DEPTH - 1) + "1" + "}" * (C.MAX_JSON_DEPTH - 1))
    assert read_json_object(ok, skipped) is not None and len(skipped) == 1
    monkeypatch.setattr(C, "MAX_JSON_BYTES", 100)
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"x": "y" * 200}))
    assert read_json_object(big, skipped) is None and "cap" in skipped[-1].reason
    not_utf8 = tmp_path / "latin1.json"
    not_utf8.write_bytes(b'{"name": "caf\xe9"}')
    assert read_json_object(not_utf8, skipped) is None and "UTF-8" in skipped[-1].reason


def test_npz_pickle_payload_never_runs_and_zip_bombs_are_capped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = make_train_run(tmp_path, 0.5, 0)
    marker = tmp_path / MARKER
    payload = np.empty(10, dtype=object)
    payload[:] = [_Payload(marker)] * 10
    np.savez(run_dir / "evil.npz", mc_entropy=payload)  # object arrays are pickled
    rec = load_run_record(run_dir)
    assert not marker.exists()
    assert [(Path(s.path).name, s.kind) for s in rec.skipped] == [("evil.npz", "unreadable file")]
    assert rec.uncertainty == {}
    # uncompressed size is checked before any array is unpacked
    (run_dir / "evil.npz").unlink()
    with zipfile.ZipFile(run_dir / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("mc_entropy.npy", b"\0" * 4096)
    monkeypatch.setattr(C, "MAX_NPZ_BYTES", 1024)
    rec = load_run_record(run_dir)
    assert len(rec.skipped) == 1 and "over the" in rec.skipped[0].reason


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


def test_expand_is_strict_without_a_list_and_lenient_with_one(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    good = make_train_run(root, 0.0, 0)
    (root / "empty").mkdir()
    (root / ".hidden").mkdir()  # hidden folders are not run data: never mentioned
    with pytest.raises(DataNotFound, match="empty is an empty folder"):
        expand_run_paths([root])
    skipped: list[Skipped] = []
    # the same run named twice (directly and through its parent) is read once
    assert expand_run_paths([root, good], skipped) == [good]
    assert [(Path(s.path).name, s.kind) for s in skipped] == [("empty", "empty folder")]
