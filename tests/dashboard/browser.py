"""Debian's Chromium driven by Playwright, never a downloaded browser.

Under ``CI=true`` a missing browser (or Playwright) fails the test, as an unreachable
service does (``tests/support/services.py``): a green run must mean a browser ran. On a
laptop without Chromium the browser tests skip and say why.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.support.services import in_ci

CHROMIUM = os.environ.get("DASHBOARD_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ROOT = Path(__file__).resolve().parents[2]


def artifacts() -> Path:
    """Where screenshots go: ``DASHBOARD_ARTIFACTS``, or ``build/dashboard-screenshots``."""
    chosen = os.environ.get("DASHBOARD_ARTIFACTS")
    path = Path(chosen) if chosen else ROOT / "build" / "dashboard-screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _missing(reason: str) -> NoReturn:
    if in_ci():
        pytest.fail(f"{reason}; CI=true requires the browser tests to run", pytrace=False)
    pytest.skip(reason)


@asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """A headless Chromium browser (``playwright.async_api.Browser``)."""
    try:
        from playwright.async_api import async_playwright
    except ImportError as exc:
        _missing(f"playwright is not installed ({exc})")
    if not os.access(CHROMIUM, os.X_OK):
        _missing(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=ARGS, headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()
