"""Script calls made while another is on the wire go to Redis together, as one pipeline.

A worker runs many workflows at once, and when one reply wakes them they tend to call their
next script in the same turn. Sent one by one, each call costs a write and a read on both
sides of the socket, which on a small machine is most of what the Redis server spends per
workflow. Gathered into one non-transactional pipeline they share them. Each script is still
atomic on its own and fails on its own (a lost lease, a script error); the pipeline is no
transaction.

Order is kept: one pipeline is on the wire at a time, and the calls made meanwhile go in the
next, so a call is never applied before one that was sent ahead of it. A caller cancelled
before its call went out takes it back (it is never sent, as before); one cancelled after
that may still see it applied, as with any request already written to a socket. A call
alone goes out as a plain EVALSHA one loop turn later, so a lone workflow pays nothing
noticeable. Runs on asyncio only, like redis-py's asyncio client.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError


@dataclass(eq=False)
class _Call:
    name: str
    keys: list[str]
    args: list[Any]
    reply: asyncio.Future[Any] = field(repr=False)


class ScriptCalls:
    """Runs named Lua scripts by SHA, loading them on NOSCRIPT, one pipeline at a time."""

    def __init__(self, client: aioredis.Redis, sources: dict[str, str]) -> None:
        self._client = client
        self._sources = sources
        self._shas = {name: hashlib.sha1(src.encode()).hexdigest() for name, src in sources.items()}
        self._waiting: list[_Call] = []
        self._sender: asyncio.Task[None] | None = None

    async def __call__(self, name: str, keys: list[str], args: list[Any]) -> Any:
        loop = asyncio.get_running_loop()
        call = _Call(name, keys, args, loop.create_future())
        self._waiting.append(call)
        if self._sender is None:
            self._sender = loop.create_task(self._send_all())
        try:
            return await call.reply
        except asyncio.CancelledError:
            if call in self._waiting:  # not sent yet: take it back
                self._waiting.remove(call)
            raise

    async def _send_all(self) -> None:
        try:
            while True:
                # One loop turn lets the tasks woken with the last reply add their calls.
                await asyncio.sleep(0)
                if not self._waiting:
                    return
                calls, self._waiting = self._waiting, []
                await self._send(calls)
        except asyncio.CancelledError:  # the loop is shutting down: no caller may hang
            for call in self._waiting:
                call.reply.cancel()
            self._waiting = []
            raise
        finally:
            self._sender = None

    async def _send(self, calls: list[_Call]) -> None:
        try:
            replies = await self._replies(calls)
        except asyncio.CancelledError:
            for call in calls:
                call.reply.cancel()
            raise
        except Exception as exc:  # nothing came back: none of them is known to have run
            replies = [exc] * len(calls)
        for call, reply in zip(calls, replies, strict=True):
            if call.reply.done():  # its caller was cancelled after it went out
                continue
            if isinstance(reply, Exception):
                call.reply.set_exception(reply)
            else:
                call.reply.set_result(reply)

    async def _replies(self, calls: list[_Call]) -> list[Any]:
        replies = await self._execute(calls)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:  # the server lost its script cache (a restart, SCRIPT FLUSH): load, resend
            try:
                for name in {calls[i].name for i in missing}:
                    await self._client.script_load(self._sources[name])
                again = await self._execute([calls[i] for i in missing])
            except Exception as exc:  # only the resent calls failed; the others did run
                again = [exc] * len(missing)
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _execute(self, calls: list[_Call]) -> list[Any]:
        if len(calls) == 1:
            try:
                return [await self._client.evalsha(*self._command(calls[0]))]
            except NoScriptError as exc:
                return [exc]
        async with self._client.pipeline(transaction=False) as pipe:
            for call in calls:
                pipe.evalsha(*self._command(call))
            return list(await pipe.execute(raise_on_error=False))

    def _command(self, call: _Call) -> list[Any]:
        return [self._shas[call.name], len(call.keys), *call.keys, *call.args]

    async def wait_idle(self) -> None:
        """Wait until every call already made has its reply (before a close)."""
        while (sender := self._sender) is not None:
            await asyncio.wait({sender})
