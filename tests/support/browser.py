"""Headless Chromium from Debian's packages (chromium, chromium-driver), driven by Selenium.

Nothing is downloaded: the browser and its driver must be installed; when they are
not, the tests that need them fail (never skip) saying which packages to install.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("REWIND_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("REWIND_CHROMEDRIVER", "/usr/bin/chromedriver")
PACKAGES = "chromium chromium-driver"
WIDTH, HEIGHT = 1366, 768  # a laptop screen


def chromium(width: int = WIDTH, height: int = HEIGHT):
    """A headless Chromium window of width x height with its console log kept.

    Fails the test when Debian's chromium or chromium-driver is missing.
    """
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).is_file()]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: the browser tests need Debian's headless Chromium; install it "
                    f"with `sudo apt-get install {PACKAGES}` (or set REWIND_CHROMIUM and REWIND_CHROMEDRIVER)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-extensions", "--no-first-run", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_window_size(width, height)
    return driver


def grant_clipboard(driver, origin: str) -> None:
    """Let pages of `origin` read and write the clipboard without asking (as a user's click on "allow" would)."""
    driver.execute_cdp_cmd("Browser.grantPermissions", {
        "origin": origin, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})


def read_clipboard(driver) -> str:
    """The clipboard's text, read by the page itself (navigator.clipboard.readText)."""
    return driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "navigator.clipboard.readText().then(done, (err) => done('clipboard error: ' + err));")


def console_errors(driver) -> list[dict]:
    """The console entries at SEVERE level since the last call (reading the log empties it)."""
    return [entry for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"]


def full_page_png(driver, path: Path) -> None:
    """A screenshot of the whole page (not only the window), at the window's width."""
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))
