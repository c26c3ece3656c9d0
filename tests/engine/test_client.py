"""Client: reach a workflow by id, wait for its result, list and describe, cancel wins."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import anyio
import pytest

from engine import (
    Client,
    CriticalError,
    Worker,
    WorkflowContext,
    WorkflowHandle,
    WorkflowState,
    run_workflow,
)
from tests.workers.helpers import running, wait_until

pytestmark = pytest.mark.anyio


def _worker(store: Any, workflows: dict[str, Any]) -> Worker:
    return Worker(
        store, workflows, handle_signals=False, poll_interval=0.05, lease=2.0, heartbeat=0.5
    )


def order_flow(calls: Counter[str]) -> Any:
    async def order(ctx: WorkflowContext, order_id: str) -> dict[str, Any]:
        def charge() -> int:
            calls["charge"] += 1
            return 4200

        cents = await ctx.step("charge", charge)
        [tracking] = await ctx.queue.next("wait-shipping", names=["shipped"])
        return {"order": order_id, "cents": cents, "tracking": tracking}

    return order


async def test_a_client_handle_waits_for_a_worker_and_runs_nothing(store: Any, wid: str) -> None:
    calls: Counter[str] = Counter()
    client = Client(store)
    started = await client.start("order", wid, "o-1")
    assert started.created and started.name == "order"
    handle = client.handle(wid)
    assert isinstance(handle, WorkflowHandle)
    with pytest.raises(TimeoutError):
        await handle.result(timeout=0.2)  # nothing runs it yet
    assert calls["charge"] == 0
    async with running(_worker(store, {"order": order_flow(calls)})):
        await wait_until(lambda: _in_state(client, wid, "sleeping"), what="sleeping")
        await handle.message("shipped", "TRACK-1")
        result = await handle.result(timeout=10)
    assert result.state == WorkflowState.COMPLETED
    assert result.output == {"order": "o-1", "cents": 4200, "tracking": "TRACK-1"}
    assert calls["charge"] == 1
    with pytest.raises(TypeError, match="never runs"):
        async with handle:
            pass


async def test_a_client_handle_raises_a_failure_as_a_later_run_would(store: Any, wid: str) -> None:
    async def declines(ctx: WorkflowContext, _: Any) -> None:
        def decline() -> None:
            raise CriticalError("card declined")

        await ctx.step("charge", decline)

    client = Client(store)
    await client.start("declines", wid, None)
    async with running(_worker(store, {"declines": declines})):
        with pytest.raises(CriticalError, match="card declined"):
            await client.handle(wid).result(timeout=10)
    error = await client.handle(wid).get_error()
    assert error is not None and error.type == "CriticalError"


async def test_list_and_describe(store: Any, wid: str) -> None:
    calls: Counter[str] = Counter()
    client = Client(store)
    await client.start("order", wid, "o-7")
    await client.start("other", f"{wid}-b", None)
    listed = {info.workflow_id: info for info in await client.list(limit=10_000)}
    assert listed[wid].name == "order" and listed[wid].state == WorkflowState.PENDING
    assert listed[wid].wake_at is not None and listed[wid].wake_at <= time.time()
    assert [i.workflow_id for i in await client.list(name="other", limit=10_000)] == [f"{wid}-b"]

    await run_workflow(wid, order_flow(calls), "ignored", store.driver(wid)).result()
    [info] = [i for i in await client.list(state="sleeping", limit=10_000) if i.workflow_id == wid]
    assert info.name == "order" and info.wake_at is None
    newest = await client.list(limit=1)
    assert newest[0].workflow_id == wid  # most recently updated first

    described = await client.describe(wid)
    assert (described.state, described.input, described.output) == ("sleeping", "o-7", None)
    assert described.waiting_for_messages == ["shipped"]
    assert [(h.path, h.kind, h.status) for h in described.history] == [
        ("charge", "step", "completed"),
        ("wait-shipping", "message", "waiting"),
    ]
    assert described.history[0].output == 4200 and described.history[0].attempts == 1
    with pytest.raises(KeyError):
        await client.describe(f"{wid}-never")
    with pytest.raises(ValueError):
        await client.list(state="exploded")


async def test_list_shows_running_while_a_run_holds_the_workflow(store: Any, wid: str) -> None:
    client = Client(store)
    entered, gate = anyio.Event(), anyio.Event()

    async def slow(ctx: WorkflowContext, _: Any) -> int:
        async def held() -> int:
            entered.set()
            await gate.wait()
            return 1

        return await ctx.step("held", held)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_workflow(wid, slow, None, store.driver(wid)).result)
        await entered.wait()
        running_ids = [i.workflow_id for i in await client.list(state="running", limit=10_000)]
        assert wid in running_ids
        gate.set()
    assert (await client.describe(wid)).state == WorkflowState.COMPLETED


async def test_cancel_wins_over_a_run_in_progress(store: Any, wid: str) -> None:
    calls: Counter[str] = Counter()
    entered, gate = anyio.Event(), anyio.Event()

    async def work(ctx: WorkflowContext, _: Any) -> str:
        async def held() -> int:
            entered.set()
            await gate.wait()
            return 1

        await ctx.step("held", held)
        calls["after"] += 1
        await ctx.step("next", lambda: 2)
        return "finished"

    client = Client(store)
    await client.start("work", wid, None)
    worker = _worker(store, {"work": work})
    async with running(worker):
        await entered.wait()
        await client.handle(wid).cancel()
        gate.set()
        result = await client.handle(wid).result(timeout=10)
        assert result.state == WorkflowState.CANCELLED
        await anyio.sleep(0.3)  # whatever the worker's run does now, it cannot undo it
    assert calls["after"] <= 1
    assert (await client.describe(wid)).state == WorkflowState.CANCELLED
    assert await client.handle(wid).get_state() == WorkflowState.CANCELLED
    assert not [w for w, _ in await store.due_alarms(now=time.time() + 3600) if w == wid]


async def test_cancel_wins_over_a_live_run(store: Any, wid: str) -> None:
    async def waits(ctx: WorkflowContext, _: Any) -> str:
        [go] = await ctx.queue.next("go")
        return str(go)

    client = Client(store)
    async with run_workflow(wid, waits, None, store.driver(wid), mode="live") as live:
        await anyio.sleep(0.1)
        await client.handle(wid).cancel()
        with anyio.fail_after(10):
            result = await live.result()
    assert result.state == WorkflowState.CANCELLED
    assert await client.handle(wid).get_state() == WorkflowState.CANCELLED
    # A later run returns cancelled without running anything.
    again = await run_workflow(wid, waits, None, store.driver(wid)).result()
    assert again.state == WorkflowState.CANCELLED


async def test_cancel_of_an_idle_and_a_sleeping_workflow(store: Any, wid: str) -> None:
    calls: Counter[str] = Counter()
    client = Client(store)
    await client.start("order", wid, "o-1")
    await client.handle(wid).cancel()
    assert (await run_workflow(wid, order_flow(calls), "x", store.driver(wid)).result()).state == (
        WorkflowState.CANCELLED
    )
    other = f"{wid}-sleeping"
    await run_workflow(other, order_flow(calls), "o-2", store.driver(other)).result()
    await client.handle(other).cancel()
    assert (await client.handle(other).result(timeout=5)).state == WorkflowState.CANCELLED
    assert calls["charge"] == 1


async def _in_state(client: Client, wid: str, state: str) -> bool:
    return (await client.describe(wid)).state == state
