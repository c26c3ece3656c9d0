"""Shared fixtures: both event loops, and every store behind one ``store`` fixture."""

from __future__ import annotations

import importlib
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

# Each store module in tests/support exposes ``open_store()`` and the anyio ``BACKENDS`` its
# client library supports (the Redis and Postgres clients run on asyncio only).
ALL_STORE_MODULES = {
    "memory": "tests.support.memory_store",
    "leveldb": "tests.support.leveldb_store",
    "redis": "tests.support.redis_store",
    "postgres": "tests.support.postgres_store",
}
# ENGINE_TEST_STORES=memory,redis narrows a local run; CI runs every store.
_selected = os.environ.get("ENGINE_TEST_STORES")
STORE_MODULES = {
    name: module
    for name, module in ALL_STORE_MODULES.items()
    if not _selected or name in _selected.split(",")
}


BACKENDS = ("asyncio", "trio")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # replaced by the parametrization below for every anyio test


def _store_module(name: str) -> Any:
    return importlib.import_module(STORE_MODULES[name])


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests that use ``store`` run once per (store, event loop) pair the store supports."""
    if "store_name" not in metafunc.fixturenames:
        if "anyio_backend" in metafunc.fixturenames:
            # A test module may narrow the loops (the Redis client runs on asyncio only).
            metafunc.parametrize("anyio_backend", getattr(metafunc.module, "BACKENDS", BACKENDS))
        return
    cases = [
        (name, backend)
        for name in sorted(STORE_MODULES)
        for backend in _store_module(name).BACKENDS
    ]
    metafunc.parametrize(("store_name", "anyio_backend"), cases, ids=[f"{n}-{b}" for n, b in cases])


@pytest.fixture
async def store(store_name: str, anyio_backend: str) -> AsyncIterator[Any]:
    """A fresh, isolated store of each kind (the engine's tests run on all of them)."""
    async with _store_module(store_name).open_store() as opened:
        yield opened
