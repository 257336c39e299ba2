"""A real headless Chromium (Debian's `chromium` + `chromium-driver`) driven by selenium.

Used by tests/test_ui_browser.py. Nothing is downloaded: selenium is pointed at the
system browser and driver. The flags keep a root, offline, sandbox-less machine
quiet (no background networking, no component updates, a fresh profile per run).
"""

from __future__ import annotations

import base64
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
    "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-extensions", "--disable-default-apps",
    "--hide-scrollbars", "--force-device-scale-factor=1", "--lang=en-US",
)


def _binary(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
        if found:
            return found
    return None


class Browser:
    """One headless Chromium session; read its console with `console_errors()`."""

    def __init__(self, width: int = 1280, height: int = 900) -> None:
        try:
            from selenium import webdriver
            from selenium.webdriver.chrome.service import Service
        except ImportError:
            pytest.fail("selenium is not installed (pip install -e '.[test]')", pytrace=False)
        chromium, driver = _binary("chromium", "chromium-browser"), _binary("chromedriver")
        if chromium is None or driver is None:
            pytest.fail("the browser tests need Debian's chromium and chromium-driver "
                        "(apt-get install chromium chromium-driver; .ci/run installs them)", pytrace=False)
        self.profile = tempfile.mkdtemp(prefix="magnet-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={self.profile}")
        options.add_argument(f"--window-size={width},{height}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.width, self.height = width, height
        self.driver = webdriver.Chrome(service=Service(executable_path=driver), options=options)
        self.driver.set_page_load_timeout(30)

    def open(self, url: str, timeout: float = 30.0) -> str:
        """Loads `url` and waits until the page says it is drawn; returns its data-state."""
        self.driver.get(url)
        return self.wait_drawn(timeout)

    def wait_drawn(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            state = self.js("return document.body ? document.body.dataset.state : null")
            if state in ("ready", "error"):
                return state
            time.sleep(0.05)
        raise AssertionError(f"page {self.driver.current_url} never finished drawing (state {state!r})")

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def console(self) -> list[dict[str, Any]]:
        """Browser log entries since the last call (console messages, JS errors, failed loads)."""
        return self.driver.get_log("browser")

    def console_errors(self) -> list[dict[str, Any]]:
        return [e for e in self.console() if e.get("level") == "SEVERE"]

    def screenshot(self, path: Path) -> Path:
        """A full-page PNG at the session's width (the viewport is stretched to the page)."""
        height = int(self.js("return Math.ceil(document.documentElement.scrollHeight)"))
        metrics = {"width": self.width, "height": max(self.height, height), "deviceScaleFactor": 1, "mobile": False}
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        try:
            time.sleep(0.2)  # let layout settle at the new size
            shot = self.driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        finally:
            self.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def quit(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)
