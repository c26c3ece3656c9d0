"""Tools for testing drivers and workflows: wrapper drivers and the conformance suites.

The wrappers ``CountingDriver`` and ``FaultyDriver`` count calls and inject crashes; they
import without pytest. Driver conformance: subclass ``DriverConformance`` (or
``WorkerStoreConformance``) in a test module and provide one fixture, ``conformance_store``,
that yields a store (anything with ``driver(workflow_id)`` and
``await due_alarms(now=None, limit=100)``)::

    import pytest
    from engine.testing import DriverConformance

    class TestMyDriver(DriverConformance):
        @pytest.fixture
        async def conformance_store(self):
            async with await MyStore.connect(...) as store:
                yield store

The suites need pytest, so they are imported from ``engine.testing.conformance`` only when
first asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.testing.drivers import WRITE_METHODS, CountingDriver, FaultyDriver, SimulatedCrash

if TYPE_CHECKING:
    from engine.testing.conformance import DriverConformance, WorkerStoreConformance

__all__ = [
    "WRITE_METHODS",
    "CountingDriver",
    "DriverConformance",
    "FaultyDriver",
    "SimulatedCrash",
    "WorkerStoreConformance",
]

_SUITES = frozenset({"DriverConformance", "WorkerStoreConformance"})


def __getattr__(name: str) -> Any:
    if name in _SUITES:
        from engine.testing import conformance

        return getattr(conformance, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
