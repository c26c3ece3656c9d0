"""The Redis store's pub/sub: one connection per store, shared by every subscriber.

Live runs subscribe to their workflow's channel and idle workers to the store's due
channel; each subscriber gets a memory stream, and one reader task fans each published
message out to the streams of its channel. The connection is taken from the store's pool
once, on first use, so any number of live runs hold one connection between them (one each,
as before, exhausted the pool at its size: nothing could complete).

Subscribing waits for the server's confirmation, so a publish after ``subscribe`` entered
is never missed. When the connection drops, the reader connects again and subscribes every
channel again; once a channel's subscription is confirmed, each of its subscribers is woken
once, since a message published while the connection was down is gone, and the subscriber
must look again at what it waits for. A wake-up is a hint that coalesces: a stream holds at
most one.

Confirmations are counted per channel: ``outstanding`` is the SUBSCRIBEs sent for it on the
current connection whose reply is still to come (replies come in order on one connection),
and ``confirmed`` is set exactly while the connection is up, the channel wanted and none
outstanding. A channel nobody wants any more is unsubscribed and forgotten once nothing is
outstanding. Commands go out under one lock, so counting a SUBSCRIBE and writing it are one
step; the reader closes the connection under it too, since redis-py's connection must not
be torn down under a send. Runs on asyncio only, like redis-py's asyncio client.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import redis.asyncio as aioredis
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from drivers._common import ErrorMap

_CONFIRM_SECONDS = 5.0  # a subscription the server has not confirmed by then fails
_IDLE_SECONDS = 15.0  # silence this long: PING; as long again without a reply: reconnect
_RECONNECT_FIRST, _RECONNECT_MAX = 0.01, 1.0  # seconds between attempts, doubling
_SUBSCRIBE_CHUNK = 1000  # channels per SUBSCRIBE when subscribing every channel again

Stream = MemoryObjectSendStream[None]


class _Channel:
    """One channel's subscribers and the state of its subscription on the server."""

    def __init__(self) -> None:
        self.streams: set[Stream] = set()
        self.outstanding = 0
        self.confirmed = anyio.Event()
        self.rewake = False  # wake every subscriber when the next confirmation arrives

    def wake(self) -> None:
        for stream in self.streams:
            try:
                stream.send_nowait(None)
            except anyio.WouldBlock:
                pass  # a wake-up is already queued; one is enough
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass  # its subscriber is leaving (``_close_stream`` is on its way)


