"""Reaching the services some tests need (Redis, PostgreSQL) the way CI expects.

Under ``CI=true`` a service that cannot be reached fails the test: a green run must mean the
driver was exercised. On a laptop the test skips and says which service and URL it tried.
"""

from __future__ import annotations

import os
import uuid
from typing import NoReturn

import pytest

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def unreachable(service: str, url: str, error: BaseException) -> NoReturn:
    reason = f"{service} at {url} is unreachable ({type(error).__name__}: {error})"
    if in_ci():
        pytest.fail(f"{reason}; CI=true requires it", pytrace=False)
    pytest.skip(f"{reason}; set the URL environment variable or start the service")


def unique_name(label: str) -> str:
    """A fresh namespace (key prefix, schema) per test so tests never see each other."""
    return f"t_{label}_{uuid.uuid4().hex[:10]}"
