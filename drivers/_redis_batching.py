"""Script calls made in the same event-loop turn go to Redis as one pipeline.

A worker runs many workflows at once, and when one reply wakes them they tend to call their
next script in the same turn. Sent one by one, each call costs a write and a read on both
sides of the socket, which on a small machine is most of what the Redis server spends per
workflow. Gathered into one non-transactional pipeline they share them. Each script is still
atomic on its own and fails on its own (a lost lease, a script error): the pipeline adds no
transaction and no ordering beyond what the callers already had, since a caller waits for its
reply before its next call.

A call alone in its turn goes out at once as a plain EVALSHA, so a lone workflow pays
nothing for this. Runs on asyncio only, like redis-py's asyncio client.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError


@dataclass
class _Call:
    name: str
    keys: list[str]
    args: list[Any]
    reply: asyncio.Future[Any] = field(repr=False)


class ScriptCalls:
    """Runs named Lua scripts by SHA, loading them on NOSCRIPT, batching per loop turn."""

    def __init__(self, client: aioredis.Redis, sources: dict[str, str]) -> None:
        self._client = client
        self._sources = sources
        self._shas = {name: hashlib.sha1(src.encode()).hexdigest() for name, src in sources.items()}
        self._waiting: list[_Call] = []
        self._flushes: set[asyncio.Task[None]] = set()

    async def __call__(self, name: str, keys: list[str], args: list[Any]) -> Any:
        loop = asyncio.get_running_loop()
        call = _Call(name, keys, args, loop.create_future())
        self._waiting.append(call)
        if len(self._waiting) == 1:
            flush = loop.create_task(self._flush())
            self._flushes.add(flush)
            flush.add_done_callback(self._flushes.discard)
        return await call.reply

    async def _flush(self) -> None:
        # One turn of the loop lets the other tasks woken with this one add their calls.
        await asyncio.sleep(0)
        calls, self._waiting = self._waiting, []
        try:
            replies = await self._send(calls)
        except asyncio.CancelledError:  # the loop is shutting down: no caller may hang
            for call in calls:
                call.reply.cancel()
            raise
        except Exception as exc:
            replies = [exc] * len(calls)
        for call, reply in zip(calls, replies, strict=True):
            if call.reply.done():  # the caller was cancelled; its script may still have run
                continue
            if isinstance(reply, Exception):
                call.reply.set_exception(reply)
            else:
                call.reply.set_result(reply)

    async def _send(self, calls: list[_Call]) -> list[Any]:
        replies = await self._execute(calls)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:  # the server lost its script cache (a restart, SCRIPT FLUSH): load, resend
            for name in {calls[i].name for i in missing}:
                await self._client.script_load(self._sources[name])
            again = await self._execute([calls[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _execute(self, calls: list[_Call]) -> list[Any]:
        if len(calls) == 1:
            call = calls[0]
            try:
                return [await self._client.evalsha(*self._command(call))]
            except NoScriptError as exc:
                return [exc]
        async with self._client.pipeline(transaction=False) as pipe:
            for call in calls:
                pipe.evalsha(*self._command(call))
            return list(await pipe.execute(raise_on_error=False))

    def _command(self, call: _Call) -> list[Any]:
        return [self._shas[call.name], len(call.keys), *call.keys, *call.args]

    async def wait_idle(self) -> None:
        """Wait for the calls already handed over to get their replies (before a close)."""
        while self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)
