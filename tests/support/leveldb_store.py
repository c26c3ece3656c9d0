"""Opens a fresh LevelDBStore in its own temporary directory for the shared store tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from drivers.leveldb import LevelDBStore

BACKENDS = ("asyncio", "trio")


@asynccontextmanager
async def open_store(*, worker_poll_interval: float = 0.05) -> AsyncIterator[LevelDBStore]:
    path = tempfile.mkdtemp(prefix="engine-leveldb-")
    try:
        async with LevelDBStore(path, worker_poll_interval=worker_poll_interval) as store:
            yield store
    finally:
        shutil.rmtree(path, ignore_errors=True)
