"""The driver conformance suite from ``engine.testing``, run against every store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from engine.testing import DriverConformance


class TestDriverConformance(DriverConformance):
    @pytest.fixture
    async def conformance_store(self, store: Any) -> AsyncIterator[Any]:
        yield store
