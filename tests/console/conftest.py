"""Fixtures for the console: the unit-test app (from tests/conftest.py), and for the browser
tests a real stack (embedded server, worker, API over HTTP) plus headless Chromium.

Chromium and its driver come from the distribution's packages (``chromium``,
``chromium-driver``); when missing they are installed with apt-get (as root) by
tests/helpers/install-chromium.sh, which ``make test`` starts in the background
first; when that is impossible the browser tests skip with a loud message.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from shared.stack.embedded import EmbeddedServer, start_embedded
from tests.helpers.stack import Stack, running_stack

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: Flags Chromium needs to run headless as root in a container, and to reach nothing outside.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,1000")


INSTALL_SCRIPT = Path(__file__).resolve().parents[1] / "helpers" / "install-chromium.sh"


def _install_chromium() -> str | None:
    """Install chromium and chromium-driver if missing (waiting for ``make test``'s background
    install, tests/helpers/install-chromium.sh); why not, or None."""
    if os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER):
        return None
    if shutil.which("flock") is None:
        return "flock (util-linux) is missing"
    done = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True,
                          timeout=900, check=False)
    if done.returncode != 0:
        return f"{INSTALL_SCRIPT.name} failed: {done.stderr.strip()[-500:]}"
    return None if os.path.exists(CHROMEDRIVER) else "chromedriver still missing after install"


@pytest.fixture(scope="session")
def chromium_ready() -> None:
    """Chromium and chromedriver present (installed if need be), else a loud skip."""
    why = _install_chromium()
    if why is not None:
        message = (f"\n{'!' * 70}\nBROWSER TESTS SKIPPED: Chromium could not be installed ({why})."
                   f"\nInstall the Debian packages chromium and chromium-driver.\n{'!' * 70}")
        print(message, file=sys.stderr)
        pytest.skip(message)


@pytest.fixture(scope="module")
def console_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """An embedded server, one real worker and the API over HTTP, for one test module."""
    server: EmbeddedServer = start_embedded(tmp_path_factory.mktemp("console-redis"))
    try:
        redis.Redis.from_url(server.url).flushall()
        data_dir = tmp_path_factory.mktemp("console-stack") / "var"
        data_dir.mkdir()
        with running_stack(server.url, data_dir) as st:
            yield st
    finally:
        server.stop()


@pytest.fixture
def browser(chromium_ready: None, request: pytest.FixtureRequest,
            tmp_path: Path) -> Iterator[object]:
    """Headless Chromium driven by selenium (explicit driver path: nothing is downloaded);
    a failing test leaves a screenshot in its tmp dir, path printed."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            shot = tmp_path / "failure.png"
            driver.save_screenshot(str(shot))
            print(f"\nscreenshot of the failing page: {shot}", file=sys.stderr)
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Keep each phase's report on the test item, so fixtures can tell a failure."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)
