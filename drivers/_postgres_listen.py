"""The Postgres store's wake-ups: LISTEN on one dedicated connection per store, fanned out
to the live runs and idle workers of this process.

Channels: ``<schema>.messages`` (payload: the workflow id, or a digest of a very long one)
for live runs and ``<schema>.alarms`` for idle workers. A lost LISTEN connection wakes
everyone, since notifications may have been missed; the next wait listens again.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import asyncpg
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from drivers._common import ErrorMap

_NOTIFY_PAYLOAD_MAX = 7000  # NOTIFY payloads must stay under 8000 bytes


def payload(workflow_id: str) -> str:
    """NOTIFY payload naming a workflow; very long ids travel as a digest."""
    if len(workflow_id.encode()) < _NOTIFY_PAYLOAD_MAX:
        return workflow_id
    return "#" + hashlib.sha256(workflow_id.encode()).hexdigest()


class Listener:
    """The store's LISTEN connection (opened on first use) and who waits on it."""

    def __init__(
        self, dsn: str, alarm_channel: str, message_channel: str, map_errors: ErrorMap
    ) -> None:
        self.connection: Any = None
        self._dsn = dsn
        self._alarm_channel = alarm_channel
        self._message_channel = message_channel
        self._map_errors = map_errors
        self._closed = False
        self._lock = anyio.Lock()
        self._subscribers: dict[str, set[MemoryObjectSendStream[None]]] = {}
        self._alarm_event = anyio.Event()

    async def wait_for_due(self, timeout: float) -> None:
        """Return on the next NOTIFY on the alarm channel, or after ``timeout`` seconds."""
        await self.ensure()
        event = self._alarm_event
        with anyio.move_on_after(timeout):
            await event.wait()
        if event.is_set() and self._alarm_event is event:
            self._alarm_event = anyio.Event()  # consumed; a NOTIFY during the wait stays set

    @asynccontextmanager
    async def subscribe(self, workflow_id: str) -> AsyncIterator[AsyncIterator[None]]:
        """Yield an iterator producing ``None`` per notification for ``workflow_id``."""
        send, receive = anyio.create_memory_object_stream[None](max_buffer_size=1)
        key = payload(workflow_id)
        streams = self._subscribers.setdefault(key, set())
        streams.add(send)
        try:
            await self.ensure()  # LISTEN is active before the caller re-checks state
            async with receive:
                yield _Wakeups(self, receive)
        finally:
            streams.discard(send)
            if not streams:
                self._subscribers.pop(key, None)
            send.close()

    async def ensure(self) -> None:
        """LISTEN, unless the connection is already listening."""
        async with self._lock:
            if self.connection is not None and not self.connection.is_closed():
                return
            if self._closed:
                raise self._map_errors.failure("listen", RuntimeError("the store is closed"))
            with self._map_errors("listen"):
                conn = await asyncpg.connect(self._dsn)
                try:
                    await conn.add_listener(self._alarm_channel, self._on_notification)
                    await conn.add_listener(self._message_channel, self._on_notification)
                except BaseException:
                    await conn.close()
                    raise
            conn.add_termination_listener(self._on_listener_lost)
            self.connection = conn

    def _on_notification(self, _conn: Any, _pid: int, channel: str, key: str) -> None:
        if channel == self._alarm_channel:
            self._alarm_event.set()
            return
        for stream in self._subscribers.get(key, ()):
            _wake(stream)

    def _on_listener_lost(self, _conn: Any) -> None:
        # Notifications may have been missed: wake everyone so they re-check (and re-listen).
        self._alarm_event.set()
        for streams in self._subscribers.values():
            for stream in streams:
                _wake(stream)

    async def close(self) -> None:
        """Close the LISTEN connection; ``ensure`` refuses to open another."""
        self._closed = True
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.remove_termination_listener(self._on_listener_lost)
            await connection.close()


class _Wakeups:
    """Async iterator of wake-ups; a class, not a generator, so it survives cancellation."""

    def __init__(self, listener: Listener, receive: MemoryObjectReceiveStream[None]) -> None:
        self._listener = listener
        self._receive = receive

    def __aiter__(self) -> _Wakeups:
        return self

    async def __anext__(self) -> None:
        try:
            await self._receive.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None
        # After a lost listener, LISTEN again before the caller re-checks, so a message
        # written in between cannot go unnoticed.
        await self._listener.ensure()


def _wake(stream: MemoryObjectSendStream[None]) -> None:
    try:
        stream.send_nowait(None)
    except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass  # a wake-up is already queued (one is enough), or the subscriber is leaving
