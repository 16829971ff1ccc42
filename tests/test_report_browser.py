"""The report opened in a real headless Chromium (Debian ``chromium``, driven by Playwright).

Checks what a person would see: the page loads with no console errors, every image
decodes (``naturalWidth > 0``), no request leaves the page, and a screenshot is not blank.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from droplab.cli import main
from test_report import make_gan_run, make_sweep_run, make_train_run

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian chromium (/usr/bin/chromium)")


def test_report_renders_in_chromium(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs pip install playwright")
    root = tmp_path / "runs"
    paths = [make_train_run(root, p, s, evaluation=(p == 0.5 and s == 0))
             for p in (0.0, 0.5) for s in (0, 1)]
    paths += [make_gan_run(root, epochs=4), make_sweep_run(root)]
    out = tmp_path / "report.html"
    assert main(["report", *map(str, paths), "--out", str(out)]) == 0, capsys.readouterr().err
    n_img = out.read_text().count("<img ")
    assert n_img >= 8

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            requests: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(out.resolve().as_uri(), wait_until="load")
            widths = page.evaluate(
                "Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
            shot = page.screenshot(full_page=True)
            height = page.evaluate("document.documentElement.scrollHeight")
        finally:
            browser.close()

    assert errors == []
    # only the page itself is fetched; data: URIs are not requests to anywhere else
    assert all(u.startswith(("file://", "data:")) for u in requests), requests
    assert len(widths) == n_img and min(widths) > 0, widths
    img = np.asarray(Image.open(io.BytesIO(shot)).convert("L"), dtype=np.float64)
    assert img.shape[0] == height and img.shape[1] == 1280
    # a blank page has variance 0; text, plots and the dark header give far more than 100
    assert img.var() > 100, img.var()
