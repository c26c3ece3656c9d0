"""A workflow whose store connections are killed by the server in the middle of a run.

The run either rides over it (the clients reconnect and resend; every write is idempotent)
or fails with ``StorageError``. Either way nothing is half-written: the next run resumes
to the same output, and a step whose write landed before the kill never runs again.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from engine import StorageError, WorkflowContext, WorkflowState, run_workflow
from tests.support.workflows import Calls

BACKENDS = ("asyncio",)  # the Redis and Postgres clients run on asyncio only
pytestmark = pytest.mark.anyio

Killer = Callable[[], Awaitable[int]]


@asynccontextmanager
async def redis_with_killer() -> AsyncIterator[tuple[Any, Killer]]:
    import redis.asyncio as aioredis

    from tests.support.redis_store import open_store
    from tests.support.services import REDIS_URL

    name = f"durable-loss-{os.getpid()}-{time.monotonic_ns()}"
    admin = aioredis.Redis.from_url(REDIS_URL)

    async def kill() -> int:
        victims = [c["id"] for c in await admin.client_list() if c.get("name") == name]
        for client_id in victims:
            await admin.execute_command("CLIENT", "KILL", "ID", client_id)
        return len(victims)

    try:
        async with open_store(client_name=name) as store:
            yield store, kill
    finally:
        await admin.aclose()


@asynccontextmanager
async def postgres_with_killer() -> AsyncIterator[tuple[Any, Killer]]:
    from tests.support.postgres_store import admin_connection, open_store

    admin = await admin_connection()
    try:
        async with open_store() as store:

            async def kill() -> int:
                # Every connection the store's pool has open (asyncpg's holders).
                pids = [h._con.get_server_pid() for h in store._pool._holders if h._con]
                await admin.execute("SELECT pg_terminate_backend(p) FROM unnest($1::int[]) p", pids)
                return len(pids)

            yield store, kill
    finally:
        await admin.close()


@pytest.mark.parametrize("opener", [redis_with_killer, postgres_with_killer])
async def test_a_run_survives_or_fails_cleanly_when_connections_die(opener: Any) -> None:
    calls = Calls()
    killed: list[int] = []

    async with opener() as (store, kill):

        async def kill_connections() -> str:
            killed.append(await kill())
            return "killed"

        async def workflow(ctx: WorkflowContext, _: Any) -> Any:
            first = await ctx.step("before", calls.fn("before", 1))
            await ctx.step("kill", kill_connections)
            second = await ctx.step("after", calls.fn("after", 2))
            return first + second

        wid = f"loss-{time.monotonic_ns()}"
        driver = store.driver(wid)
        outcomes = []
        for _ in range(5):
            try:
                result = await run_workflow(wid, workflow, None, driver).result()
            except StorageError as exc:
                outcomes.append(f"StorageError: {exc}")
                continue
            outcomes.append(result.state)
            if result.state == WorkflowState.COMPLETED:
                break
        assert outcomes[-1] == WorkflowState.COMPLETED, "\n".join(map(str, outcomes))
        assert result.output == 3
        assert killed and killed[0] >= 1, "the server really dropped the store's connections"
        assert calls["before"] == 1, "its write landed before the kill: never run again"
        assert calls["after"] <= len(outcomes)
