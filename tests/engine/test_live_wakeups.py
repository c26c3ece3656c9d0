"""Live runs are never left asleep: a message sent at any moment of a run's start-up is
seen, and one sent after the store's connections were killed under a waiting run wakes it."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from engine import WorkflowContext, WorkflowState, run_workflow

pytestmark = pytest.mark.anyio


async def waits_for_go(ctx: WorkflowContext, _: Any) -> Any:
    [data] = await ctx.queue.next("wait", names=["go"])
    return data


@pytest.mark.parametrize("delay", [0.0, 0.0005, 0.002, 0.01, 0.05])
async def test_a_message_sent_while_a_live_run_starts_is_seen(
    store: Any, wid: str, delay: float
) -> None:
    # Long poll interval: only the wake-up path (or the look after subscribing) can see it.
    handle = run_workflow(wid, waits_for_go, None, store.driver(wid), mode="live")
    async with anyio.create_task_group() as tg:
        tg.start_soon(handle.result)
        await anyio.sleep(delay)
        await handle.message("go", delay)
    with anyio.fail_after(10):
        result = await handle.result()
    assert (result.state, result.output) == (WorkflowState.COMPLETED, delay)


async def test_a_live_run_wakes_after_its_store_connections_were_killed(
    store_name: str, store: Any, wid: str
) -> None:
    if store_name not in ("redis", "postgres"):
        pytest.skip("only networked stores have connections to kill")
    async with run_workflow(wid, waits_for_go, None, store.driver(wid), mode="live") as live:
        await anyio.sleep(0.3)  # subscribed and waiting
        await _kill_connections(store_name, store)
        await anyio.sleep(0.3)
        sender = run_workflow(wid, waits_for_go, None, store.driver(wid))
        await sender.message("go", "after the kill")
        with anyio.fail_after(15):
            result = await live.result()
    assert (result.state, result.output) == (WorkflowState.COMPLETED, "after the kill")


async def _kill_connections(store_name: str, store: Any) -> None:
    if store_name == "redis":
        import redis.asyncio as aioredis

        from tests.support.services import REDIS_URL

        admin = aioredis.Redis.from_url(REDIS_URL)
        try:
            # The store's one pub/sub connection, found by its address (other tests may
            # share the server), killed by the server.
            host, port = store._pubsub._connection._writer.get_extra_info("sockname")[:2]
            killed = await admin.execute_command("CLIENT", "KILL", "ADDR", f"{host}:{port}")
            assert killed, "the store's pub/sub connection was not found"
        finally:
            await admin.aclose()
        return
    import asyncpg

    from tests.support.services import DATABASE_URL

    admin = await asyncpg.connect(DATABASE_URL)
    try:
        pids = [h._con.get_server_pid() for h in store._pool._holders if h._con]
        pids.append(store._listener.connection.get_server_pid())
        await admin.execute("SELECT pg_terminate_backend(p) FROM unnest($1::int[]) p", pids)
    finally:
        await admin.close()
