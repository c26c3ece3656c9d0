"""The conformance suites from ``engine.testing``, run against every store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from engine.testing import DriverConformance, WorkerStoreConformance


class TestDriverConformance(DriverConformance):
    @pytest.fixture
    async def conformance_store(self, store: Any) -> AsyncIterator[Any]:
        yield store


class TestWorkerStoreConformance(WorkerStoreConformance):
    @pytest.fixture
    async def conformance_store(self, store: Any) -> AsyncIterator[Any]:
        yield store
