"""Debian's headless Chromium for the browser tests, driven by Selenium through chromedriver.

``missing_browser()`` names what is not installed; ``require(missing, what)`` skips the test
saying so, or fails it under ``CI=true`` (.ci/run installs them: a skip there would hide a
broken set-up); ``start_chromium(profile, mic_wav, downloads)`` starts it with its fake
microphone playing ``mic_wav`` (looped) and a user-data folder of its own.
"""
from __future__ import annotations

import os
import shutil
from typing import Optional

import pytest


def missing_browser() -> list[str]:
    missing = []
    for name, package in (("chromium", "chromium"), ("chromedriver", "chromium-driver")):
        if not shutil.which(name):
            missing.append(f"{name} (apt-get install {package})")
    try:
        __import__("selenium")
    except ImportError:
        missing.append("the selenium package (pip install '.[test]')")
    return missing


def require(missing: list[str], what: str = "browser test") -> None:
    if missing:
        message = f"{what} needs " + ", ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def start_chromium(profile: str, mic_wav: Optional[str] = None, downloads: Optional[str] = None,
                   script_timeout: float = 60):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    arguments = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-default-apps", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", "--window-size=1100,1500"]
    if mic_wav:
        arguments += ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                      f"--use-file-for-fake-audio-capture={mic_wav}"]
    for argument in arguments:
        options.add_argument(argument)
    if downloads:
        options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                                  "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_script_timeout(script_timeout)
    return driver
