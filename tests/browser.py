"""Shared helpers for the tests that drive Debian's Chromium through Playwright.

Playwright's own browser download (``playwright install``) cannot run here, so the tests
launch the system ``chromium`` with the flags a closed network needs.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

requires_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian chromium (/usr/bin/chromium)"
)


@dataclass
class PageLog:
    """What the page reported: console/page errors and every URL it requested."""

    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


@contextmanager
def chromium_page(width: int, height: int) -> Iterator[tuple[Any, PageLog]]:
    """A fresh headless page of the given viewport and the log of what it reports."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs pip install playwright")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            log = PageLog()
            page.on("console", lambda m: log.errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: log.errors.append(str(e)))
            page.on("request", lambda r: log.requests.append(r.url))
            yield page, log
        finally:
            browser.close()
