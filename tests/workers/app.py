"""Workflows the worker processes of the multi-process tests run (``--app
tests.workers.app:WORKFLOWS``).

Every step execution appends ``[workflow id, step, pid, nonce, time]`` to a side-effect log
*before* doing its work, so an execution whose history write never landed still shows up
there. ``ENGINE_TEST_EFFECTS`` names the log: ``redis://host/db#list-key`` or
``postgresql://dsn#schema.table``.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import anyio

from engine import WorkflowContext


class _Effects:
    def __init__(self) -> None:
        self._client: Any = None
        self._lock = anyio.Lock()

    async def append(self, workflow_id: str, step: str, nonce: str) -> None:
        url, _, target = os.environ["ENGINE_TEST_EFFECTS"].partition("#")
        record = [workflow_id, step, os.getpid(), nonce, time.time()]
        async with self._lock:
            if self._client is None:
                self._client = await _connect(url)
        if url.startswith("redis"):
            await self._client.rpush(target, json.dumps(record))
        else:
            await self._client.execute(
                f"INSERT INTO {target} (workflow_id, step, pid, nonce, at) VALUES ($1,$2,$3,$4,$5)",
                *record,
            )


async def _connect(url: str) -> Any:
    if url.startswith("redis"):
        import redis.asyncio as aioredis

        return aioredis.Redis.from_url(url)
    import asyncpg

    return await asyncpg.create_pool(url, min_size=1, max_size=4)


EFFECTS = _Effects()


def effect(ctx: WorkflowContext, step: str, work: float) -> Callable[[], Awaitable[Any]]:
    """A step body: log the execution, work a little, return what identifies it."""

    async def run() -> dict[str, Any]:
        nonce = uuid.uuid4().hex
        await EFFECTS.append(ctx.workflow_id, step, nonce)
        await anyio.sleep(work)
        return {"v": f"{ctx.workflow_id}/{step}", "nonce": nonce, "pid": os.getpid()}

    return run


async def mixed(ctx: WorkflowContext, spec: dict[str, Any]) -> dict[str, Any]:
    """Steps, an optional sleep (in memory or yielding) and an optional message."""
    out: dict[str, Any] = {}
    out["a"] = await ctx.step("a", effect(ctx, "a", spec["work"]))
    if spec["sleep"]:
        await ctx.sleep("nap", spec["sleep"])
    out["b"] = await ctx.step("b", effect(ctx, "b", spec["work"]))
    if spec["message"]:
        [out["m"]] = await ctx.queue.next("wait", names=["go"])
    out["c"] = await ctx.step("c", effect(ctx, "c", spec["work"]))
    return out


async def _plus_one(n: int) -> int:
    return n + 1


async def _double(n: int) -> int:
    return n * 2


async def _minus_one(n: int) -> int:
    return n - 1


async def three(ctx: WorkflowContext, n: int) -> int:
    """Three tiny async steps, no side-effect log: the benchmark's workload (as DBOS's,
    whose steps are async too). Given as coroutine functions (``partial``), they run on the
    loop; a sync body, or a lambda that returns a coroutine, would take a thread hop."""
    a = await ctx.step("one", partial(_plus_one, n))
    b = await ctx.step("two", partial(_double, a))
    return await ctx.step("three", partial(_minus_one, b))


WORKFLOWS = {"mixed": mixed, "three": three}
