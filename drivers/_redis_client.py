"""The Redis store's connection pool: redis-py's, except that it waits for a free connection.

Pub/sub (the store's wake-ups) shares one connection of this pool: see ``_redis_pubsub``.
"""

from __future__ import annotations

from typing import Any

import anyio
import redis.asyncio as aioredis
from redis.exceptions import MaxConnectionsError


class WaitingPool(aioredis.ConnectionPool):
    """redis-py's pool, except that a call finding every connection busy waits for one.

    redis-py raises ``MaxConnectionsError`` instead (a burst of concurrent starts hit it),
    and its ``BlockingConnectionPool`` takes a lock on every call, ~13 us per command here,
    a tenth of a step. This one costs nothing until the pool is exhausted.
    """

    connection_wait = 30.0
    _freed: anyio.Event | None = None

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        except MaxConnectionsError:
            pass
        with anyio.fail_after(self.connection_wait):  # only a call that has to wait pays this
            while True:
                if self._freed is None:
                    self._freed = anyio.Event()
                await self._freed.wait()
                try:
                    return await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
                except MaxConnectionsError:
                    continue

    async def release(self, connection: Any) -> None:
        await super().release(connection)
        freed, self._freed = self._freed, None
        if freed is not None:
            freed.set()
