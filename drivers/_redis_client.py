"""The Redis store's connections: a pool that waits for a free connection, and pub/sub.

Pub/sub carries the store's wake-ups: one channel per workflow for live runs (a message was
written) and one per store for idle workers (an alarm was set).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.exceptions import MaxConnectionsError

from drivers._common import ErrorMap

# How long one pub/sub read waits before looping; keeps reads short and cancellable.
_PUBSUB_READ_SECONDS = 1.0
_SUBSCRIBE_CONFIRM_SECONDS = 5.0


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


async def _close(pubsub: PubSub) -> None:
    await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated


class _Wakeups:
    """Yields None for each message published on one subscribed channel."""

    def __init__(self, pubsub: PubSub, map_errors: ErrorMap) -> None:
        self._pubsub = pubsub
        self._map_errors = map_errors

    def __aiter__(self) -> _Wakeups:
        return self

    async def __anext__(self) -> None:
        while True:
            with self._map_errors("subscribe"):
                message = await self._pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=_PUBSUB_READ_SECONDS
                )
            if message is not None:
                return None


class Subscriptions:
    """The store's pub/sub: a subscription per live run, and the idle workers' due channel.

    The due channel's subscription lives as long as the store, so an alarm set between two
    ``wait_for_due`` calls is still buffered on the connection and seen by the next call.
    """

    def __init__(self, client: aioredis.Redis, due_channel: str, map_errors: ErrorMap) -> None:
        self._client = client
        self._due_channel = due_channel
        self._map_errors = map_errors
        self._due_pubsub: PubSub | None = None
        self._due_lock, self._due_setup_lock = anyio.Lock(), anyio.Lock()

    @asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[AsyncIterator[None]]:
        pubsub = self._client.pubsub()
        try:
            await self._confirm_subscription(pubsub, channel)
            yield _Wakeups(pubsub, self._map_errors)
        finally:
            with anyio.CancelScope(shield=True), self._map_errors("unsubscribe"):
                await _close(pubsub)

    async def _confirm_subscription(self, pubsub: PubSub, channel: str) -> None:
        """Subscribe and wait for the server's confirmation: no publish after it is missed."""
        with self._map_errors("subscribe"):
            await pubsub.subscribe(channel)
            deadline = time.monotonic() + _SUBSCRIBE_CONFIRM_SECONDS
            while (remaining := deadline - time.monotonic()) > 0:
                message = await pubsub.get_message(timeout=remaining)
                if message is not None and message["type"] == "subscribe":
                    return
        raise self._map_errors.failure(f"subscribe to {channel!r} (no confirmation)")

    async def wait_for_due(self, timeout: float) -> None:
        """Return on the next publish on the due channel, or after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        pubsub = await self._due_subscription()
        with anyio.move_on_after(timeout):
            async with self._due_lock:
                while (remaining := deadline - time.monotonic()) > 0:
                    with self._map_errors("wait_for_due"):
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True,
                            timeout=min(remaining, _PUBSUB_READ_SECONDS),
                        )
                        if message is None:
                            continue
                        # Several alarms set meanwhile call for one claim pass, not many.
                        while await pubsub.get_message(timeout=0) is not None:
                            pass
                    return

    async def _due_subscription(self) -> PubSub:
        # Shielded (subscribing has its own time limit): even a zero timeout leaves the store
        # holding the subscription that buffers wake-ups for the next call.
        with anyio.CancelScope(shield=True):
            async with self._due_setup_lock:
                if self._due_pubsub is None:
                    pubsub = self._client.pubsub()
                    try:
                        await self._confirm_subscription(pubsub, self._due_channel)
                    except BaseException:
                        await _close(pubsub)
                        raise
                    self._due_pubsub = pubsub
        if self._due_pubsub is None:  # close() ran meanwhile
            raise self._map_errors.failure("wait_for_due (store closed)")
        return self._due_pubsub

    async def close(self) -> None:
        """Close the due channel's subscription (the store closes the client)."""
        if self._due_pubsub is not None:
            await _close(self._due_pubsub)
            self._due_pubsub = None