class SharedPubSub:
    """Channels to subscribers, over one pub/sub connection taken from the store's pool."""

    def __init__(self, client: aioredis.Redis, map_errors: ErrorMap) -> None:
        self._pool = client.connection_pool
        self._map_errors = map_errors
        self._channels: dict[bytes, _Channel] = {}
        self._connection: Any = None  # redis-py's Connection, taken from the pool once
        self._live = False  # connected, every wanted channel's SUBSCRIBE sent
        self._lock = anyio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._last_error: BaseException | None = None
        self._failure: BaseException | None = None  # what stopped the reader for good
        self._closed = False
        self._sticky: dict[bytes, MemoryObjectReceiveStream[None]] = {}
        self.connections = 0  # connections established so far (reconnects included)

    @asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[AsyncIterator[None]]:
        """Wake-ups for ``channel``: one per publish (coalesced), one after a reconnect."""
        name = channel.encode()
        send, receive = await self._open(name)
        try:
            async with receive:
                yield receive
        finally:
            with anyio.CancelScope(shield=True):
                await self._close_stream(name, send)

    async def wait(self, channel: str, timeout: float) -> None:
        """Return on a publish on ``channel`` or after ``timeout`` seconds.

        The channel stays subscribed once this was called (until ``close``), so a publish
        between two calls is held and ends the next call at once; several held are one.
        """
        name = channel.encode()
        if name not in self._sticky:
            # Shielded: even a zero timeout leaves the subscription that holds wake-ups for
            # the next call (subscribing has its own time limit).
            with anyio.CancelScope(shield=True):
                send, receive = await self._open(name)
                if name in self._sticky:  # a concurrent first call won
                    await self._close_stream(name, send)
                else:
                    self._sticky[name] = receive
        with anyio.move_on_after(timeout):
            try:
                await self._sticky[name].receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                raise self._map_errors.failure(f"wait on {channel!r} (store closed)") from None

    async def _open(self, channel: bytes) -> tuple[Stream, MemoryObjectReceiveStream[None]]:
        if self._closed or self._failure is not None:
            raise self._map_errors.failure(f"subscribe to {channel!r} (closed)", self._failure)
        send, receive = anyio.create_memory_object_stream[None](max_buffer_size=1)
        state = self._channels.setdefault(channel, _Channel())
        state.streams.add(send)
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._run())
        try:
            if len(state.streams) == 1:  # the first subscriber: subscribe on the server
                await self._send_subscribe(channel, state)
            # This event, not the channel's latest: once set, a drop may replace it, and the
            # reconnect's wake-up covers what that drop loses.
            confirmed = state.confirmed
            with anyio.move_on_after(_CONFIRM_SECONDS):
                await confirmed.wait()
            if self._closed or self._failure is not None:
                raise self._map_errors.failure(f"subscribe to {channel!r} (closed)", self._failure)
            if not confirmed.is_set():
                raise self._map_errors.failure(
                    f"subscribe to {channel!r} (no confirmation)", self._last_error
                )
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._close_stream(channel, send)
            receive.close()
            raise
        return send, receive

    async def _send_subscribe(self, channel: bytes, state: _Channel) -> None:
        async with self._lock:
            if not self._live or state is not self._channels.get(channel):
                return  # the reconnect subscribes every wanted channel
            state.outstanding += 1
            if state.confirmed.is_set():
                state.confirmed = anyio.Event()
            await self._send("SUBSCRIBE", channel)

    async def _close_stream(self, channel: bytes, send: Stream) -> None:
        send.close()
        state = self._channels.get(channel)
        if state is None or send not in state.streams:
            return
        state.streams.discard(send)
        if state.streams:
            return
        async with self._lock:
            if state.streams or state is not self._channels.get(channel):
                return  # subscribed again meanwhile, or forgotten by a reconnect
            if state.outstanding == 0:
                del self._channels[channel]
            if self._live:
                await self._send("UNSUBSCRIBE", channel)

    async def _send(self, *command: Any) -> None:
        """Write a command under the lock; a failure is the reader's to notice (it
        reconnects and subscribes every wanted channel again)."""
        connection = self._connection
        if connection is None or not connection.is_connected:
            return
        try:
            await connection.send_command(*command, check_health=False)
        except (RedisError, OSError) as exc:
            self._last_error = exc

    async def _run(self) -> None:
        attempts = 0
        while True:
            try:
                await self._connect(reconnect=self.connections > 0)
                attempts = 0
                await self._read()
            except (RedisError, OSError) as exc:
                self._last_error = exc
            except Exception as exc:  # not the connection: a bug; fail loudly, not in a loop
                self._failure = exc
                self._drop()
                self._end_streams()
                await self._disconnect()
                raise
            self._drop()
            await self._disconnect()
            await anyio.sleep(min(_RECONNECT_MAX, _RECONNECT_FIRST * 2**attempts))
            attempts += 1

    async def _connect(self, *, reconnect: bool) -> None:
        if self._connection is None:
            self._connection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        connection = self._connection
        if not connection.is_connected:
            await connection.connect()  # redis-py retries, per the client's ``retry``
        self.connections += 1
        async with self._lock:
            wanted = [channel for channel, state in self._channels.items() if state.streams]
            for channel in wanted:
                state = self._channels[channel]
                state.outstanding, state.rewake = 1, reconnect
            for i in range(0, len(wanted), _SUBSCRIBE_CHUNK):
                chunk = wanted[i : i + _SUBSCRIBE_CHUNK]
                await connection.send_command("SUBSCRIBE", *chunk, check_health=False)
            self._live = True

    async def _read(self) -> None:
        connection = self._connection
        pinged = False
        while True:
            try:
                # Not disconnect_on_error: the disconnect must wait for a send under way.
                reply = await connection.read_response(
                    timeout=_IDLE_SECONDS, push_request=True, disconnect_on_error=False
                )
            except (AttributeError, TypeError) as exc:
                if connection.is_connected:
                    raise
                # A send that failed closed the connection (redis-py does) under this read.
                raise RedisConnectionError("pub/sub connection closed") from exc
            if reply is None:  # silence: is the server still there?
                if pinged:
                    raise RedisConnectionError("pub/sub connection: no reply to PING")
                async with self._lock:
                    await connection.send_command("PING", check_health=False)
                pinged = True
                continue
            pinged = False
            if isinstance(reply, list) and len(reply) == 3:
                self._dispatch(reply[0], reply[1])

    def _dispatch(self, kind: bytes, channel: bytes) -> None:
        state = self._channels.get(channel)
        if state is None:
            return
        if kind == b"message":
            state.wake()
        elif kind == b"subscribe" and state.outstanding > 0:
            state.outstanding -= 1
            if state.outstanding > 0:
                return
            if not state.streams:
                del self._channels[channel]
                return
            state.confirmed.set()
            if state.rewake:
                state.rewake = False
                state.wake()

    def _drop(self) -> None:
        """The connection is gone: nothing is subscribed on the server any more."""
        self._live = False
        for channel, state in list(self._channels.items()):
            state.outstanding = 0
            if not state.streams:
                del self._channels[channel]
            elif state.confirmed.is_set():
                state.confirmed = anyio.Event()

    async def _disconnect(self) -> None:
        # Under the lock: redis-py's connection must not be torn down under a send.
        async with self._lock:
            if self._connection is not None:
                try:
                    await self._connection.disconnect(nowait=True)
                except (RedisError, OSError):
                    pass  # closing a socket that is already broken

    def _end_streams(self) -> None:
        for state in self._channels.values():
            for stream in state.streams:
                stream.close()
            state.confirmed.set()  # a subscriber still waiting for it sees the store closed
        self._channels.clear()

    async def close(self) -> None:
        """Stop the reader, end every subscriber's stream, give the connection back."""
        self._closed = True
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            await asyncio.wait({reader})
            if not reader.cancelled():
                reader.exception()  # retrieved: it was kept as the subscribers' cause
        self._live = False
        self._end_streams()
        await self._disconnect()
        connection, self._connection = self._connection, None
        if connection is not None:
            await self._pool.release(connection)
