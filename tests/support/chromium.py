"""Headless Chromium for the tests that open a page (the replay tool's HTML timeline).

It drives the distribution's own browser through its own chromedriver
(Debian's `chromium` and `chromium-driver`, which `scripts/test` installs), so
selenium-manager never looks for, or downloads, a browser or a driver.
Imports no pytest: a test decides whether a missing browser skips or fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def available() -> str | None:
    """None when headless Chromium can run here, otherwise a one-line reason."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if not missing:
        return None
    return (f"headless Chromium needs {' and '.join(missing)} "
            "(scripts/test installs the chromium and chromium-driver packages)")


@contextmanager
def headless(width: int = 1400, height: int = 900) -> Iterator[WebDriver]:
    """A headless Chromium for the block, quit however the block ends."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", f"--window-size={width},{height}",
                     "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    browser = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield browser
    finally:
        browser.quit()
