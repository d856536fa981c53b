"""Headless Chromium (Debian's `chromium` + `chromium-driver`) driven by selenium, for the dashboard tests."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

REPO_ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT_DIR = REPO_ROOT / "test-artifacts" / "screenshots"

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome")
DRIVER_CANDIDATES = ("chromedriver",)
DEBIAN_DRIVER = "/usr/bin/chromedriver"


def find_browser() -> Optional[str]:
    for name in CHROMIUM_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def find_driver() -> Optional[str]:
    for name in DRIVER_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return DEBIAN_DRIVER if os.access(DEBIAN_DRIVER, os.X_OK) else None


def missing_requirements() -> list[str]:
    """What the browser tests lack: the Debian packages and the selenium module."""
    missing = []
    if not find_browser():
        missing.append("chromium (Debian package chromium)")
    if not find_driver():
        missing.append("chromedriver (Debian package chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium Python package (pip install selenium)")
    return missing


def make_driver(width: int = 1366, height: int = 900):
    """A headless Chromium session; no network access beyond what the page asks of loopback."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = find_browser() or ""
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
                "--disable-sync", "--disable-component-update", "--disable-default-apps", "--mute-audio",
                "--proxy-server=direct://", "--proxy-bypass-list=*", f"--window-size={width},{height}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=find_driver())
    driver = webdriver.Chrome(service=service, options=opts)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(30)
    driver.set_window_size(width, height)
    return driver


def screenshot(driver, name: str) -> Path:
    """Saves a full-page-height PNG under test-artifacts/screenshots/ (the window grows to the page's height)."""
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOT_DIR / f"{name}.png"
    size = driver.get_window_size()
    driver.execute_script("window.scrollTo(0, 0)")
    try:
        height = driver.execute_script(
            "return Math.min(4000, Math.max(document.body.scrollHeight, document.documentElement.scrollHeight))")
        if height and height > size["height"]:
            driver.set_window_size(size["width"], int(height) + 20)
        driver.save_screenshot(str(path))
    finally:
        driver.set_window_size(size["width"], size["height"])
    return path


def severe_console_errors(driver) -> list[str]:
    """SEVERE entries of the browser console, without expected network errors (e.g. a 404 for a missing id)."""
    try:
        logs = driver.get_log("browser")
    except Exception:  # noqa: BLE001 - logging not supported: nothing to report
        return []
    out = []
    for entry in logs:
        if entry.get("level") != "SEVERE":
            continue
        msg = entry.get("message", "")
        if "Failed to load resource" in msg or "favicon" in msg:
            continue
        out.append(msg)
    return out
