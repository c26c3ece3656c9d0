"""Opens a RedisStore under a fresh namespace and deletes every key of it afterwards."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from drivers.redis import RedisStore
from engine.errors import StorageError
from tests.support.services import REDIS_URL, unique_name, unreachable

BACKENDS = ("asyncio",)  # redis-py's client runs on asyncio only


async def delete_namespace(store: RedisStore) -> None:
    """Remove every key under the store's namespace (SCAN is fine here: tests only)."""
    client = store._client
    async for key in client.scan_iter(match=f"{store.namespace}:*", count=1000):
        await client.unlink(key)


@asynccontextmanager
async def open_store(
    *, worker_poll_interval: float = 0.05, **options: Any
) -> AsyncIterator[RedisStore]:
    try:
        store = await RedisStore.connect(
            REDIS_URL,
            namespace=unique_name("redis"),
            worker_poll_interval=worker_poll_interval,
            **options,
        )
    except StorageError as exc:
        unreachable("Redis", REDIS_URL, exc)
    async with store:
        try:
            yield store
        finally:
            await delete_namespace(store)
