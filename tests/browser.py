"""A headless Chromium for the tests that look at a page (selenium and chromium-driver, installed by
scripts/setup.sh): the options every such test needs, and ``quit()`` at the end whatever happens."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def headless_chromium(window: tuple[int, int], *extra: str) -> Iterator[Any]:
    """A selenium driver for a headless Chromium with a ``window`` (width, height) sized window;
    ``extra`` are more command-line switches (e.g. ``--force-prefers-reduced-motion``)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={window[0]},{window[1]}", "--no-first-run", "--disable-extensions", *extra):
        opts.add_argument(arg)
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"),
                              options=opts)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
