"""The report in Debian's headless chromium (Playwright): sections visible, every image decoded, no
request leaves the file, no script runs; a full-page screenshot is written for a person to look at
(``TUNELOOP_REPORT_SCREENSHOT``, default /tmp/tuneloop-report.png)."""

from __future__ import annotations

import os
import shutil

import pytest
from reportdata import finished_pipeline

from tuneloop.report.html import write_pipeline_report

CHROMIUM = os.environ.get("TUNELOOP_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SECTIONS = ("summary", "stages", "curves", "reward-model", "agreement", "policies", "frontier", "samples", "next")

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - the skip below explains
    sync_playwright = None

pytestmark = pytest.mark.skipif(
    (sync_playwright is None or not (shutil.which(CHROMIUM) or os.path.exists(CHROMIUM)))
    and os.environ.get("TUNELOOP_SKIP_SYSTEM_TESTS") == "1",
    reason="chromium or playwright missing and TUNELOOP_SKIP_SYSTEM_TESTS=1")


def open_report(path, screenshot: str | None = None) -> dict:
    """Load ``path`` in chromium; return the requests it made, console errors and what the page shows."""
    url = path.resolve().as_uri()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        requests, errors, dialogs = [], [], []
        page.on("request", lambda r: requests.append(r.url))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(url)
        page.wait_for_load_state("load")
        shown = {"sections": {s: page.locator(f"section#{s}").is_visible() for s in SECTIONS},
                 "images": page.evaluate("[...document.images].map(i => [i.naturalWidth, i.src.slice(0, 22)])"),
                 "scripts": page.evaluate("document.scripts.length"), "title": page.title()}
        if screenshot:
            page.screenshot(path=screenshot, full_page=True)
        browser.close()
    return {"url": url, "requests": requests, "errors": errors, "dialogs": dialogs, **shown}


def test_report_opens_offline_in_chromium(tmp_path):
    path = write_pipeline_report(tmp_path / "report.html", finished_pipeline(tmp_path), "tuneloop demo")
    seen = open_report(path, os.environ.get("TUNELOOP_REPORT_SCREENSHOT", "/tmp/tuneloop-report.png"))
    assert all(seen["sections"].values()), seen["sections"]
    assert len(seen["images"]) >= 6
    assert all(width > 0 and src == "data:image/png;base64," for width, src in seen["images"]), seen["images"]
    outside = [u for u in seen["requests"] if u != seen["url"] and not u.startswith("data:")]
    assert outside == [], outside
    assert seen["scripts"] == 0 and seen["dialogs"] == [] and seen["title"] == "tuneloop demo"
