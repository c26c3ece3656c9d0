"""Fixtures for workflow tests: a fresh workflow id and its driver on every store."""

from __future__ import annotations

import uuid
from typing import Any

import pytest


@pytest.fixture
def wid() -> str:
    return f"wf-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def driver(store: Any, wid: str) -> Any:
    """The workflow's driver; every test using it runs once per store and event loop."""
    return store.driver(wid)
