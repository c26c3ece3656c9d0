"""Opens a fresh MemoryStore for the shared store-parametrized tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from drivers.memory import MemoryStore

BACKENDS = ("asyncio", "trio")


@asynccontextmanager
async def open_store(*, worker_poll_interval: float = 0.05) -> AsyncIterator[MemoryStore]:
    async with MemoryStore(worker_poll_interval=worker_poll_interval) as store:
        yield store
