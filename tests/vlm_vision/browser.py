"""Headless Chromium for the page tests: Debian's `chromium` driven by Playwright (never its own browser download).

`.ci/run` installs the `chromium` package; the tests fail (not skip) without it. Screenshots go to
`artifacts()`: $VLM_VISION_ARTIFACTS when set, else a folder under the test session's temporary
folder; its path is printed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = os.environ.get("VLM_VISION_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


def artifacts(base: Path) -> Path:
    """The screenshot folder (printed, so that a CI log says where to look)."""
    folder = Path(os.environ.get("VLM_VISION_ARTIFACTS") or base / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"screenshots: {folder}")
    return folder


@contextmanager
def browser_page(width: int = 1280, height: int = 1000) -> Iterator[tuple[Any, list[str]]]:
    """(page, console errors): a fresh page of headless Chromium; every console error and page error is collected."""
    from playwright.sync_api import sync_playwright  # lazy: the dev extra's browser driver

    assert Path(CHROMIUM).is_file() or shutil.which(CHROMIUM), (
        f"no Chromium at {CHROMIUM}: install Debian's `chromium` package (apt-get install chromium), as .ci/run does")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            yield page, errors
        finally:
            browser.close()
