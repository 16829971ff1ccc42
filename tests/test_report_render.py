"""The page (``droplab.report.render`` + ``templates/``): values from run folders reach it
as text only, the nav and the body come from one list of sections, and the templates
ship with the package."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from droplab.report import ReportConfig, run
from droplab.runs import RunDir
from report_runs import make_gan_run, make_train_run, parse, png

HOSTILE = '"><script>alert(1)</script><img src=x onerror=alert(2)>'
REPO = Path(__file__).resolve().parents[1]


def test_values_from_run_folders_are_text_never_markup(tmp_path: Path) -> None:
    run_dir = RunDir.create(tmp_path / "<i onmouseover=alert(3)>run", "train")
    run_dir.write_config({"dropout": 0.1, "note": HOSTILE, HOSTILE: 1}, task=HOSTILE)
    run_dir.write_summary({"test_acc": 0.5, "comment": HOSTILE})
    run_dir.log({"epoch": 1, HOSTILE: 0.1})
    png(run_dir.path / "x.png", 0)
    (run_dir.path / "evaluation.json").write_text(json.dumps({"acc": 0.5, "why": HOSTILE}))
    (run_dir.path / "broken.png").write_text(HOSTILE)  # its Skipped row names it
    out = tmp_path / "r.html"
    summary = run(ReportConfig(runs=[str(run_dir.path)], out=str(out), title=HOSTILE + "</title>"))
    page = parse(out)
    # no element came from the data: only the template's own tags are on the page
    assert "script" not in page.tags and "i" not in page.tags
    assert all(i["src"].startswith("data:image/png;base64,") for i in page.images)
    assert not any(i.get("onerror") for i in page.images)
    text = "".join(page.text)
    assert text.count(HOSTILE) >= 5  # title, header, config cell, summary cell, evaluation
    assert "<i onmouseover=alert(3)>run" in text
    assert len(summary["skipped"]) == 1 and page.skipped[0][1] == "broken image"


def test_nav_and_sections_come_from_one_list(tmp_path: Path) -> None:
    a = make_train_run(tmp_path / "runs", 0.1, 0, evaluation=True)  # own section (evaluation)
    make_train_run(tmp_path / "runs", 0.3, 0)
    make_gan_run(tmp_path / "runs", epochs=3)  # own section (a timeline)
    only_images = RunDir.create(tmp_path / "runs" / "style", "style")
    only_images.write_config({"style_weight": 1e5}, task="style")
    png(only_images.path / "stylized.png", 1)  # nothing but an image: a card
    (tmp_path / "runs" / "empty").mkdir()
    out = tmp_path / "r.html"
    run(ReportConfig(runs=[str(tmp_path / "runs")], out=str(out)))
    page = parse(out)
    assert page.nav == ["#" + s for s in page.sections]
    assert page.sections == ["runs", "rates", "run-0-gan", f"run-2-{a.name.replace('.', '-')}",
                             "curves", "images", "skipped"]
    html = out.read_text()
    assert '<div class="card" id="run-' in html and html.count('<div class="card"') == 1
    # the header points at the Skipped section (the empty folder, and style's missing summary)
    assert '<a href="#skipped">2 problems skipped</a>' in html
    assert '<meta name="generator" content="droplab report">' in html


@pytest.mark.slow
def test_the_templates_ship_in_the_wheel(tmp_path: Path) -> None:
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    shutil.copytree(REPO / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tmp_path / name)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", str(tmp_path / "dist")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("droplab-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"droplab/report/templates/{p.name}"
               for p in (REPO / "src/droplab/report/templates").iterdir()}
    assert shipped and shipped <= names, shipped - names
