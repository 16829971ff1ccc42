"""The report opened in a real headless Chromium (Debian ``chromium``, driven by Playwright).

Checks what a person would see: the page loads with no console errors, every image
decodes (``naturalWidth > 0``), no request leaves the page, and a screenshot is not blank.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from browser import chromium_page, requires_chromium
from droplab.cli import main
from report_runs import make_gan_run, make_sweep_run, make_train_run

pytestmark = requires_chromium


def test_report_renders_in_chromium(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "runs"
    paths = [make_train_run(root, p, s, evaluation=(p == 0.5 and s == 0))
             for p in (0.0, 0.5) for s in (0, 1)]
    paths += [make_gan_run(root, epochs=4), make_sweep_run(root)]
    out = tmp_path / "report.html"
    assert main(["report", *map(str, paths), "--out", str(out)]) == 0, capsys.readouterr().err
    n_img = out.read_text().count("<img ")
    assert n_img >= 8

    with chromium_page(1280, 900) as (page, log):
        page.goto(out.resolve().as_uri(), wait_until="load")
        widths = page.evaluate(
            "Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
        shot = page.screenshot(full_page=True)
        height = page.evaluate("document.documentElement.scrollHeight")

    assert log.errors == []
    # only the page itself is fetched; data: URIs are not requests to anywhere else
    assert all(u.startswith(("file://", "data:")) for u in log.requests), log.requests
    assert len(widths) == n_img and min(widths) > 0, widths
    img = np.asarray(Image.open(io.BytesIO(shot)).convert("L"), dtype=np.float64)
    assert img.shape[0] == height and img.shape[1] == 1280
    # a blank page has variance 0; text, plots and the dark header give far more than 100
    assert img.var() > 100, img.var()
