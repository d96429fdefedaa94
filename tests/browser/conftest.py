"""The browser tier: Debian's chromium, driven by selenium through chromium-driver, against a
real `lighthpc up` (a subprocess, as tests/e2e starts it) and its dashboard.

Under `make test` (LIGHTHPC_REQUIRE_DEPLOY_TOOLS=1) a missing browser fails the tier instead of
skipping it, as a missing Packer fails tests/deploy; the Makefile's `tools` target installs both.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "docs" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# This machine's network is closed: without the background-networking switches Chromium's own
# connections (updates, sync, QUIC probes) are refused and slow every page down.
CHROMIUM_SWITCHES = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LAPTOP, PHONE = (1280, 900), (390, 844)


def require_browser() -> None:
    selenium_found = True
    try:
        import selenium  # noqa: F401
    except ImportError:
        selenium_found = False
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing or not selenium_found:
        reason = (
            f"the browser tests need {', '.join(missing) or 'selenium'}"
            " (apt-get install -y chromium chromium-driver; pip install -r requirements-dev.txt)"
        )
        if os.environ.get("LIGHTHPC_REQUIRE_DEPLOY_TOOLS") == "1":
            pytest.fail(f"LIGHTHPC_REQUIRE_DEPLOY_TOOLS=1 but {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def browser(tmp_path_factory):
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for switch in CHROMIUM_SWITCHES:
        options.add_argument(switch)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.add_argument(f"--window-size={LAPTOP[0]},{LAPTOP[1]}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


class LocalStack:
    """`lighthpc up` in a subprocess, with its dashboard on a free port."""

    def __init__(self, home: Path, *flags: str) -> None:
        self.home = home
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self._log = open(home / "up.log", "wb")  # noqa: SIM115 - closed by stop()
        command = [sys.executable, "-m", "local.cli", "--home", str(home), "up"]
        command += ["--aws-port", "0", "--api-port", "0", "--dashboard-port", "0", *flags]
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.info = self._wait_for_info()
        self.dashboard = self._wait_for_dashboard()

    def log(self) -> str:
        return (self.home / "up.log").read_text(errors="replace")

    def _wait_for_info(self) -> dict[str, Any]:
        path = self.home / "stack.json"
        deadline = time.monotonic() + 120
        while not path.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                pytest.fail(f"lighthpc up did not start:\n{self.log()}")
            time.sleep(0.2)
        return json.loads(path.read_text())

    def _wait_for_dashboard(self) -> str:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = re.search(r"^dashboard\s+(http://\S+?)/?$", self.log(), re.MULTILINE)
            if found:
                return found.group(1)
            time.sleep(0.1)
        pytest.fail(f"lighthpc up printed no dashboard URL:\n{self.log()}")

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.info["api_url"] + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def upload(self, key: str, body: bytes) -> None:
        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=self.info["aws_endpoint"],
            region_name=self.info["region"],
            aws_access_key_id="local",
            aws_secret_access_key="local",
        )
        s3.put_object(Bucket=self.info["source_bucket"], Key=key, Body=body)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> int:
        if self.running:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            finally:
                if self.process.poll() is None:
                    self.process.kill()
        self._log.close()
        return self.process.returncode


def screenshot(driver: Any, name: str, size: tuple[int, int] = LAPTOP) -> Path:
    """A full-height screenshot of the page at `size`'s width, into docs/screenshots/."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    driver.set_window_size(*size)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(size[0], max(size[1], min(int(height) + 20, 4000)))
    time.sleep(0.3)  # a resize redraws the map
    path = SCREENSHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    driver.set_window_size(*LAPTOP)
    return path


def wait_until(condition: Any, timeout: float, what: str, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except Exception as e:
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    pytest.fail(f"timed out waiting for {what} (last: {last!r})")
