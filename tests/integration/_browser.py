"""Headless Chromium for the end-to-end tests: launch, log in, screenshots, waits.

Debian's ``/usr/bin/chromium`` is driven through Playwright; Playwright's own browser
download (``playwright install``) is never used, so the tests run offline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGUMENTS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Repository-relative; /artifacts/ is ignored by git.
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "e2e"

T = TypeVar("T")


class BrowserStepError(AssertionError):
    """A step of the browser test did not reach the state it waited for."""


def launch_chromium(playwright):
    """Debian's Chromium, headless, with nothing that calls home."""
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM), args=CHROMIUM_ARGUMENTS, headless=True
    )


def wait_for(
    condition: Callable[[], T],
    timeout: float,
    what: str,
    interval: float = 0.25,
) -> T:
    """Poll ``condition()`` until it returns something truthy, and return that.

    Raises
    ------
    BrowserStepError
        After ``timeout`` seconds, naming ``what`` was awaited.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BrowserStepError(
                f"timed out after {timeout:.0f} s waiting for {what}"
            )
        time.sleep(interval)


class Screenshots:
    """Numbered full-page screenshots ``01-login.png``, ``02-…`` in ``directory``."""

    def __init__(self, directory: Path = ARTIFACTS):
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        for old in [*self.directory.glob("*.png"), *self.directory.glob("*.html")]:
            old.unlink()
        self.taken: list[Path] = []

    def take(self, page, name: str) -> Path:
        path = self.directory / f"{len(self.taken) + 1:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)
        return path


def log_in(page, label_studio_url: str, email: str, password: str) -> None:
    """Log in through Label Studio's form; it redirects to ``/`` (the projects)."""
    page.goto(f"{label_studio_url}/user/login/")
    page.fill('input[name="email"]', email)
    page.fill('input[name="password"]', password)
    page.click('button[type="submit"], input[type="submit"]')
    page.wait_for_url(
        lambda url: "/user/login" not in url, timeout=30_000, wait_until="load"
    )
