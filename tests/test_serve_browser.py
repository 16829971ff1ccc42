"""The ``droplab serve`` page in a real headless Chromium (Debian ``chromium`` via Playwright).

A person's path: open ``/``, choose a file, press Classify and see the label, probability
bars and uncertainty; press Stylize and see the image; upload a text file and see the
server's one-line error. No request leaves the server's origin and the console stays clean.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from browser import chromium_page, requires_chromium
from droplab.serve import BackgroundServer, ServeConfig, create_app
from serve_helpers import make_runs

pytestmark = requires_chromium


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_runs(tmp_path_factory)


def wait_until(page, expression: str, timeout: float = 30.0) -> None:
    """Poll ``expression`` with ``page.evaluate`` (Playwright's ``wait_for_function`` uses
    ``eval``, which the page's Content-Security-Policy rightly forbids)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {expression}")
        time.sleep(0.05)


def test_page_classifies_and_stylizes_in_chromium(runs: dict[str, Path], tmp_path: Path
                                                  ) -> None:
    digit = tmp_path / "digit.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 48), dtype=np.uint8)).save(digit)
    text = tmp_path / "notes.png"
    text.write_text("not an image\n")
    cfg = ServeConfig(runs=[str(runs["digits"]), str(runs["style"])], mc=8, style_size=64,
                      device="cpu")
    with BackgroundServer(create_app(cfg)) as url:
        expected = httpx.post(f"{url}/v1/classify",
                              files={"file": ("digit.png", digit.read_bytes())}).json()
        with chromium_page(1100, 800) as (page, log):
            page.goto(url + "/", wait_until="load")
            wait_until(page, "document.getElementById('cmodel').options.length > 0")
            assert "digits (classify)" in page.inner_text("#models")

            page.set_input_files("#file", str(digit))
            wait_until(page, "document.getElementById('preview').naturalWidth > 0")
            page.click("#classify")
            page.wait_for_selector("#result:not(.hidden)")
            label = page.inner_text("#label")
            n_bars = page.locator("#bars .bar").count()
            widths = page.eval_on_selector_all(
                "#bars .fill", "els => els.map(e => parseFloat(e.style.width))")
            entropy = page.inner_text("#entropy")
            mi = page.inner_text("#mi")

            page.click("#stylize")
            wait_until(page, "document.getElementById('styled').naturalWidth > 0")
            styled_w = page.evaluate("document.getElementById('styled').naturalWidth")

            page.set_input_files("#file", str(text))
            page.click("#classify")
            page.wait_for_selector("#error", state="visible")
            error_text = page.inner_text("#error")
            shot = page.screenshot(full_page=True)

    # the page shows what the API answers (same seed 0 → same MC masks)
    assert label == expected["label"]
    assert n_bars == 5
    top = [100 * t["p"] for t in expected["top"]]
    assert np.allclose(widths, np.round(top, 1), atol=0.051), (widths, top)
    assert widths == sorted(widths, reverse=True)
    assert entropy == f"{expected['entropy']:.4f} nats"
    assert mi == f"{expected['mutual_information']:.4f} nats"
    assert styled_w == 48  # 48×48 upload, under --style-size 64: stylised at its own size
    assert "not an image" in error_text
    # a failed request reported by the browser console is the 415 we asked for, nothing else
    assert all("415" in e for e in log.errors), log.errors
    assert all(u.startswith((url, "blob:", "data:")) for u in log.requests), log.requests
    img = np.asarray(Image.open(io.BytesIO(shot)).convert("L"), dtype=np.float64)
    assert img.var() > 100  # not blank: header, text, bars, images
